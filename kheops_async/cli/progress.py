"""Download progress on stderr: a live display on a terminal, plain lines otherwise.

A background task polls the engine's :class:`~kheops_async.report.DownloadProgress`
(plain attributes, cheap to read) and takes a :class:`~kheops_async.cli.snapshot.Snapshot`
of it. On a terminal, :mod:`~kheops_async.cli.live_view` (rich, imported only then)
draws it in place :data:`REFRESH_SECONDS` apart, and log records are printed above it
through the log handler. Elsewhere (a pipe, CI, a log file) a plain ``progress:``
line is written every ``interval`` seconds, and at ``-v`` also whenever a series
finishes: no escape codes, no carriage returns.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

import anyio

from kheops_async.cli.logging_setup import CliLogHandler
from kheops_async.cli.snapshot import RateMeter, Snapshot, describe
from kheops_async.defaults import DEFAULT_LOG_INTERVAL
from kheops_async.report import DownloadProgress

if TYPE_CHECKING:
    from kheops_async.cli.live_view import LiveScreen

__all__ = ["DEFAULT_LOG_INTERVAL", "REFRESH_SECONDS", "ProgressDisplay"]

REFRESH_SECONDS = 0.25


class ProgressDisplay:
    """Shows a :class:`DownloadProgress` on ``stream`` while :meth:`run` runs.

    ``live``: a display redrawn in place (a terminal; ``width`` fixes its width instead
    of the terminal's); otherwise a line every ``interval`` seconds and, with
    ``per_series``, one per finished series (the engine calls :meth:`on_change`,
    installed as the progress callback). ``enabled=False`` (``--quiet``) shows nothing.
    ``concurrency`` bounds the series shown (and estimated) as in flight.
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
        concurrency: int | None = None,
        width: int | None = None,
    ) -> None:
        self.progress = progress
        self.stream = stream
        self.live = live
        self.enabled = enabled
        self.interval = interval
        self.per_series = per_series
        self.handler = handler
        self.concurrency = concurrency
        self.width = width
        self._meter = RateMeter()
        self._screen: LiveScreen | None = None
        self._last_line = time.monotonic()
        self._last_series_done = 0
        progress.callback = self.on_change

    def snapshot(self) -> Snapshot:
        """What the display shows now."""
        rate = self._meter.rate(self.progress.bytes_done, self.progress.bytes_per_second)
        return Snapshot.of(self.progress, rate, self.concurrency)

    def _write_line(self) -> None:
        self._last_line = time.monotonic()
        self._last_series_done = self.progress.series_done
        self.stream.write(f"progress: {describe(self.snapshot())}\n")
        self.stream.flush()

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
        if self.live:
            await self._run_live()
            return
        while True:
            if time.monotonic() - self._last_line >= self.interval:
                self._write_line()
            await anyio.sleep(REFRESH_SECONDS)

    async def _run_live(self) -> None:
        from kheops_async.cli.live_view import LiveScreen

        self._screen = LiveScreen(self.stream, width=self.width)
        self._screen.start(self.snapshot())
        if self.handler is not None:
            self.handler.live = self._screen
        try:
            while True:
                await anyio.sleep(REFRESH_SECONDS)
                self._screen.update(self.snapshot())
        finally:
            self.finish()

    def finish(self) -> None:
        """Remove the live display, if any (the summary follows on a clean line)."""
        if self.handler is not None:
            self.handler.live = None
        if self._screen is not None:
            self._screen.stop()
            self._screen = None
