"""The console script ends without the interpreter's teardown, losing nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kheops_async import __version__
from kheops_async.cli.process_exit import exit_status

TIMEOUT = 60

_CONSOLE = """
import atexit, sys
class Teardown:
    def __del__(self):
        print("TEARDOWN", file=sys.stderr)
kept = Teardown()  # a module global: collected only by the interpreter's teardown
atexit.register(lambda: print("EXIT HANDLER", file=sys.stderr))
sys.argv = ["kheops-async", *sys.argv[1:]]
from kheops_async.cli import console_main
console_main()
"""


def _console(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KHEOPS_", "ACCESS_"))}
    return subprocess.run(
        [sys.executable, "-c", _CONSOLE, *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "status"),
    [(("--version",), 0), (("list", "studies", "--no-such-option"), 2)],
)
def test_the_status_stays_exit_handlers_run_and_the_teardown_is_skipped(
    args: tuple[str, ...], status: int
) -> None:
    result = _console(*args)
    assert result.returncode == status, result.stderr
    assert "EXIT HANDLER" in result.stderr
    assert "TEARDOWN" not in result.stderr
    if status == 0:
        assert result.stdout.strip().endswith(__version__)


def test_output_to_a_pipe_is_flushed_whole() -> None:
    """Buffered stdout reaches a pipe in full although the interpreter does not flush it."""
    result = _console("list", "studies", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().splitlines()[-1].strip()  # the help's last line arrived
    assert "--search-filter" in result.stdout


def test_exit_status_of_a_system_exit(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(None) == 0
    assert exit_status(3) == 3
    assert exit_status("stopped: reason") == 1
    assert capsys.readouterr().err == "stopped: reason\n"
