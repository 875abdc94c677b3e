"""``python -m kheops_async`` as a real process: exit statuses, stderr, progress, signals.

CliRunner (tests/test_cli.py) covers the options; these runs prove what only a real
process shows: the console entry point, stderr that is not a terminal (and one that
is: a pseudo-terminal, resized while the live display runs), a token passed through
the environment, and Ctrl-C (SIGINT) ending with 130 and no partial files.
"""

from __future__ import annotations

import ast
import fcntl
import io
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, make_instance
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian
from treecheck import assert_no_temp_files

from kheops_async import __version__
from kheops_async.cli import ExitCode
from kheops_async.demo import OrthancDataset, generate_dataset

TOKEN = "subprocess-TOKEN-93b1c07e"
TIMEOUT = 60


def command(*args: str) -> list[str]:
    """``python -m kheops_async ARGS``."""
    return [sys.executable, "-m", "kheops_async", *args]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kheops_async ARGS`` with a clean environment (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KHEOPS_", "ACCESS_"))}
    return subprocess.run(
        command(*args),
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_version_and_program_name() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kheops-async, version {__version__}"
    usage = run_cli("list", "studies", "--url", "http://127.0.0.1:1", "--study-uid", "x.1")
    assert usage.returncode == ExitCode.USAGE
    assert "malformed StudyInstanceUID" in error_line(usage)
    assert "'kheops-async list studies --help'" in usage.stderr


def test_unreachable_server_exits_4_with_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("list", "series", "--url", f"http://127.0.0.1:{port}/api", "--retries", "0")
    assert result.returncode == ExitCode.SERVER
    assert f"127.0.0.1:{port}" in error_line(result)
    assert result.stdout == ""


def test_download_progress_lines_and_summary_without_a_terminal(
    orthanc_dataset: OrthancDataset, tmp_path: Path
) -> None:
    result = run_cli(
        "download",
        "studies",
        "--url",
        orthanc_dataset.server.dicomweb_url,
        "--out-dir",
        str(tmp_path),
        "-v",
        "--progress-interval",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("progress: ")]
    assert progress and all(" series, " in line and " MB/s, ETA " in line for line in progress)
    total = len(orthanc_dataset.instances)
    assert any(line.startswith("done: ") and f"{total} written" in line for line in lines)
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    assert len(list(tmp_path.rglob("*.dcm"))) == total


def test_token_from_the_environment_never_appears(tmp_path: Path) -> None:
    archive = FakeArchive()
    for n in range(2):
        archive.add_part10(make_instance("1.2.5.1", "1.2.5.1.1", f"1.2.5.1.1.{n}"))
    with FakeDicomWebServer(archive, token=TOKEN) as server:
        env = {"KHEOPS_TOKEN": TOKEN}
        listed = run_cli(
            "list", "series", "--url", server.base_url, "-o", str(tmp_path), "-vvv", env=env
        )
        link = run_cli(
            "download", "studies", "--url", server.link_url(), "-o", str(tmp_path), "-vvv"
        )
        wrong = run_cli(
            "list",
            "studies",
            "--url",
            server.base_url,
            "-vvv",
            env={"ACCESS_TOKEN": "wrong-" + TOKEN},
        )
        sent = {r.authorization for r in server.requests}
    assert listed.returncode == 0, listed.stderr
    assert link.returncode == 0, link.stderr
    assert wrong.returncode == ExitCode.AUTH
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: HTTP 401")
    for result in (listed, link, wrong):
        assert "httpx" in result.stderr  # -vvv really logged the HTTP traffic
        assert TOKEN not in result.stdout + result.stderr
    for table in tmp_path.glob("*.csv"):
        assert TOKEN not in table.read_text()
    assert f"Bearer {TOKEN}" in sent


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path: Path) -> None:
    archive = FakeArchive()
    archive.add_part10(make_instance("1.2.6.1", "1.2.6.1.1", "1.2.6.1.1.1", size=4096))
    with FakeDicomWebServer(archive) as server:
        server.add_fault("/studies/1.2.6.1/series/1.2.6.1.1", Delay(20.0), times=5)
        process = subprocess.Popen(
            command(
                "download", "series", "--url", server.base_url, "-o", f"{tmp_path}", "-x", "1.2.6.1"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while not server.requests_matching("/series/1.2.6.1.1"):
                assert time.monotonic() < deadline, "the download never started"
                assert process.poll() is None, process.communicate()
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr
    assert_no_temp_files(tmp_path)
    assert not list(tmp_path.rglob("*.dcm"))


@pytest.mark.parametrize("command", ["list", "download"])
def test_unwritable_output_directory_exits_2(tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli(
        command, "studies", "--url", "http://127.0.0.1:1/api", "-o", str(blocker / "sub")
    )
    assert result.returncode == ExitCode.USAGE
    assert "output directory" in error_line(result)


def test_demo_runs_the_commands_and_stops_orthanc(
    orthanc_installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """``make demo``: list, filter, download, again (all skipped), sync, verify, Orthanc
    stopped."""
    result = subprocess.run(
        [sys.executable, "-m", "kheops_async.demo", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shown = result.stderr
    for command in (
        "$ kheops-async list studies",
        "$ kheops-async list series",
        "--search-filter Modality CT",
        "$ kheops-async download studies",
        "$ kheops-async sync",
        "$ kheops-async verify",
    ):
        assert command in shown, command
    assert "0 written" in shown and "0 skipped" in shown
    assert "0 new, 0 changed," in shown  # the sync found nothing to do
    assert "verify: " in shown and ": no problem" in shown
    files = list((tmp_path / "out").rglob("*.dcm"))
    assert files and f"{len(files)} DICOM files" in shown
    match = re.search(r"Orthanc \(PID (\d+)\)", shown)
    assert match
    with pytest.raises(ProcessLookupError):
        os.kill(int(match.group(1)), 0)


_IMPORTS_AFTER = """
import atexit, sys
def _report():
    heavy = ("httpx", "httpcore", "anyio", "tenacity", "pydicom", "numpy", "sqlite3", "PIL")
    heavy += ("rich", "pygments", "trio")
    print("LOADED=" + ",".join(m for m in heavy if sys.modules.get(m)), file=sys.stderr)
atexit.register(_report)
sys.argv = ["kheops-async", *sys.argv[1:]]
from kheops_async.cli import console_main
console_main()
"""


def loaded_modules(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the console entry point with ``args``; the heavy modules it had loaded at exit."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KHEOPS_", "ACCESS_"))}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AFTER, *args],
        env={**clean, "KHEOPS_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("LOADED="))
    return result, {m for m in line.removeprefix("LOADED=").split(",") if m}


@pytest.mark.parametrize(
    "args",
    [("--version",), ("--help",), ("download", "studies", "--help"), ("list", "-h")],
)
def test_version_and_help_import_nothing_heavy(args: tuple[str, ...]) -> None:
    result, loaded = loaded_modules(*args)
    assert result.returncode == 0, result.stderr
    assert loaded == set()


_COMMANDS_BUILT = """
import sys
from kheops_async.cli.app import main
status = main(sys.argv[1:], standalone_mode=False)
def built(group):
    return {name: built(command) if hasattr(command, "commands") else None
            for name, command in sorted(group.commands.items())}
print("BUILT=" + repr(built(main)))
"""


def commands_built(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """Run ``main(args)`` in a fresh interpreter; the commands it had built, as a tree."""
    result = subprocess.run(
        [sys.executable, "-c", _COMMANDS_BUILT, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("BUILT="))
    return result, ast.literal_eval(line.removeprefix("BUILT="))


def test_a_command_builds_its_own_options_only() -> None:
    """The other commands' options (about 5 ms of start-up) are not made for one command."""
    result, built = commands_built("download", "studies", "--help")
    assert result.returncode == 0, result.stderr
    assert "--connections-ahead" in result.stdout  # its options are all there
    assert built == {"download": {"studies": None}, "list": {}}


def test_help_lists_every_command_and_a_typo_still_gets_a_suggestion() -> None:
    result, built = commands_built("--help")
    assert result.returncode == 0, result.stderr
    for name in ("download", "list", "sync", "verify"):
        assert re.search(rf"^  {name} ", result.stdout, re.MULTILINE), name
    assert set(built) == {"download", "list", "sync", "verify"}
    typo = subprocess.run(
        [sys.executable, "-m", "kheops_async", "synk"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert typo.returncode == ExitCode.USAGE
    assert "No such command 'synk'. Did you mean 'sync'?" in typo.stderr
    nested = subprocess.run(
        [sys.executable, "-m", "kheops_async", "download", "studes"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Did you mean 'studies'?" in nested.stderr


def test_a_download_of_ordinary_data_never_imports_pydicom(tmp_path: Path) -> None:
    """Explicit VR little endian, ASCII: the fast header scan suffices, then a rerun."""
    archive = FakeArchive()
    for n in (1, 2):
        archive.add_part10(make_instance("1.2.9.1", "1.2.9.1.1", f"1.2.9.1.1.{n}"))
    with FakeDicomWebServer(archive, token=TOKEN) as server:
        args = ("download", "studies", "--url", server.base_url, "--out-dir", str(tmp_path))
        result, loaded = loaded_modules(*args)
        assert result.returncode == 0, result.stderr
        assert len(list(tmp_path.rglob("*.dcm"))) == 2
        assert {"pydicom", "numpy", "PIL", "trio"}.isdisjoint(loaded)
        assert "tenacity" not in loaded  # nothing failed: imported at a first failure only
        assert "rich" not in loaded and "pygments" not in loaded  # no terminal: no display
        (next(tmp_path.rglob("*.dcm"))).write_bytes(b"\0" * 200)  # damaged: a rerun checks it
        rerun, loaded = loaded_modules(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert {"pydicom", "numpy", "PIL"}.isdisjoint(loaded)


def test_a_part_that_needs_pydicom_still_gets_it_without_numpy(tmp_path: Path) -> None:
    """Implicit VR little endian takes pydicom's reader; numpy and Pillow stay out."""
    (instance,) = generate_dataset(
        patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1
    )
    dataset = dcmread(io.BytesIO(instance.data))
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True)
    archive = FakeArchive()
    archive.add_part10(buffer.getvalue())
    with FakeDicomWebServer(archive, token=TOKEN) as server:
        result, loaded = loaded_modules(
            "download", "studies", "--url", server.base_url, "--out-dir", str(tmp_path)
        )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.rglob("*.dcm")] == [f"{instance.sop_uid}.dcm"]
    assert "pydicom" in loaded and "numpy" not in loaded and "PIL" not in loaded


# --------------------------------------------------------------------------- a terminal

_CURSOR_MOVE = re.compile(r"\x1b\[[0-9;]*[ABCDGHJK]|\r")  # a redraw starts a new line
_STYLE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _screen_lines(raw: bytes) -> list[str]:
    """The lines drawn on the terminal: cut where the cursor moves, styles removed."""
    text = _CURSOR_MOVE.sub("\n", raw.decode("utf-8", "replace"))
    return _STYLE.sub("", text).split("\n")


def _percentages(raw: bytes) -> list[int]:
    """The percentages of the bars drawn, in order."""
    text = "\n".join(_screen_lines(raw))
    return [int(m) for m in re.findall(r"(\d+)%  \d+/\d+ instances", text)]


def test_live_display_in_a_terminal_grows_and_fits_after_a_resize(tmp_path: Path) -> None:
    """The real command in a pseudo-terminal, through a slow link (each series answers
    after 0.5 s): the percentage grows between two captures, no line is wider than the
    terminal, and after a resize to 60 columns the display is drawn at 60."""
    archive = FakeArchive()
    series = [f"1.2.7.1.{n}" for n in range(1, 7)]
    for uid in series:
        for n in range(3):
            archive.add_part10(make_instance("1.2.7.1", uid, f"{uid}.{n}", size=8_000))
    with FakeDicomWebServer(archive, chunk_size=2048) as server:
        for uid in series:
            server.add_fault(f"/series/{uid}", Delay(0.5))
        master, terminal = pty.openpty()
        _set_size(terminal, 24, 80)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        process = subprocess.Popen(
            command(
                "download",
                "series",
                "--url",
                server.base_url,
                "-o",
                f"{tmp_path}",
                "-x",
                "1.2.7.1",
                "-j",
                "2",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env={**env, "TERM": "xterm-256color"},
        )
        os.close(terminal)
        raw, first, resized_at = b"", None, None
        try:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # the process closed the terminal
                        break
                    if not chunk:
                        break
                    raw += chunk
                if first is None and _percentages(raw):
                    first = _percentages(raw)[0]
                    _set_size(master, 24, 60)
                    resized_at = len(raw)
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(master)
    assert process.returncode == 0, raw.decode(errors="replace")
    assert first is not None and resized_at is not None, raw.decode(errors="replace")
    later = _percentages(raw[resized_at:])
    assert later and max(later) > first  # the percentage grew between the two captures
    display, summary = raw.split(b"done: ", 1)
    lines = _screen_lines(display)
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    bars = [line for line in _screen_lines(display[resized_at:]) if " instances " in line]
    assert bars and len(bars[-1]) <= 60  # the last frame was drawn at the new width
    assert summary.startswith(b"6/6 series, 18 written")
    assert "Traceback" not in raw.decode(errors="replace")
