"""How quantities and names are written for people: sizes, durations, long UIDs, server text.

Shared by the progress display, the terminal tables and the summary, so that a
megabyte or a shortened UID reads the same everywhere. Text from the server is shown
as data: :func:`printable` replaces the control characters that would move the
cursor or restyle the terminal (an ESC in a SeriesDescription).
"""

from __future__ import annotations

import re

__all__ = ["ELLIPSIS", "duration", "megabytes", "or_unknown", "printable", "shorten_middle"]

ELLIPSIS = "…"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def megabytes(count: float) -> str:
    """``1234567`` -> ``1.2 MB`` (10**6 bytes, as the summary)."""
    return f"{count / 1e6:.1f} MB"


def duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; ``None`` (unknown) -> ``--``."""
    if seconds is None:
        return "--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def or_unknown(count: int | None) -> str:
    """A count, or ``?`` while it is not known."""
    return "?" if count is None else str(count)


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle: UIDs differ at both ends.

    ``1.2.826.0.1.3680043.8.498.1234`` at 16 -> ``1.2.826.…98.1234``.
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters (ESC, CR, ...) replaced by ``?``, tabs by spaces."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub("?", text.replace("\t", " "))
