"""The run-level breaker: stop a run the server cannot serve, instead of retrying forever.

Each series retries on its own; during an outage that multiplies (every series, every
instance, every attempt). The breaker counts failed attempts (retrieves and listings
that failed with a retryable error) across the whole run, and any progress (a part
committed, a listing answered) resets the count. When the count reaches the
threshold, :meth:`OutageBreaker.failed` raises
:class:`~kheops_async.errors.ServerUnavailableError`, which ends the run (CLI exit
status 4) with what was done kept in the table and the journal.
"""

from __future__ import annotations

from kheops_async.errors import ServerUnavailableError

__all__ = ["OutageBreaker"]


class OutageBreaker:
    """Counts failed attempts in a row across a run (``threshold`` 0: never trips)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures_in_a_row = 0
        self.last_error: BaseException | None = None

    def succeeded(self) -> None:
        """Progress somewhere: the server is serving."""
        self.failures_in_a_row = 0

    def failed(self, exc: BaseException) -> None:
        """A retryable failure; raises ServerUnavailableError at the threshold."""
        self.failures_in_a_row += 1
        self.last_error = exc
        if self.threshold and self.failures_in_a_row >= self.threshold:
            raise ServerUnavailableError(
                f"the server keeps failing: {self.failures_in_a_row} attempts in a row failed "
                f"with no progress anywhere (last: {exc}); stopping the run. Rerun later: "
                "what is done is kept"
            ) from None
