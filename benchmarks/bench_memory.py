"""Peak RSS of a whole-archive download at two archive sizes: does memory grow with the archive?

Usage::

    python benchmarks/bench_memory.py [--sizes 5000,50000] [--runs 1] [--concurrency 8]
                                      [--studies 50] [--series 10] [--per-series K]
                                      [--tmp /dev/shm] [--json PATH] [--keep-temp]

Target: the peak resident set of a download grows by at most 15 MB from 5,000 to 50,000
instances of about 1 KB (``--instance-bytes``, the whole Part-10 file).

How: for each size, a server subprocess (this script with ``--serve``) builds an archive
of ``--studies`` studies x ``--series`` series x (size / studies / series) instances
(``--per-series K``: size / series / K studies of series of K instances instead) in
``tests/fakeserver``'s :class:`FakeArchive` and serves it over loopback HTTP with
:class:`FakeDicomWebServer` (Kheops-like, chunked WADO-RS), so the server's memory is not
counted. Each measured run is then a fresh subprocess (this script with ``--download``)
doing what ``kheops-async download`` does: one ``DicomWebClient``, one
``download(client, Targets(query={}), dest, concurrency=N, table=CSV)`` of the whole
archive, with the instance table streamed to a CSV file. It runs under
``spawn_measured.py`` (a stdlib-only interpreter of about 9 MB, so its ``ru_maxrss`` does
not start from this harness's size), which reports the child's wall time, user + sys CPU
and peak RSS from ``os.wait4``. Runs are interleaved size by size; the destination is
emptied before each run (a fresh download, not a resume). Every run is checked: the report
says every instance written and nothing failed, the tree holds one file per instance and
the table one row per instance; anything else stops the benchmark.

The library (and ``tests/fakeserver``) is copied aside and byte-compiled at the start,
and every subprocess imports the copy, so edits made to the tree during a run do not mix
versions and no measured run compiles modules. Outputs go to ``--tmp`` (``/dev/shm`` when
it exists: no disk in the figures) and are removed at the end (``--keep-temp`` keeps them).

Printed per size (medians over ``--runs``): instances, wall s (interpreter start-up
included), CPU s of the download child (user + sys), CPU ms per instance, peak RSS MB
(MB = 2**20 bytes, ``ru_maxrss / 1024``, as in the other benchmarks), then the growth from
the smallest to the largest size and PASS/MISS against the target. ``--json PATH`` also
writes every run.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # tests/ is on sys.path at run time (mypy: MYPYPATH=tests)
    from fakeserver import FakeArchive

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
SPAWNER = BENCH_DIR / "spawn_measured.py"

GROWTH_TARGET_MB = 15.0
DEFAULT_SIZES = "5000,50000"
DEFAULT_CONCURRENCY = 8  # kheops_async.DEFAULT_CONCURRENCY (not imported: harness stays light)
UID_ROOT = "1.2.826.0.1.3680043.8.498.7707"
"""Root of the generated UIDs. Every component has a fixed number of digits (study
``1000 + k``, series ``100 + r``, instance ``100000 + i``), so one Part-10 template per
series serves all its instances: only fixed-length bytes change."""
INSTANCE_NUMBER_WIDTH = 6
"""InstanceNumber is written zero-padded to this width (IS allows it), for the same reason."""


# -- the archive (server side) ------------------------------------------------------------


def _instance_uid(series_uid: str, index: int) -> str:
    return f"{series_uid}.{100000 + index}"


def _instance_number_offset(template: bytes, placeholder: str) -> int:
    """Where the value of InstanceNumber (0020,0013) starts in ``template``."""
    element = b"\x20\x00\x13\x00IS" + len(placeholder).to_bytes(2, "little")
    at = template.find(element + placeholder.encode("ascii"))
    if at < 0 or template.count(element) != 1:
        raise RuntimeError("InstanceNumber not found once in the template")
    return at + len(element)


def build_archive(
    studies: int, series_per_study: int, per_series: int, instance_bytes: int
) -> tuple[FakeArchive, int]:
    """A ``FakeArchive`` of ``studies x series_per_study x per_series`` instances.

    Each series gets one template from ``fakeserver.make_instance`` (valid Part-10,
    Explicit VR Little Endian, its own patient, study and series attributes); each instance
    is that template with its own SOPInstanceUID (file meta and dataset), InstanceNumber
    and seeded pseudo-random pixel bytes, spliced in place. Returns the archive and the
    mean size of a file.
    """
    import random

    from fakeserver import FakeArchive, FakeInstance, make_instance, parse_part10

    # The header's size, to choose the pixel bytes that make files of ``instance_bytes``.
    probe_series = f"{UID_ROOT}.1000.100"
    placeholder_number = "9" * INSTANCE_NUMBER_WIDTH
    probe = make_instance(
        f"{UID_ROOT}.1000",
        probe_series,
        _instance_uid(probe_series, 0),
        size=2,
        series_description="Series 1",
        instance_number=int(placeholder_number),
    )
    pixels = max(2, instance_bytes - (len(probe) - 2))
    pixels += pixels % 2
    if pixels > 1024:  # make_instance's rows of 1024 columns
        pixels = -(-pixels // 1024) * 1024
    pixel_element = b"\xe0\x7f\x10\x00OB\x00\x00" + pixels.to_bytes(4, "little")
    archive = FakeArchive()
    total_bytes = 0
    for k in range(studies):
        study_uid = f"{UID_ROOT}.{1000 + k}"
        for r in range(series_per_study):
            series_uid = f"{study_uid}.{100 + r}"
            placeholder_uid = _instance_uid(series_uid, 899999)
            template = make_instance(
                study_uid,
                series_uid,
                placeholder_uid,
                patient_id=f"P{k + 1}",
                seed=k * 1000 + r,
                size=pixels,
                series_number=r + 1,
                series_description=f"Series {r + 1}",
                instance_number=int(placeholder_number),
            )
            model = parse_part10(template)  # QIDO attributes, read once per series
            uid_bytes = placeholder_uid.encode("ascii")
            if template.count(uid_bytes) != 2:  # MediaStorageSOPInstanceUID, SOPInstanceUID
                raise RuntimeError("SOPInstanceUID not found twice in the template")
            head = template[: len(template) - pixels]
            if not head.endswith(pixel_element):
                raise RuntimeError("the template does not end with its pixel data")
            at = _instance_number_offset(head, placeholder_number)
            end = at + INSTANCE_NUMBER_WIDTH
            rng = random.Random(k * 1000 + r)
            for i in range(per_series):
                sop_uid = _instance_uid(series_uid, i)
                number = f"{i + 1:0{INSTANCE_NUMBER_WIDTH}d}".encode("ascii")
                numbered = head[:at] + number + head[end:]
                data = numbered.replace(uid_bytes, sop_uid.encode("ascii")) + rng.randbytes(pixels)
                archive.add_instance(
                    FakeInstance(
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=sop_uid,
                        data=data,
                        patient_id=model.patient_id,
                        patient_name=model.patient_name,
                        study_date=model.study_date,
                        study_time=model.study_time,
                        study_description=model.study_description,
                        modality=model.modality,
                        series_date=model.series_date,
                        series_time=model.series_time,
                        series_number=model.series_number,
                        series_description=model.series_description,
                        sop_class_uid=model.sop_class_uid,
                        instance_number=i + 1,
                    )
                )
                total_bytes += len(data)
    return archive, round(total_bytes / max(1, len(archive)))


def _check_sample(archive: FakeArchive) -> None:
    """Parse a few generated instances fully: UIDs and InstanceNumber as the server says."""
    from fakeserver import parse_part10

    items = archive.all_instances()
    for item in (items[0], items[len(items) // 2], items[-1]):
        parsed = parse_part10(item.data)
        got = (parsed.study_uid, parsed.series_uid, parsed.sop_uid, parsed.instance_number)
        wanted = (item.study_uid, item.series_uid, item.sop_uid, item.instance_number)
        if got != wanted:
            raise RuntimeError(f"generated instance is inconsistent: {got} != {wanted}")


def archive_shape(size: int, args: argparse.Namespace) -> tuple[int, int, int]:
    """Studies, series per study and instances per series of the archive of ``size``.

    ``--per-series K`` fixes the series' size and lets the number of studies grow with
    ``size``; otherwise ``--studies`` is fixed and the series grow.
    """
    if args.per_series:
        return size // (args.series * args.per_series), args.series, args.per_series
    return args.studies, args.series, size // (args.studies * args.series)


def serve(args: argparse.Namespace) -> int:
    """``--serve``: build the archive, print one JSON line (base URL...), serve until EOF.

    Commands on stdin, one per line: ``stats`` prints the requests received (and server
    errors) since the last ``stats`` as one JSON line; end of input stops the server.
    """
    sys.path.append(str(REPO / "tests"))  # the snapshot on PYTHONPATH comes first
    from fakeserver import FakeDicomWebServer

    size = args.serve
    studies, series, per_series = archive_shape(size, args)
    started = time.perf_counter()
    archive, file_size = build_archive(studies, series, per_series, args.instance_bytes)
    _check_sample(archive)
    build_s = time.perf_counter() - started
    with FakeDicomWebServer(archive, framing="chunked") as server:
        hello = {"url": server.base_url, "instances": len(archive), "file_size": file_size}
        print(json.dumps({**hello, "build_s": build_s}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                stats = {"requests": len(server.requests), "errors": server.errors}
                server.reset_stats()
                print(json.dumps(stats), flush=True)
    return 0


# -- the measured download (client side) --------------------------------------------------


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def download_once(args: argparse.Namespace) -> int:
    """``--download URL``: one whole-archive download, its report written as JSON."""
    import anyio

    from kheops_async import DicomWebClient, Targets, download

    imported_kb = _proc_status_kb("VmRSS")

    async def run() -> dict[str, Any]:
        async with DicomWebClient(args.download, concurrency=args.concurrency) as client:
            report = await download(
                client,
                Targets(query={}),
                args.dest,
                concurrency=args.concurrency,
                table=args.table,
            )
        return {
            "ok": report.ok,
            "written": report.written,
            "skipped": report.skipped,
            "failed": report.failed,
            "series_total": report.series_total,
            "series_completed": report.series_completed,
            "series_failed": report.series_failed,
            "bytes_written": report.bytes_written,
            "engine_s": report.seconds,
            "summary": report.summary(),
        }

    result = anyio.run(run)
    result["rss_after_imports_kb"] = imported_kb
    args.result.write_text(json.dumps(result))
    print(f"kheops-async (library): {result['summary']}", file=sys.stderr)
    return 0 if result["ok"] else 1


# -- the harness --------------------------------------------------------------------------


@dataclass
class Run:
    """One measured download."""

    size: int
    run: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float
    rss_after_imports_mb: float
    engine_s: float
    requests: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class ServerProcess:
    """A ``--serve`` subprocess: its base URL, and per-run request statistics."""

    def __init__(self, size: int, args: argparse.Namespace, env: dict[str, str], log: Path):
        self.size = size
        self._log = log.open("ab")
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(size)]
        studies, series, _ = archive_shape(size, args)
        command += ["--studies", str(studies), "--series", str(series)]
        command += ["--instance-bytes", str(args.instance_bytes)]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        hello = self._read_line()
        self.url: str = hello["url"]
        self.file_size: int = hello["file_size"]
        self.build_s: float = hello["build_s"]
        if hello["instances"] != size:
            raise SystemExit(f"server built {hello['instances']} instances, not {size}")

    def _read_line(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line:
            self.close()
            raise SystemExit(f"the server for {self.size} instances died (see {self._log.name})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stats(self) -> dict[str, Any]:
        """Requests received (and server-side errors) since the last call."""
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        return self._read_line()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def snapshot_sources(workdir: Path) -> dict[str, str]:
    """Copy the library and the fake server aside, byte-compile them; the children's env."""
    library = workdir / "library"
    shutil.copytree(
        REPO / "kheops_async",
        library / "kheops_async",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    fakeserver = REPO / "tests" / "fakeserver"  # a package, or a module in older trees
    if fakeserver.is_dir():
        shutil.copytree(
            fakeserver, library / "fakeserver", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        shutil.copy2(fakeserver.with_suffix(".py"), library / "fakeserver.py")
    if not compileall.compile_dir(library, quiet=1):
        raise SystemExit(f"cannot byte-compile the library copy in {library}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(library)
    return env


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _count_files(root: Path) -> int:
    count = 0
    for directory, dirs, files in os.walk(root):
        if directory == str(root):
            dirs[:] = [d for d in dirs if d != ".kheops-async"]
        count += len(files)
    return count


def measure(
    server: ServerProcess, run: int, args: argparse.Namespace, env: dict[str, str], work: Path
) -> Run:
    """One measured download of ``server``'s whole archive, checked; raise on any problem."""
    size = server.size
    dest = work / f"out-{size}"
    table = work / f"table-{size}.csv"
    result = work / f"result-{size}.json"
    usage = work / f"rusage-{size}.json"
    for path in (table, result, usage):
        path.unlink(missing_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    command = [sys.executable, "-I", "-S", str(SPAWNER), str(usage)]
    command += [sys.executable, str(Path(__file__).resolve()), "--download", server.url]
    command += ["--dest", str(dest), "--table", str(table), "--result", str(result)]
    command += ["--concurrency", str(args.concurrency)]
    log_path = work / f"download-{size}-{run}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the timer (or Ctrl-C here) kills the whole group
        )
        timer = threading.Timer(args.timeout, _kill, (process,))
        timer.start()
        try:
            code = process.wait()
        except BaseException:
            _kill(process)
            process.wait()
            raise
        finally:
            timer.cancel()
    stats = server.stats()
    log_text = log_path.read_text(errors="replace").strip()
    if code != 0 or not result.exists() or not usage.exists():
        raise SystemExit(f"download of {size} instances failed (exit {code}):\n{log_text}")
    report = json.loads(result.read_text())
    rusage = json.loads(usage.read_text())
    files = _count_files(dest)
    with table.open(encoding="utf-8") as rows:
        table_rows = sum(1 for _ in rows) - 1  # the header line
    problems = []
    if not report["ok"] or report["written"] != size or report["failed"] or report["skipped"]:
        problems.append(f"report: {report['summary']}")
    if report["series_completed"] != report["series_total"]:
        problems.append("not every series completed")
    if files != size:
        problems.append(f"{files} files in the tree")
    if table_rows != size:
        problems.append(f"{table_rows} rows in the table")
    if stats["errors"]:
        problems.append(f"server errors: {stats['errors'][0]}")
    if problems:
        raise SystemExit(f"run {run} of {size} instances is wrong: " + "; ".join(problems))
    return Run(
        size=size,
        run=run,
        wall_s=rusage["wall_s"],
        user_s=rusage["user_s"],
        sys_s=rusage["sys_s"],
        max_rss_mb=rusage["max_rss_kb"] / 1024,
        rss_after_imports_mb=report["rss_after_imports_kb"] / 1024,
        engine_s=report["engine_s"],
        requests=stats["requests"],
    )


def _median(runs: list[Run], name: str) -> float:
    return statistics.median(float(getattr(run, name)) for run in runs)


def render(
    runs: list[Run], sizes: list[int], servers: dict[int, ServerProcess], args: argparse.Namespace
) -> tuple[str, bool]:
    """The results table and the verdict line; whether the target is met."""
    header = (
        "| instances | shape | file size | wall s | CPU s | CPU ms/instance | "
        "peak RSS MB | RSS after imports MB | requests |"
    )
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    rss: dict[int, float] = {}
    for size in sizes:
        mine = [run for run in runs if run.size == size]
        cpu = _median(mine, "cpu_s")
        rss[size] = _median(mine, "max_rss_mb")
        shape = "x".join(str(n) for n in archive_shape(size, args))
        lines.append(
            f"| {size:,} | {shape} | {servers[size].file_size} B | {_median(mine, 'wall_s'):.1f} "
            f"| {cpu:.1f} | {cpu * 1000 / size:.2f} | {rss[size]:.1f} "
            f"| {_median(mine, 'rss_after_imports_mb'):.1f} | {int(_median(mine, 'requests'))} |"
        )
    small, large = min(sizes), max(sizes)
    growth = rss[large] - rss[small]
    met = growth <= GROWTH_TARGET_MB
    verdict = (
        f"peak RSS growth {small:,} -> {large:,} instances: {growth:+.1f} MB "
        f"(target <= {GROWTH_TARGET_MB:g} MB): {'PASS' if met else 'MISS'}"
    )
    return "\n".join([*lines, "", verdict]), met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="instance counts (comma list)")
    parser.add_argument("--runs", type=int, default=1, help="runs per size (median reported)")
    parser.add_argument("-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--studies", type=int, default=50, help="studies in every archive")
    parser.add_argument("--series", type=int, default=10, help="series per study")
    parser.add_argument(
        "--per-series",
        type=int,
        metavar="K",
        help="instances per series, fixed: the number of studies grows with the size instead",
    )
    parser.add_argument(
        "--instance-bytes", type=int, default=1024, help="approximate size of each file"
    )
    parser.add_argument(
        "--tmp",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where outputs go (default /dev/shm if it exists, else the system's temp dir)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per download")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--keep-temp", action="store_true", help="keep outputs and logs")
    # Internal modes: the server and the measured download, each its own process.
    parser.add_argument("--serve", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--download", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is None and args.download is None:
        try:
            args.size_list = sorted({int(value) for value in args.sizes.split(",") if value})
        except ValueError:
            parser.error(f"--sizes: not a comma-separated list of counts: {args.sizes!r}")
        fixed = args.series * (args.per_series or args.studies)
        if len(args.size_list) < 2 or any(n <= 0 or n % fixed for n in args.size_list):
            what = "series x per-series" if args.per_series else "studies x series"
            parser.error(f"--sizes: at least two multiples of {what} = {fixed}, got {args.sizes!r}")
        if args.runs < 1 or args.concurrency < 1:
            parser.error("--runs and --concurrency must be >= 1")
    return args


def harness(args: argparse.Namespace) -> int:
    sizes: list[int] = args.size_list
    work = Path(tempfile.mkdtemp(prefix="kheops-bench-memory-", dir=args.tmp))
    servers: dict[int, ServerProcess] = {}
    runs: list[Run] = []
    try:
        env = snapshot_sources(work)
        for size in sizes:
            servers[size] = ServerProcess(size, args, env, work / f"server-{size}.log")
            print(
                f"server for {size:,} instances ready in {servers[size].build_s:.1f}s "
                f"({servers[size].file_size} B each)",
                file=sys.stderr,
                flush=True,
            )
        for run in range(1, args.runs + 1):
            for size in sizes:
                result = measure(servers[size], run, args, env, work)
                runs.append(result)
                print(
                    f"run {run}, {size:,} instances: {result.wall_s:.1f}s wall, "
                    f"{result.cpu_s:.1f}s CPU, {result.max_rss_mb:.1f} MB peak RSS",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.close()
        if args.keep_temp:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text, met = render(runs, sizes, servers, args)
    print(
        f"kheops-async peak RSS, whole-archive download with instance table, "
        f"-j {args.concurrency}, {args.runs} run(s) per size (medians), outputs on "
        f"{args.tmp or tempfile.gettempdir()}"
    )
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"runs": [asdict(run) for run in runs], "target_met": met}, indent=2)
        )
    return 0 if met else 1


def main() -> int:
    args = parse_args()
    if args.serve is not None:
        return serve(args)
    if args.download is not None:
        return download_once(args)
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
