"""The run-level breaker: stop a run the server cannot serve, instead of retrying forever.

Each series retries on its own; during an outage that multiplies (every series, every
instance, every attempt). The breaker counts failed attempts (retrieves and listings
that failed with a retryable error) across the whole run; a part committed anywhere
resets the count (a listing answered does not: QIDO may work while WADO does not).
:meth:`OutageBreaker.failed` raises :class:`~kheops_async.errors.ServerUnavailableError`,
which ends the run (CLI exit status 4) with what was done kept in the table and the
journal, when either:

- the count reaches the threshold (``outage_threshold``, default 24); or
- the count reaches :data:`STALL_FAILURES` and nothing was committed for
  :data:`STALL_SECONDS`: a server that hangs until the read timeout (120 s) fails few
  attempts per minute, and would otherwise keep the run for many minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kheops_async.errors import ServerUnavailableError

__all__ = ["STALL_FAILURES", "STALL_SECONDS", "OutageBreaker"]

STALL_SECONDS = 120.0
"""No part committed for this long, with :data:`STALL_FAILURES` failures in a row: stop."""
STALL_FAILURES = 8
"""Failed attempts in a row that, with :data:`STALL_SECONDS` without progress, stop a run."""


class OutageBreaker:
    """Counts failed attempts in a row across a run (``threshold`` 0: never trips)."""

    def __init__(self, threshold: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.failures_in_a_row = 0
        self._clock = clock
        self._last_progress = clock()

    def succeeded(self) -> None:
        """Progress somewhere: the server is serving."""
        self.failures_in_a_row = 0
        self._last_progress = self._clock()

    def failed(self, exc: BaseException) -> None:
        """A retryable failure; raises ServerUnavailableError when the run should stop."""
        self.failures_in_a_row += 1
        if not self.threshold:
            return
        stalled = self._clock() - self._last_progress
        if self.failures_in_a_row >= self.threshold or (
            self.failures_in_a_row >= min(STALL_FAILURES, self.threshold)
            and stalled >= STALL_SECONDS
        ):
            raise ServerUnavailableError(
                f"the server keeps failing: {self.failures_in_a_row} attempts in a row failed "
                f"with no progress anywhere for {stalled:.0f}s (last: {exc}); stopping the "
                "run. Rerun later: what is done is kept"
            ) from None
