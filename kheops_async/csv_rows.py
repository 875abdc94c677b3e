"""CSV rows as the package's tables write them: one ``\\n`` per row, odd values quoted.

A value holding a comma, a double quote or a line break (``\\n`` or ``\\r``) is quoted,
its quotes doubled, as the :mod:`csv` module's default dialect does; the others are
written as they are. Two reasons not to hand every row to ``csv.writer(...,
lineterminator="\\n")``:

- that writer quotes a value for the characters of its own line terminator only, so
  a bare ``\\r`` (a hostile PatientID, a server's message) went out unquoted, and a
  CSV reader, which ends a row at either, read the row as two;
- it looks at each character of each value in turn, in C but one call per
  character: 46 M instructions for the 560 rows of the benchmark's archive, most of
  the instance table's cost. A row with no odd value (UIDs, dates, sizes, most paths)
  is checked here by two scans of its joined line instead.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence

__all__ = ["csv_line"]

_NEEDS_QUOTES = re.compile('["\r\n]')
"""What makes a value quoted, besides a comma (counted apart, on the joined line)."""


def csv_line(values: Sequence[str]) -> str:
    """``values`` as one CSV row, ended by ``\\n`` (a lone empty value is written ``""``,
    as the csv module does, so that the row is not read back as no row)."""
    line = ",".join(values)
    if line and line.count(",") == len(values) - 1 and _NEEDS_QUOTES.search(line) is None:
        return line + "\n"
    quoted = io.StringIO()
    csv.writer(quoted, lineterminator="\r\n").writerow(values)  # quotes \r and \n alike
    return quoted.getvalue()[:-2] + "\n"
