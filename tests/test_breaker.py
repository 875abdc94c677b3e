"""The run-level breaker, with a clock the test moves."""

from __future__ import annotations

import pytest

from kheops_async import ServerUnavailableError
from kheops_async.engine.breaker import STALL_FAILURES, STALL_SECONDS, OutageBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_it_trips_at_the_threshold_and_progress_resets_it() -> None:
    breaker = OutageBreaker(5, clock=Clock())
    for _ in range(4):
        breaker.failed(OSError("reset"))
    breaker.succeeded()
    for _ in range(4):
        breaker.failed(OSError("reset"))
    with pytest.raises(ServerUnavailableError, match="5 attempts in a row"):
        breaker.failed(OSError("reset"))


def test_a_hanging_server_trips_it_on_time_with_fewer_failures() -> None:
    """Attempts that each wait for the read timeout: few failures, a long stall."""
    clock = Clock()
    breaker = OutageBreaker(24, clock=clock)
    clock.now += STALL_SECONDS - 1
    for _ in range(STALL_FAILURES):
        breaker.failed(TimeoutError("read timeout"))  # not yet: 119 s
    clock.now += 2
    with pytest.raises(ServerUnavailableError, match="for 121s"):
        breaker.failed(TimeoutError("read timeout"))


def test_a_slow_but_working_server_never_trips_it() -> None:
    clock = Clock()
    breaker = OutageBreaker(24, clock=clock)
    for _ in range(50):
        clock.now += STALL_SECONDS  # minutes per instance, yet every one arrives
        for _ in range(STALL_FAILURES - 1):
            breaker.failed(TimeoutError("read timeout"))
        breaker.succeeded()


def test_threshold_zero_never_trips() -> None:
    clock = Clock()
    breaker = OutageBreaker(0, clock=clock)
    clock.now += 10 * STALL_SECONDS
    for _ in range(1000):
        breaker.failed(OSError("reset"))
