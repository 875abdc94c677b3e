"""The live download display on a terminal, drawn with rich (imported only for it).

:class:`DownloadView` draws a :class:`~kheops_async.cli.snapshot.Snapshot` at the
width it is given, so a resize takes effect at the next refresh and no line is ever
wider than the terminal (a wrapped line would garble the redraw)::

    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━━━━  73%  408/560 instances  18/19 series
    28.8 MB  11.5 MB/s  ETA 0:09  elapsed 0:02
      1.2.826.0.1.3680043.8.498.10…02.1  120 instances  45.3 MB

:class:`LiveScreen` keeps it in place with :class:`rich.live.Live` (refreshed by the
caller on the event loop, no refresh thread) and prints log lines above it.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kheops_async.cli.humanize import duration, megabytes, or_unknown, printable, shorten_middle
from kheops_async.cli.snapshot import SeriesLine, Snapshot

__all__ = ["DownloadView", "LiveScreen"]

MIN_BAR_WIDTH = 10
"""Narrower than this, the bar is left out and the counts keep the line."""
MIN_UID_WIDTH = 12
INDENT = "  "


class DownloadView:
    """The display of one snapshot: the bar line, the numbers line, a line per series in flight."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        yield self._bar_line(width)
        yield _line(self._numbers(), width)
        for series in self.snapshot.in_flight:
            yield _line(_series_text(series, width), width)

    def _bar_line(self, width: int) -> Table | Text:
        shot = self.snapshot
        counts = Text.assemble(
            (f"{shot.percent:>4}", "progress.percentage"),
            f"  {shot.instances_done}/{or_unknown(shot.instances_expected)} instances",
            f"  {shot.series_done}/{or_unknown(shot.series_total)} series",
        )
        bar_width = width - counts.cell_len - 1
        if bar_width < MIN_BAR_WIDTH:
            return _line(counts, width)
        fraction = shot.fraction
        bar = ProgressBar(
            total=None if fraction is None else 1.0,
            completed=fraction or 0.0,
            width=bar_width,
        )
        grid = Table.grid(padding=(0, 1, 0, 0))
        grid.add_column(width=bar_width, no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_row(bar, counts)
        return grid

    def _numbers(self) -> Text:
        shot = self.snapshot
        text = Text.assemble(
            megabytes(shot.bytes_done),
            "  ",
            (f"{shot.rate / 1e6:.1f} MB/s", "progress.data.speed"),
            "  ETA ",
            (duration(shot.eta), "progress.remaining"),
            "  elapsed ",
            (duration(shot.elapsed), "progress.elapsed"),
        )
        if shot.failures:
            text.append(f"  {shot.failures} failed", style="red")
        return text


def _series_text(series: SeriesLine, width: int) -> Text:
    """``  1.2.826.…02.1  120/200 instances  45.3 MB``, the UID shortened to fit ``width``."""
    of = f"/{series.expected}" if series.expected else ""
    numbers = f"  {series.done}{of} instances  {megabytes(series.bytes_written)}"
    room = max(MIN_UID_WIDTH, width - len(INDENT) - len(numbers))
    uid = shorten_middle(printable(series.series_uid), room)
    return Text.assemble(INDENT, (uid, "cyan"), numbers)


def _line(text: Text, width: int) -> Text:
    """``text`` on one line of at most ``width`` cells (cut with an ellipsis)."""
    text.no_wrap = True
    text.overflow = "ellipsis"
    text.truncate(width, overflow="ellipsis")
    return text


class LiveScreen:
    """The live display on ``stream`` (a terminal), redrawn by :meth:`update`.

    Log lines go through :meth:`print_above` (the log handler calls it), and whatever
    else writes to ``sys.stderr`` while the display is up is printed above it too.
    The display is removed by :meth:`stop`. ``width`` fixes the width (tests).
    """

    def __init__(self, stream: TextIO, *, width: int | None = None) -> None:
        self.console = Console(
            file=stream,
            width=width,
            force_terminal=True,
            markup=False,
            emoji=False,
            highlight=False,
        )
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=True,
        )

    def start(self, snapshot: Snapshot) -> None:
        """Show the display."""
        self._live.update(DownloadView(snapshot))
        self._live.start(refresh=True)

    def update(self, snapshot: Snapshot) -> None:
        """Redraw with ``snapshot``."""
        self._live.update(DownloadView(snapshot), refresh=True)

    def print_above(self, line: str) -> None:
        """Print ``line`` (text, never markup) above the display."""
        self.console.print(Text(printable(line, keep_newlines=True)))

    def stop(self) -> None:
        """Remove the display (idempotent)."""
        self._live.stop()
