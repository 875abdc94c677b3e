"""Retry policy: what is retried, backoff with jitter and a cap, Retry-After honoured."""

from __future__ import annotations

import pytest

from kheops_async.errors import (
    AuthenticationError,
    HTTPStatusError,
    NotFoundError,
    TransportError,
    TruncatedBodyError,
)
from kheops_async.retry import RetryPolicy, is_retryable, retry_call

pytestmark = pytest.mark.anyio


def status(code: int, retry_after: float | None = None) -> HTTPStatusError:
    return HTTPStatusError(f"HTTP {code}", status_code=code, url="u", retry_after=retry_after)


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(code: int) -> None:
    assert is_retryable(status(code))


def test_other_errors() -> None:
    assert is_retryable(TransportError("reset"))
    assert is_retryable(TruncatedBodyError("cut"))
    assert not is_retryable(status(400))
    assert not is_retryable(NotFoundError("x", status_code=404, url="u"))
    assert not is_retryable(AuthenticationError("x", status_code=401, url="u"))
    assert not is_retryable(ValueError())


def test_backoff_is_jittered_capped_and_respects_retry_after() -> None:
    policy = RetryPolicy(attempts=10, initial_wait=1.0, max_wait=8.0, max_retry_after=60)
    waits = [policy.wait_seconds(n, None) for n in range(1, 10) for _ in range(50)]
    assert all(0 <= w <= 8.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 100  # jitter: not a fixed schedule
    assert policy.wait_seconds(1, status(503, retry_after=5)) >= 5
    assert policy.wait_seconds(1, status(503, retry_after=1e6)) == 60


async def test_retry_call_retries_then_succeeds_and_stops_on_non_retryable() -> None:
    calls: list[int] = []
    fast = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise status(503)
        return "ok"

    assert await retry_call(fast, flaky, describe="t") == "ok"
    assert len(calls) == 3

    async def forbidden() -> None:
        calls.append(1)
        raise status(403)

    calls.clear()
    with pytest.raises(HTTPStatusError):
        await retry_call(fast, forbidden, describe="t")
    assert len(calls) == 1

    async def always_down() -> None:
        calls.append(1)
        raise TransportError("down")

    calls.clear()
    with pytest.raises(TransportError):
        await retry_call(fast, always_down, describe="t")
    assert len(calls) == 3
