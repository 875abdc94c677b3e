"""Download progress on stderr: a live line on a terminal, plain lines otherwise.

A background task polls the engine's :class:`~kheops_async.report.DownloadProgress`
(its counters are plain attributes, cheap to read). On a terminal the status line is
redrawn in place :data:`REFRESH_SECONDS` apart: series done of total, instances,
bytes, rate and ETA. Elsewhere (a log file, CI) a plain ``progress:`` line is written
every ``interval`` seconds, and at ``-v`` also whenever a series finishes.

The display registers itself on the log handler, which erases the live line before a
log record and redraws it after, so records never end up glued to the status line.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from typing import TextIO

import anyio

from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.report import DownloadProgress

__all__ = ["DEFAULT_LOG_INTERVAL", "REFRESH_SECONDS", "ProgressDisplay", "describe"]

REFRESH_SECONDS = 0.25
DEFAULT_LOG_INTERVAL = 5.0
RATE_WINDOW_SECONDS = 3.0
_ERASE_LINE = "\r\x1b[K"


def _megabytes(count: float) -> str:
    return f"{count / 1e6:.1f} MB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(progress: DownloadProgress, rate: float | None = None) -> str:
    """One line of counters: ``3/12 series, 45/120 instances, 1.2 MB, 4.5 MB/s, ETA 0:12``."""
    series_total = str(progress.series_total) if progress.planning_done else "?"
    instances_total = (
        str(progress.instances_expected)
        if progress.planning_done and progress.instances_expected
        else "?"
    )
    speed = progress.bytes_per_second if rate is None else rate
    text = (
        f"{progress.series_done}/{series_total} series, "
        f"{progress.instances_done}/{instances_total} instances, "
        f"{_megabytes(progress.bytes_done)}, {speed / 1e6:.1f} MB/s, "
        f"ETA {_duration(progress.eta_seconds)}"
    )
    if progress.failures:
        text += f", {progress.failures} failed"
    return text


class ProgressDisplay:
    """Shows a :class:`DownloadProgress` on ``stream`` until :meth:`finish`.

    ``live``: redraw one line in place (a terminal); otherwise print a line every
    ``interval`` seconds and, with ``per_series``, one per finished series (the
    engine calls :meth:`on_change`, installed as the progress callback).
    ``enabled=False`` (``--quiet``) shows nothing.
    """

    def __init__(
        self,
        progress: DownloadProgress,
        stream: TextIO,
        *,
        live: bool,
        enabled: bool = True,
        interval: float = DEFAULT_LOG_INTERVAL,
        per_series: bool = False,
        handler: CliLogHandler | None = None,
    ) -> None:
        self.progress = progress
        self.stream = stream
        self.live = live
        self.enabled = enabled
        self.interval = interval
        self.per_series = per_series
        self.handler = handler
        self._shown = False
        self._samples: deque[tuple[float, int]] = deque()
        self._last_line = time.monotonic()
        self._last_series_done = 0
        progress.callback = self.on_change

    # -- LiveLine protocol (used by the log handler) --------------------------------

    def clear(self) -> None:
        """Erase the live line (before a log record is written)."""
        if self._shown:
            self.stream.write(_ERASE_LINE)
            self.stream.flush()
            self._shown = False

    def redraw(self) -> None:
        """Draw the live line with the current counters."""
        width = max(20, shutil.get_terminal_size().columns - 1)
        text = describe(self.progress, self._rate())[:width]
        self.stream.write(_ERASE_LINE + text)
        self.stream.flush()
        self._shown = True

    # -- the polling task ----------------------------------------------------------

    def _rate(self) -> float:
        """Bytes per second over the last few seconds (the average at the start)."""
        now = time.monotonic()
        self._samples.append((now, self.progress.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        first_time, first_bytes = self._samples[0]
        if now - first_time < 0.5:
            return self.progress.bytes_per_second
        return (self.progress.bytes_done - first_bytes) / (now - first_time)

    def _write_line(self) -> None:
        self._last_line = time.monotonic()
        self._last_series_done = self.progress.series_done
        self.stream.write(f"progress: {describe(self.progress, self._rate())}\n")
        self.stream.flush()

    def _tick(self) -> None:
        if self.live:
            self.redraw()
        elif time.monotonic() - self._last_line >= self.interval:
            self._write_line()

    def on_change(self, progress: DownloadProgress) -> None:
        """The engine's progress callback: with ``per_series``, a line per finished series."""
        if (
            self.enabled
            and not self.live
            and self.per_series
            and progress.series_done != self._last_series_done
        ):
            self._write_line()

    async def run(self) -> None:
        """Refresh until cancelled (run it in the download's task group)."""
        if not self.enabled:
            return
        if self.live and self.handler is not None:
            self.handler.live = self
        try:
            while True:
                self._tick()
                await anyio.sleep(REFRESH_SECONDS)
        finally:
            if self.handler is not None:
                self.handler.live = None

    def finish(self) -> None:
        """Remove the live line (the summary follows on a clean line)."""
        if self.handler is not None:
            self.handler.live = None
        self.clear()
