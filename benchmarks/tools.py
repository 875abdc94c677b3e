"""How each tool is run and measured: one subprocess per run, its resources from ``wait4``.

Every run is a fresh process, spawned by the tiny ``spawn_measured.py``, so ``os.wait4``
gives exactly that tool's CPU time (user + sys, including its own children, e.g. the
``curl`` processes of ``xargs``) and its peak resident set (``ru_maxrss``, the largest of
the process and its reaped children; about 9 MB is the floor, inherited from the spawner).
Wall time is from spawn to ``wait4``, interpreter start-up included: that is what a user
of the command waits for.

Tools:

* ``curl`` (sequential): one ``curl`` process, one request per series, each body to a
  file, nothing parsed. The wire limit.
* ``curl xargs -P N``: the same requests, ``N`` ``curl`` processes at a time.
* ``python loop -P N``: ``benchmarks/plain_loop.py``, the same requests, ``N`` at a time
  in one Python thread (non-blocking sockets, ``selectors``), each answer split into its
  parts and each part written to its own file (temporary file, then rename), as
  kheops-async's sink does: what plain Python reaches with the system calls of a
  downloader that writes one file per instance, and nothing else.
* ``dicomweb-client``: ``benchmarks/dwc_runner.py`` (``iter_series`` + ``ds.save_as``).
* ``kheops-async -j N``: the ``kheops-async download studies`` command, or, while that
  command does not exist yet, ``benchmarks/ka_library_runner.py`` (the library's
  ``download()``, same arguments).
* ``library asyncio -j N`` and ``library trio -j N``: ``benchmarks/ka_library_runner.py``
  under each anyio backend: the engine without the command line around it.

:func:`time_console_script` times the installed ``kheops-async`` script's start-up
(``--version``, ``--help``) the same way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.datasets import Case

__all__ = [
    "ACCEPT",
    "PLAIN_LOOP_IMPORTS",
    "STACK_MODULES",
    "RunResult",
    "Tool",
    "console_script",
    "cpu_busy_seconds",
    "curl_parallel",
    "curl_sequential",
    "dicomweb_client",
    "kheops_async",
    "kheops_async_command",
    "library_runner",
    "plain_python_loop",
    "run_measured",
    "time_console_script",
    "time_stack_import",
]

BENCH_DIR = Path(__file__).resolve().parent
ACCEPT = 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*'
TOOL_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
"""The tools' environment: Python tools may cache their bytecode, as installed packages do
(the warm-up runs write it, so no measured run compiles modules)."""
PART_OVERHEAD_BYTES = 400
"""Most multipart framing bytes per part (delimiter line and three part headers)."""


@dataclass
class RunResult:
    """One measured run of one tool on one case."""

    tool: str
    case: str
    run: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    returncode: int
    files: int
    bytes_on_disk: int
    verified: bool
    problem: str = ""
    others_cpu_s: float = 0.0
    loadavg_1m: float = 0.0
    engine_mb_per_s: float = 0.0  # kheops-async only: its own figure, start-up excluded

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


@dataclass
class Tool:
    """A way of downloading a case into a directory, and how to check what it wrote."""

    name: str
    kind: str  # "curl-seq", "curl-par", "plain", "dwc", "ka" (the command), "ka-lib" (library)
    concurrency: int = 1
    command_label: str = ""
    notes: list[str] = field(default_factory=list)
    backend: str = ""  # "ka-lib": the anyio backend

    @property
    def slug(self) -> str:
        """Unique among the tools of a case: names its log files."""
        backend = f"-{self.backend}" if self.backend else ""
        return f"{self.kind}{backend}-{self.concurrency}"

    def argv(self, case: Case, url: str, out_dir: Path, workdir: Path) -> list[str]:
        """The command line of one run (writing any file it needs into ``workdir``)."""
        if self.kind == "curl-seq":
            config = workdir / f"curl-{case.name}.cfg"
            lines = []
            for series in case.series:
                lines.append(f'url = "{_series_url(url, series.study_uid, series.series_uid)}"')
                lines.append(f'output = "{out_dir / series.series_uid}.multipart"')
            config.write_text("\n".join(lines) + "\n")
            return ["curl", "-sS", "--fail", "-H", ACCEPT, "-K", str(config)]
        if self.kind == "curl-par":
            listing = _listing(workdir / f"xargs-{case.name}.txt", case, url, out_dir, ".multipart")
            return [
                "xargs",
                "-a",
                str(listing),
                "-P",
                str(self.concurrency),
                "-n",
                "2",
                "curl",
                "-sS",
                "--fail",
                "-H",
                ACCEPT,
                "-o",
            ]
        if self.kind == "plain":
            listing = _listing(workdir / f"plain-{case.name}.txt", case, url, out_dir, "")
            loop = str(BENCH_DIR / "plain_loop.py")
            return [sys.executable, loop, str(listing), "-P", str(self.concurrency)]
        if self.kind == "dwc":
            runner = BENCH_DIR / "dwc_runner.py"
            studies = ["--all"] if case.whole_archive else case.studies
            return [sys.executable, str(runner), "--url", url, "--out-dir", str(out_dir), *studies]
        if self.kind == "ka":
            return _kheops_async_argv(kheops_async_command(), case, url, out_dir, self.concurrency)
        if self.kind == "ka-lib":
            runner = [sys.executable, str(BENCH_DIR / "ka_library_runner.py")]
            runner += ["--backend", self.backend]
            return _kheops_async_argv(runner, case, url, out_dir, self.concurrency)
        raise ValueError(f"unknown tool kind {self.kind!r}")

    def verify(self, case: Case, out_dir: Path) -> tuple[int, int, bool, str]:
        """``(files, bytes, ok, problem)`` for what a run left in ``out_dir``."""
        suffix = ".multipart" if self.kind.startswith("curl") else ".dcm"
        sizes = [
            p.stat().st_size
            for p in out_dir.rglob(f"*{suffix}")
            if p.is_file() and ".kheops-partial" not in p.parts
        ]
        files, total = len(sizes), sum(sizes)
        if self.kind.startswith("curl"):
            expected = len(case.series)
            upper = case.payload_bytes + PART_OVERHEAD_BYTES * case.instances + 200 * expected
            if files != expected:
                return files, total, False, f"{files} bodies, expected {expected}"
            if not case.payload_bytes < total <= upper:
                return files, total, False, f"{total} bytes of bodies, payload {case.payload_bytes}"
            return files, total, True, ""
        if files != case.instances:
            return files, total, False, f"{files} files, expected {case.instances}"
        if self.kind.startswith(("ka", "plain")) and total != case.payload_bytes:
            return files, total, False, f"{total} bytes, expected {case.payload_bytes}"
        return files, total, True, ""


def _kheops_async_argv(
    command: list[str], case: Case, url: str, out_dir: Path, concurrency: int
) -> list[str]:
    """``command`` (the CLI or the library runner) given the case's studies."""
    argv = [*command, "--url", url, "--out-dir", str(out_dir), "-j", str(concurrency)]
    if case.whole_archive:
        return argv  # no study given: every study the server has
    if command[0].endswith("kheops-async"):
        return argv + [arg for uid in case.studies for arg in ("-x", uid)]
    return argv + case.studies


def _listing(path: Path, case: Case, url: str, out_dir: Path, suffix: str) -> Path:
    """``path``, written with a line ``OUT URL`` per series of ``case`` (OUT: its output)."""
    path.write_text(
        "".join(
            f"{out_dir / s.series_uid}{suffix} {_series_url(url, s.study_uid, s.series_uid)}\n"
            for s in case.series
        )
    )
    return path


def _series_url(base: str, study_uid: str, series_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}"


@functools.cache
def kheops_async_command() -> list[str]:
    """``kheops-async download studies`` if that command works, else the library runner.

    ``$KHEOPS_ASYNC_BENCH_COMMAND`` overrides both (a command taking the library runner's
    arguments), e.g. to measure a patched build side by side.
    """
    override = os.environ.get("KHEOPS_ASYNC_BENCH_COMMAND")
    if override:
        return shlex.split(override)
    script = console_script()
    if script.exists():
        command = [str(script), "download", "studies"]
        check = subprocess.run(
            [*command, "--help"], capture_output=True, env=TOOL_ENVIRONMENT, check=False
        )
        if check.returncode == 0 and b"--out-dir" in check.stdout:
            return command
    return [sys.executable, str(BENCH_DIR / "ka_library_runner.py")]


def curl_sequential() -> Tool:
    return Tool("curl", "curl-seq", 1, "curl -K list (one request per series, sequential)")


def curl_parallel(concurrency: int) -> Tool:
    return Tool(
        f"curl xargs -P {concurrency}",
        "curl-par",
        concurrency,
        f"xargs -P {concurrency} -n 2 curl -o FILE URL",
    )


def plain_python_loop(concurrency: int) -> Tool:
    return Tool(
        f"python loop -P {concurrency}",
        "plain",
        concurrency,
        f"plain_loop.py -P {concurrency}: selectors, one file per instance",
    )


def dicomweb_client() -> Tool:
    return Tool("dicomweb-client", "dwc", 1, "dwc_runner.py: iter_series + ds.save_as")


def kheops_async(concurrency: int) -> Tool:
    command = kheops_async_command()
    if command[0].endswith("kheops-async"):
        label = "kheops-async download studies (the CLI)"
    else:
        label = " ".join(Path(arg).name for arg in command)
    return Tool(f"kheops-async -j {concurrency}", "ka", concurrency, label)


def library_runner(concurrency: int, backend: str) -> Tool:
    """``ka_library_runner.py`` under the anyio ``backend``: the library alone."""
    return Tool(
        f"library {backend} -j {concurrency}",
        "ka-lib",
        concurrency,
        f"ka_library_runner.py --backend {backend}: download() alone",
        backend=backend,
    )


def console_script() -> Path:
    """The installed ``kheops-async`` script: next to this interpreter (``.venv/bin``)."""
    return Path(sys.executable).parent / "kheops-async"


def time_console_script(option: str, runs: int, log_path: Path) -> list[float]:
    """Wall seconds of ``kheops-async OPTION``, ``runs`` times after one untimed run.

    Measured as the other tools are (``spawn_measured.py``, the library snapshot on
    ``PYTHONPATH``); the untimed run writes the bytecode cache. A run that fails raises.
    """
    walls = []
    for run in range(runs + 1):
        wall, _, _, _, code, _ = run_measured(
            [str(console_script()), option], log_path, timeout=60.0
        )
        if code != 0:
            raise RuntimeError(f"kheops-async {option} exited with {code} (see {log_path})")
        if run:
            walls.append(wall)
    return walls


STACK_MODULES = (
    "click",
    "asyncio",
    "sqlite3",
    "anyio",
    "anyio._backends._asyncio",
    "httpx",
    "httpcore",
    "h11",
    "tenacity",
)
"""What the command imports of the design card's packages and the standard library before
its first request: the floor of any command built on them, whatever its own code."""
_UNUSED_BY_THE_COMMAND = ("numpy", "PIL", "requests", "httpx._main", "trio")
"""Kept out as ``kheops_async.cli.app.console_main`` keeps them out of the command."""


PLAIN_LOOP_IMPORTS = "argparse, os, selectors, socket, sys, urllib.parse"
"""What ``plain_loop.py`` imports: the baseline of :func:`time_stack_import` imports it too,
so that a floor of the plain loop's time plus the stack's counts none of it twice."""


def time_stack_import(runs: int, log_path: Path) -> dict[str, float | list[float]]:
    """What importing :data:`STACK_MODULES` adds to one importing what the plain loop does.

    Both interpreters run as the tools do (``spawn_measured.py``), interleaved, after one
    untimed round (bytecode cache): one importing :data:`PLAIN_LOOP_IMPORTS`, one importing
    those and the stack. ``stack_s`` is the difference of their medians, ``fastest_stack_s``
    that of their fastest runs: what the design card's stack adds, which no code of ours
    can remove. As in the command, the modules it keeps out (:data:`_UNUSED_BY_THE_COMMAND`)
    stay out and the process ends with ``os._exit`` (the interpreter's teardown of the
    imported modules, which the command skips, would add about 40 ms here).
    """
    keep_out = "; ".join(f"sys.modules[{name!r}] = None" for name in _UNUSED_BY_THE_COMMAND)
    imports = ", ".join(STACK_MODULES)
    snippets = {  # both end as the command does, without the interpreter's teardown
        "pass": f"import {PLAIN_LOOP_IMPORTS}; os._exit(0)",
        "stack": f"import {PLAIN_LOOP_IMPORTS}; {keep_out}; import {imports}; os._exit(0)",
    }
    walls: dict[str, list[float]] = {name: [] for name in snippets}
    for run in range(runs + 1):
        for name, snippet in snippets.items():
            wall, _, _, _, code, _ = run_measured(
                [sys.executable, "-c", snippet], log_path, timeout=60.0
            )
            if code != 0:
                raise RuntimeError(f"python -c {snippet!r} exited with {code} (see {log_path})")
            if run:
                walls[name].append(wall)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    return {
        "pass_s": medians["pass"],
        "import_s": medians["stack"],
        "stack_s": medians["stack"] - medians["pass"],
        "fastest_stack_s": min(walls["stack"]) - min(walls["pass"]),
        "runs_pass_s": walls["pass"],
        "runs_import_s": walls["stack"],
    }


def cpu_busy_seconds() -> float:
    """CPU-seconds spent not idle by the whole machine since boot (all cores)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def run_measured(
    argv: list[str], log_path: Path, *, timeout: float
) -> tuple[float, float, float, float, int, float]:
    """Run ``argv``; return wall s, user s, sys s, peak RSS (MB), exit code, others' CPU s.

    The command runs under ``spawn_measured.py`` (a stdlib-only interpreter of about
    9 MB) so that its ``ru_maxrss`` does not start from this process's size; see there.
    It gets its own session; past ``timeout`` seconds the whole process group is killed
    (exit code -9). ``others`` is the CPU time the rest of the machine used meanwhile
    (Orthanc, the proxy, other users), from ``/proc/stat``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = log_path.with_suffix(".rusage.json")
    result_path.unlink(missing_ok=True)
    wrapper = [sys.executable, "-I", "-S", str(BENCH_DIR / "spawn_measured.py"), str(result_path)]
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        busy_before = cpu_busy_seconds()
        process = subprocess.Popen(
            [*wrapper, *argv],
            env=TOOL_ENVIRONMENT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (process.pid,))
        timer.start()
        try:
            _, status, _ = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        busy = cpu_busy_seconds() - busy_before
    process.returncode = os.waitstatus_to_exitcode(status)
    try:
        usage = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0, 0.0, process.returncode or -9, busy
    cpu = usage["user_s"] + usage["sys_s"]
    return (
        usage["wall_s"],
        usage["user_s"],
        usage["sys_s"],
        usage["max_rss_kb"] / 1024,
        usage["returncode"],
        max(0.0, busy - cpu),
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
