"""Retry policy: what is retried, backoff with jitter and a cap, Retry-After honoured."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

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


async def test_the_first_failure_is_attempt_one_of_tenacity_s_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first attempt, made before tenacity: its wait and log line are attempt 1's."""
    calls: list[float] = []
    policy = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002, max_retry_after=0.05)

    async def busy_then_ok() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise status(429, retry_after=0.05)
        if len(calls) == 2:
            raise TransportError("reset")
        return "ok"

    with caplog.at_level(logging.INFO, logger="kheops_async"):
        assert await retry_call(policy, busy_then_ok, describe="the query") == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.05  # the first failure's Retry-After was honoured
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
    assert len(lines) == 2
    assert "attempt 1 of 3 failed: HTTP 429" in lines[0]
    assert "attempt 2 of 3 failed: reset" in lines[1]


def test_tenacity_is_imported_at_the_first_failure_only() -> None:
    code = """
import sys, anyio
from kheops_async.errors import TransportError
from kheops_async.retry import RetryPolicy, retry_call
policy = RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.001)
async def ok():
    return 1
failures = []
async def flaky():
    if not failures:
        failures.append(1)
        raise TransportError("reset")
    return 2
assert anyio.run(lambda: retry_call(policy, ok, describe="x")) == 1
print("after a success:", "tenacity" in sys.modules)
assert anyio.run(lambda: retry_call(policy, flaky, describe="x")) == 2
print("after a failure:", "tenacity" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["after a success: False", "after a failure: True"]
