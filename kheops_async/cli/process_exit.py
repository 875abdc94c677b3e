"""The end of the console script's process: exit handlers and flushes, then no teardown.

When a command has finished, CPython would still tear down every module and object
the run loaded before the process ends. Measured here (``strace -tt`` of a download of
the 560-instance archive): 75 ms between the event loop's close and ``exit_group``;
importing the command's modules alone, then leaving, takes a median 50 ms longer with
the teardown than without (15 runs each). That is as long as a whole ``--version``.

Nothing is lost by skipping it: the run has closed its journal, files and connections
before the command returns; the exit handlers still run (logging's flush among them,
and whatever else registered one), then stdout and stderr are flushed. Only the console
script does this (:func:`kheops_async.cli.app.console_main`): ``main()`` called from
Python, the demo and the tests leave the interpreter alone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import NoReturn

__all__ = ["end_process", "exit_status"]


def exit_status(code: object) -> int:
    """The status ``SystemExit(code)`` gives: ``None`` 0, an int itself, else 1 (printed)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(OSError, ValueError):
        print(code, file=sys.stderr)
    return 1


def end_process(status: int) -> NoReturn:
    """Run the exit handlers, flush stdout and stderr, and end the process with ``status``."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()
    os._exit(status & 0xFF)
