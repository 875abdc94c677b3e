"""When and how long to retry: one policy, applied with tenacity.

Retried: connection failures (connect, read, reset, timeout), truncated multipart
bodies, a ``200`` retrieve whose body is not multipart (a proxy's maintenance
page), and the statuses 408, 429, 500, 502, 503 and 504. Not retried: other 4xx
answers (a bad token or a bad UID does not get better by asking again).

The wait is exponential backoff with full jitter, capped; a ``Retry-After`` sent
by the server is honoured (itself capped) and never undercut by the backoff.

tenacity is imported, and its retrying object made, at an operation's first failure:
:func:`retry_call` makes the first attempt itself, and hands a retryable failure to
tenacity as the outcome of attempt 1 (tenacity then logs it, waits and makes the
others). Most calls succeed at once, and importing tenacity cost every command 33 M
instructions (about 7 ms here) before its first request.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from kheops_async.defaults import DEFAULT_ATTEMPTS
from kheops_async.errors import (
    HTTPStatusError,
    NotMultipartError,
    ServerUnavailableError,
    TransportError,
    TruncatedBodyError,
)
from kheops_async.records import FrozenPublicRecord

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["RETRYABLE_STATUS_CODES", "RetryPolicy", "is_retryable", "retry_call"]

log = logging.getLogger("kheops_async")

RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed after ``exc``."""
    if isinstance(exc, ServerUnavailableError):
        return False  # the run's breaker tripped: nothing more to try
    if isinstance(exc, TransportError | TruncatedBodyError | NotMultipartError):
        return True
    return isinstance(exc, HTTPStatusError) and exc.status_code in RETRYABLE_STATUS_CODES


@dataclass(frozen=True, init=False, repr=False, eq=False)
class RetryPolicy(FrozenPublicRecord):
    """How many attempts, and the backoff between them (seconds).

    ``attempts`` counts the first try: 1 means no retry. The n-th wait is a random
    value in ``[0, min(max_wait, initial_wait * 2**n)]`` (full jitter), raised to the
    server's ``Retry-After`` when it sent one (at most ``max_retry_after``).
    """

    attempts: int = DEFAULT_ATTEMPTS
    initial_wait: float = 0.5
    max_wait: float = 30.0
    max_retry_after: float = 120.0

    def __init__(
        self,
        attempts: int = DEFAULT_ATTEMPTS,
        initial_wait: float = 0.5,
        max_wait: float = 30.0,
        max_retry_after: float = 120.0,
    ) -> None:
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "initial_wait", initial_wait)
        object.__setattr__(self, "max_wait", max_wait)
        object.__setattr__(self, "max_retry_after", max_retry_after)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")

    def wait_seconds(self, attempt_number: int, exc: BaseException | None) -> float:
        """Seconds to wait after failed attempt number ``attempt_number`` (1-based)."""
        ceiling = min(self.max_wait, self.initial_wait * (2 ** (attempt_number - 1)))
        wait = random.uniform(0, ceiling)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            wait = max(wait, min(float(retry_after), self.max_retry_after))
        return wait


NO_RETRY = RetryPolicy(attempts=1)


async def retry_call(
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[T]],
    *,
    describe: str,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """Run ``operation`` under ``policy``; re-raise its last error when attempts run out.

    ``describe`` names the operation in the log lines of retries (token-free text).
    Works under asyncio and trio (sleeps with anyio). The first attempt is made here;
    tenacity takes over at a retryable failure (module docstring).
    """
    try:
        return await operation()
    except Exception as exc:
        if policy.attempts < 2 or not retryable(exc):
            raise
        first_failure = exc
    return await _retry_after(first_failure, policy, operation, describe, retryable)


async def _retry_after(
    first_failure: Exception,
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[T]],
    describe: str,
    retryable: Callable[[BaseException], bool],
) -> T:
    """The attempts after the first, by tenacity, given the first one's failure."""
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return policy.wait_seconds(state.attempt_number, exc)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "retrying %s in %.1fs (attempt %d of %d failed: %s)",
            describe,
            delay,
            state.attempt_number,
            policy.attempts,
            exc,
        )

    retrying = AsyncRetrying(
        sleep=anyio.sleep,
        stop=stop_after_attempt(policy.attempts),
        wait=wait,
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    replay = [first_failure]

    async def run() -> T:  # tenacity awaits only what a coroutine function returns
        if replay:  # attempt 1, already made: its failure, for tenacity to count
            raise replay.pop()
        return await operation()

    result: T = await retrying(run)
    return result
