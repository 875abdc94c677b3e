"""Tables on stdout for people, drawn with rich (imported only when a table is drawn).

On a terminal a table is fitted to its width: the widest columns give way first,
UIDs are shortened in the middle (their two ends tell them apart), free text is cut
with an ellipsis, counts are right-aligned; ``--wide`` shows whole values. Off a
terminal (a pipe, a file) whole values in aligned columns, with no escape codes and
no trailing blanks, for grep and awk. Values from the server are data: never read
as markup, control characters replaced.
"""

from __future__ import annotations

import io
import sys
from typing import TextIO

import click
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table as RichTable
from rich.text import Text

from kheops_async.cli.echo import is_terminal
from kheops_async.cli.humanize import printable, shorten_middle
from kheops_async.cli.tables import Table, cell_text

__all__ = ["MiddleShortened", "fit_widths", "print_table", "table_view"]

_UNLIMITED = 1_000_000

SHRINK_STEPS = (("uid", 24), ("text", 8), ("uid", 12), ("short", 10))
"""When a table is wider than the terminal, which columns give way, in turn, and down to
what width: UIDs to 24 characters, free text to 8, UIDs to 12, then the other short
texts (dates, IDs) to 10. Counts never shrink."""
MIN_UID_WIDTH = 12
MAX_TEXT_WIDTH = 40
"""Longest free-text cell (descriptions) in a fitted table."""
GAP = 2
"""Blanks between two columns."""


class MiddleShortened:
    """A cell shown whole when it fits, else shortened in the middle to its column's width."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(cell_len(self.text), MIN_UID_WIDTH), cell_len(self.text))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(shorten_middle(self.text, options.max_width), no_wrap=True)


def table_view(table: Table, *, width: int | None, terminal: bool = True) -> RichTable:
    """``table``'s terminal view (its ``view`` columns) as a rich table.

    ``width``: fit the table in it (:func:`fit_widths`); ``None``: every value whole.
    ``terminal``: headings in bold and underlined, else plain.
    """
    view = table.view or tuple((c, c) for c in table.columns)
    cells = [[printable(cell_text(row.get(column))) for column, _ in view] for row in table.rows]
    kinds = [_kind(table, column) for column, _ in view]
    headings = [heading for _, heading in view]
    natural = [
        max([cell_len(heading), *(cell_len(row[i]) for row in cells)])
        for i, heading in enumerate(headings)
    ]
    widths = natural if width is None else fit_widths(natural, kinds, width)
    shown = RichTable(
        box=None,
        padding=(0, GAP // 2),
        pad_edge=False,
        show_edge=False,
        header_style="bold underline" if terminal else "",
    )
    for heading, kind, column_width in zip(headings, kinds, widths, strict=True):
        shown.add_column(
            heading,
            justify="right" if kind == "count" else "left",
            width=column_width,
            no_wrap=True,
            overflow="ellipsis",
        )
    for row in cells:
        shown.add_row(
            *(
                MiddleShortened(value) if kind == "uid" else Text(value, overflow="ellipsis")
                for value, kind in zip(row, kinds, strict=True)
            )
        )
    return shown


def fit_widths(natural: list[int], kinds: list[str], width: int) -> list[int]:
    """Column widths that fit ``width`` with the gaps, shrinking by :data:`SHRINK_STEPS`.

    Free text is first capped at :data:`MAX_TEXT_WIDTH`; then, step after step, the
    widest column of the step's kind loses a character until the table fits or every
    column of the kind is at the step's width. What still overflows is cut by rich.
    """
    widths = [
        min(w, MAX_TEXT_WIDTH) if kind == "text" else w
        for w, kind in zip(natural, kinds, strict=True)
    ]
    excess = sum(widths) + GAP * (len(widths) - 1) - width
    for kind, floor in SHRINK_STEPS:
        while excess > 0:
            candidates = [i for i, k in enumerate(kinds) if k == kind and widths[i] > floor]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
    return widths


def _kind(table: Table, column: str) -> str:
    """How a column behaves: ``uid``, ``count`` (right-aligned), ``text`` or ``short``."""
    if column.endswith("UID"):
        return "uid"
    if table.rows and all(isinstance(row.get(column), int | None) for row in table.rows):
        return "count"
    return "text" if "Description" in column else "short"


def print_table(
    table: Table, *, wide: bool = False, stream: TextIO | None = None, width: int | None = None
) -> None:
    """Draw ``table`` and its row count on ``stream`` (stdout): fitted on a terminal
    unless ``wide``, whole and plain elsewhere. ``width`` replaces the terminal's (tests)."""
    out = stream if stream is not None else sys.stdout
    terminal = is_terminal(out)
    if terminal:
        console = _console(out, _UNLIMITED if wide else width, terminal=True)
        console.print(table_view(table, width=None if wide else console.width))
        console.print(Text(f"{len(table)} {table.noun}"))
        return
    buffer = io.StringIO()
    console = _console(buffer, _UNLIMITED, terminal=False)
    console.print(table_view(table, width=None, terminal=False))
    lines = buffer.getvalue().splitlines()
    lines.append(f"{len(table)} {table.noun}")
    click.echo("".join(line.rstrip() + "\n" for line in lines), file=out, nl=False)


def _console(file: TextIO, width: int | None, *, terminal: bool) -> Console:
    return Console(
        file=file,
        width=width,
        force_terminal=terminal,
        color_system="auto" if terminal else None,
        markup=False,
        emoji=False,
        highlight=False,
    )
