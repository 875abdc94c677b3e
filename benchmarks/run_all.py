"""Run every benchmark: our own Orthanc, generated data, curl / dicomweb-client / kheops-async.

Usage::

    python benchmarks/run_all.py [--scenarios S1,S2,S3,S4,A,A40,T] [--runs 3]
                                 [--concurrency N] [--sweep 1,2,4,8,16|none] [--quick]

First, cheap and always: the start-up of the installed ``kheops-async`` script
(``--version`` and ``--help``, median of 7), and the parser micro-benchmark
(``bench_parser.py``) on this library and on a baseline commit, interleaved.

Then, for each data group, it starts an Orthanc (``kheops_async.demo``) in a temporary
directory, generates and uploads the data (``datasets.py``), and runs each tool as a
separate subprocess, ``--runs`` times, interleaved (curl, curl xargs -P N, the plain
Python loop of ``plain_loop.py``, dicomweb-client, the kheops-async command, the library
under asyncio and under trio, then again). The output directory is emptied before every
run; nothing else is dropped, and an untimed curl pass first warms the page cache for all
tools alike. S3 and A40 go through
``latency_proxy.py`` (20 ms each way). S2 and S3 also sweep the command's ``-j`` (and curl
``xargs -P`` at the same values). T (50,000 tiny instances) measures CPU per instance and
skips dicomweb-client (minutes a run). ``targets.py`` checks the results against the
targets of issue 9.

Writes ``benchmarks/out/results.json`` and ``benchmarks/out/results.md`` (``--out``).
``--quick`` shrinks the data (and defaults to one run, sweep 1,4): a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.datasets import SCENARIOS, Case, DataGroup, groups_for, load_group  # noqa: E402
from benchmarks.discard import Graveyard, settled_creation_cost_us  # noqa: E402
from benchmarks.targets import evaluate_targets, floor_rows, tool_summary  # noqa: E402
from benchmarks.tools import (  # noqa: E402
    STACK_MODULES,
    TOOL_ENVIRONMENT,
    RunResult,
    Tool,
    console_script,
    curl_parallel,
    curl_sequential,
    dicomweb_client,
    kheops_async,
    kheops_async_command,
    library_runner,
    plain_python_loop,
    run_measured,
    time_console_script,
    time_stack_import,
)
from kheops_async import DEFAULT_CONCURRENCY  # noqa: E402
from kheops_async.demo import OrthancServer, running_orthanc  # noqa: E402

BENCH_DIR = REPO / "benchmarks"
MB = 1e6
BACKENDS = ("asyncio", "trio")
"""The library runner's anyio backends, each measured in every case."""
STARTUP_RUNS = 7
STACK_RUNS = 15
PARSER_BASELINE = "525b3db48425601b2e598140fb660fd3c01f21a4"
"""The library of the 2026-12-01 full run (RESULTS.md): "today" for the parser target."""
PARSER_ROUNDS = 4
"""Rounds of parser runs, this library and the baseline in turn (ABBA order), so that a
change in the machine's speed during the session affects both alike."""

# -- machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _curl_version() -> str:
    output = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return " ".join(output.stdout.split()[:2])


def machine_description() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "ram_gb": round(_mem_total_gb(), 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "httpx": _version("httpx"),
        "anyio": _version("anyio"),
        "trio": _version("trio"),
        "pydicom": _version("pydicom"),
        "kheops-async": _version("kheops-async"),
        "dicomweb-client": _version("dicomweb-client"),
        "requests": _version("requests"),
        "curl": _curl_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def orthanc_versions(server: OrthancServer) -> dict[str, str]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        system = client.get("/system").json()
        plugin = client.get("/plugins/dicom-web")
        plugin_version = plugin.json().get("Version", "?") if plugin.status_code == 200 else "?"
    return {"orthanc": str(system.get("Version")), "dicomweb_plugin": str(plugin_version)}


def snapshot_library(workdir: Path) -> dict[str, Any]:
    """Copy ``kheops_async`` aside and make every tool run import that copy.

    The package is installed in editable mode and may be edited while a long benchmark
    runs; the copy pins the measured code to one version (recorded in the results).
    """
    target = workdir / "library"
    shutil.copytree(
        REPO / "kheops_async",
        target / "kheops_async",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    TOOL_ENVIRONMENT["PYTHONPATH"] = str(target)
    return {
        "commit": _git("rev-parse", "--short", "HEAD").decode().strip(),
        "commit_subject": _git("log", "-1", "--format=%s").decode().strip(),
        "uncommitted_library_changes": _git("status", "--porcelain", "--", "kheops_async").decode(),
    }


def _git(*args: str) -> bytes:
    """Output of a read-only git command in the repository (empty on failure)."""
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else b""


def parser_trees(workdir: Path, baseline: str) -> dict[str, Path]:
    """Trees to run ``bench_parser.py`` in: the library snapshot's, and ``baseline``'s.

    ``bench_parser.py`` imports ``kheops_async`` from the directory above its own, so a
    copy of it next to each library measures that library (the baseline's is extracted
    with ``git archive``, the working tree and the index untouched). The baseline is left
    out if git cannot produce it.
    """
    trees = {"current": workdir / "parser-current"}
    shutil.copytree(workdir / "library" / "kheops_async", trees["current"] / "kheops_async")
    archive = _git("archive", "--format=tar", baseline, "kheops_async")
    if archive:
        trees["baseline"] = workdir / "parser-baseline"
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(trees["baseline"], filter="data")
    for root in trees.values():
        (root / "benchmarks").mkdir(exist_ok=True)
        shutil.copy2(BENCH_DIR / "bench_parser.py", root / "benchmarks")
    return trees


# -- the latency proxy ----------------------------------------------------------------------


@contextlib.contextmanager
def latency_proxy(target_port: int, delay_ms: float, log_path: Path) -> Iterator[int]:
    """Run ``latency_proxy.py`` in front of ``target_port``; yield the port to use."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "latency_proxy.py"),
                "--target",
                f"127.0.0.1:{target_port}",
                "--delay-ms",
                str(delay_ms),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"the latency proxy did not start (see {log_path})")
        yield int(line[1])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def probe_round_trip(url: str) -> dict[str, float]:
    """Time a small QIDO on a fresh connection and again on the kept-alive one (ms)."""
    timings: list[float] = []
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            started = time.perf_counter()
            client.get(f"{url}/studies", params={"limit": "1"}).raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
    return {"fresh_connection_ms": timings[0], "kept_alive_ms": min(timings[1:])}


# -- measuring ------------------------------------------------------------------------------


class Bench:
    """Settings and collected results of one benchmark session."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.runs: list[RunResult] = []
        self.sweep_runs: list[RunResult] = []
        self.cases: dict[str, dict[str, Any]] = {}
        self.warmed_up = False
        self.graveyard = Graveyard(workdir / "graveyard")

    def measure(self, tool: Tool, case: Case, url: str, run: int) -> RunResult:
        out_dir = self.workdir / "out" / tool.kind
        self.graveyard.set_aside(out_dir)
        out_dir.mkdir(parents=True)
        argv = tool.argv(case, url, out_dir, self.workdir)
        log = self.logs / f"{case.name}-{tool.slug}-run{run}.log"
        loadavg = os.getloadavg()[0]
        wall, user, system, rss, code, others = run_measured(argv, log, timeout=self.args.timeout)
        files, size, ok, problem = tool.verify(case, out_dir)
        if code != 0:
            ok, problem = False, f"exit status {code}; {problem}".rstrip("; ")
        result = RunResult(
            tool=tool.name,
            case=case.name,
            run=run,
            wall_s=wall,
            user_s=user,
            sys_s=system,
            max_rss_mb=rss,
            returncode=code,
            files=files,
            bytes_on_disk=size,
            verified=ok,
            problem=problem,
            others_cpu_s=others,
            loadavg_1m=loadavg,
            engine_mb_per_s=_engine_rate(log) if tool.kind.startswith("ka") else 0.0,
        )
        mbps = case.payload_bytes / MB / max(wall, 1e-9)
        flag = "" if ok else f"  FAILED: {problem} (log {log})"
        print(
            f"  {case.name} run {run} {tool.name:<22} {wall:7.2f} s {mbps:8.1f} MB/s "
            f"cpu {user + system:6.2f} s rss {rss:7.1f} MB{flag}",
            flush=True,
        )
        self.graveyard.set_aside(out_dir)
        return result

    def measure_all(self, tools: list[Tool], case: Case, url: str) -> list[RunResult]:
        """``--runs`` rounds of every tool, interleaved (tool by tool, round by round)."""
        return [
            self.measure(tool, case, url, run)
            for run in range(1, self.args.runs + 1)
            for tool in tools
        ]

    def run_case(self, case: Case, url: str, extra: dict[str, Any]) -> None:
        tools = tools_for(case, self.args.concurrency)
        print(
            f"{case.name}: {case.description}: {case.instances} instances, "
            f"{case.payload_bytes / MB:.1f} MB",
            flush=True,
        )
        # Untimed pass: the stored files are in the page cache for every tool alike. The
        # first case also runs every tool once, so Python tools have their bytecode cached.
        for tool in tools if not self.warmed_up else tools[:1]:
            self.measure(tool, case, url, 0)
        self.warmed_up = True
        load_before = os.getloadavg()
        results = self.measure_all(tools, case, url)
        self.runs += results
        self.cases[case.name] = {
            "description": case.description,
            "instances": case.instances,
            "series": len(case.series),
            "studies": len(case.studies),
            "payload_bytes": case.payload_bytes,
            "latency": case.latency,
            "per_instance_cpu": case.per_instance_cpu,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "tools": {
                t.name: summarize(case, [r for r in results if r.tool == t.name]) for t in tools
            },
            "commands": {t.name: t.command_label for t in tools},
            **extra,
        }
        if case.name in ("S2", "S3") and self.args.sweep:
            self.sweep(case, url)

    def sweep(self, case: Case, url: str) -> None:
        points: list[dict[str, Any]] = []
        for jobs in self.args.sweep:
            tools = [kheops_async(jobs), curl_parallel(jobs)]
            results = self.measure_all(tools, case, url)
            self.sweep_runs += results
            ka = summarize(case, [r for r in results if r.tool == tools[0].name])
            curl = summarize(case, [r for r in results if r.tool == tools[1].name])
            points.append(
                {
                    "jobs": jobs,
                    "kheops_async": ka,
                    "curl_xargs": curl,
                    "ratio_vs_curl": ka["mb_per_s"] / curl["mb_per_s"] if curl["mb_per_s"] else 0,
                }
            )
        self.cases[case.name]["sweep"] = points


def tools_for(case: Case, concurrency: int) -> list[Tool]:
    """The tools measured on ``case``: the baselines, the command, the library per backend."""
    tools = [curl_sequential()]
    if len(case.series) > 1:
        tools.append(curl_parallel(concurrency))
    tools.append(plain_python_loop(concurrency))
    if not case.per_instance_cpu:  # T: dicomweb-client would take minutes per run
        tools.append(dicomweb_client())
    tools.append(kheops_async(concurrency))
    tools += [library_runner(concurrency, backend) for backend in BACKENDS]
    return tools


def _engine_rate(log: Path) -> float:
    """The MB/s kheops-async reports itself, from the latest run in ``log``, or 0.

    The library runner's exact line ("engine: N bytes in S s") if there is one, else the
    summary's rounded figure ("... MB in 1.2s (87.6 MB/s)", all the command prints).
    """
    text = log.read_text(errors="replace")
    exact = re.findall(r"engine: (\d+) bytes in ([\d.]+) s", text)
    if exact:
        written, seconds = exact[-1]
        return int(written) / MB / max(float(seconds), 1e-9)
    found = re.findall(r"MB in [\d.]+s \(([\d.]+) MB/s\)", text)
    return float(found[-1]) if found else 0.0


def summarize(case: Case, results: list[RunResult]) -> dict[str, Any]:
    """Medians over the verified runs (all runs if none verified)."""
    good = [r for r in results if r.verified] or results
    wall = max(1e-9, statistics.median(r.wall_s for r in good))
    return {
        "runs": len(results),
        "verified_runs": sum(r.verified for r in results),
        "problems": sorted({r.problem for r in results if r.problem}),
        "wall_s": wall,
        "wall_runs_s": [r.wall_s for r in results],
        "mb_per_s": case.payload_bytes / MB / wall,
        "instances_per_s": case.instances / wall,
        "cpu_s": statistics.median(r.cpu_s for r in good),
        "cpu_ms_per_instance": statistics.median(r.cpu_s for r in good) * 1000 / case.instances,
        "user_s": statistics.median(r.user_s for r in good),
        "sys_s": statistics.median(r.sys_s for r in good),
        "peak_rss_mb": max(r.max_rss_mb for r in results),
        "median_rss_mb": statistics.median(r.max_rss_mb for r in results),
        "others_cpu_s": statistics.median(r.others_cpu_s for r in good),
        "loadavg_1m": statistics.median(r.loadavg_1m for r in results),
        "engine_mb_per_s": statistics.median(r.engine_mb_per_s for r in good),
    }


# -- output ---------------------------------------------------------------------------------


def _num(value: float) -> str:
    """Three significant figures or so: 1234, 123, 12.3, 1.23."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _table(title: str, columns: str, rows: list[str]) -> list[str]:
    """A markdown table, under ``## title`` unless the title is empty.

    ``columns`` names the columns, separated by ``|``; a trailing ``:`` right-aligns one.
    """
    names = [c.strip() for c in columns.split("|")]
    header = "| " + " | ".join(n.rstrip(":") for n in names) + " |"
    align = "|" + "|".join("---:" if n.endswith(":") else "---" for n in names) + "|"
    return ["", *([f"## {title}", ""] if title else []), header, align, *rows]


def _header(report: dict[str, Any]) -> list[str]:
    """The machine, the versions, the library measured and the settings."""
    machine = report["machine"]
    library = report["library"]
    return [
        "# kheops-async benchmarks",
        "",
        f"- Date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs; "
        f"RAM {machine['ram_gb']} GB; Linux {machine['kernel']}",
        f"- {machine['python']}; httpx {machine['httpx']}; anyio {machine['anyio']}; "
        f"trio {machine.get('trio', '?')}; pydicom {machine['pydicom']}; dicomweb-client "
        f"{machine['dicomweb-client']} (requests {machine['requests']}); {machine['curl']}",
        f"- Orthanc {report.get('orthanc', {}).get('orthanc', '?')}, DICOMweb plugin "
        f"{report.get('orthanc', {}).get('dicomweb_plugin', '?')} (own process, loopback)",
        f"- kheops-async run as: `{report['kheops_async_command']}`, and as "
        "`ka_library_runner.py --backend asyncio|trio` (the library alone); library at "
        f"commit {library['commit']} ({library['commit_subject']})"
        + (", with uncommitted changes" if library["uncommitted_library_changes"] else "")
        + " (a copy taken at the start, so edits during the run do not mix versions)",
        f"- Runs per figure: {report['settings']['runs']} (median wall; peak RSS = max over "
        f"runs); concurrency N = {report['settings']['concurrency']}; "
        f"quick = {report['settings']['quick']}",
        "- Load average (1/5/15 min) at start: "
        + " / ".join(f"{v:.2f}" for v in machine["loadavg_at_start"])
        + f"; at end: {' / '.join(f'{v:.2f}' for v in report['loadavg_at_end'])}",
        f"- Total time: {report.get('total_seconds', 0):.0f} s",
        "- File creation in the output's file system at the start: "
        f"{machine.get('creation_us', 0):.0f} us per empty file (2,000 files, after waiting "
        f"{machine.get('creation_wait_s', 0):.0f} s for it to settle; see "
        "`benchmarks/discard.py` for why outputs are set aside, not deleted, between runs)",
        f"- Writing {TOUCH_MB} MB of fresh memory in a new process (the machine's phase, "
        "see `measure_memory_touch`): "
        f"{machine.get('touch_ms_start', 0):.0f} ms at the start, "
        f"{report.get('touch_ms_end', 0):.0f} ms at the end (median of {TOUCH_RUNS})",
        "",
        "MB = 10^6 bytes of DICOM Part-10 payload (the same numerator for every tool). "
        "Wall time includes process start-up. CPU = user + sys of the tool's process tree "
        '(wait4). "Others CPU" = CPU the rest of the machine used during the run (Orthanc, '
        'the proxy, anything else running). "Engine MB/s" = kheops-async\'s own figure '
        "(bytes written / seconds from the start of download(), i.e. without interpreter "
        "start-up, imports and client set-up).",
    ]


def _results_table(cases: dict[str, Any]) -> list[str]:
    rows = []
    for name, case in cases.items():
        for tool, s in case["tools"].items():
            per_instance = s.get("cpu_ms_per_instance", s["cpu_s"] * 1000 / case["instances"])
            rows.append(
                f"| {name} | {tool} | {s['wall_s']:.2f} | {s['mb_per_s']:.1f} "
                f"| {_num(s['instances_per_s'])} | {s['cpu_s']:.2f} | {per_instance:.2f} "
                f"| {s['peak_rss_mb']:.0f} | {s['others_cpu_s']:.2f} "
                f"| {s['verified_runs']}/{s['runs']} "
                f"| {_num(s['engine_mb_per_s']) if s['engine_mb_per_s'] else ''} |"
            )
    columns = (
        "case | tool | wall s: | MB/s: | inst/s: | CPU s: | CPU ms/inst: | peak RSS MB: "
        "| others CPU s: | runs ok: | engine MB/s:"
    )
    return _table("", columns, rows)


def _case_list(report: dict[str, Any]) -> list[str]:
    """What each case downloads, and how long its data took to load."""
    lines = ["", "Cases:", ""]
    for name, case in report["cases"].items():
        extra = ""
        if "round_trip" in case:
            rt = case["round_trip"]
            extra = (
                f"; measured QIDO through the proxy: {rt['kept_alive_ms']:.0f} ms kept-alive, "
                f"{rt['fresh_connection_ms']:.0f} ms on a fresh connection"
            )
        if case.get("per_instance_cpu"):
            extra += "; dicomweb-client not run (minutes per run at this size)"
        lines.append(
            f"- {name}: {case['description']} ({case['studies']} studies, {case['series']} "
            f"series, {case['instances']} instances, {case['payload_bytes'] / MB:.1f} MB){extra}"
        )
    uploads = report.get("uploads", {})
    if uploads:
        lines += ["", "Data loading (generate and upload into Orthanc, untimed for the tools):", ""]
        lines += [
            f"- {group}: {u['instances']:,} instances in {u['seconds']:.1f} s"
            for group, u in uploads.items()
        ]
    return lines


def _ratios_table(cases: dict[str, Any]) -> list[str]:
    rows = []
    for name, case in cases.items():
        ka = tool_summary(case, "kheops-async")
        if ka is None:
            continue
        cells = _ratio_cells(case, ka, ("curl", "curl xargs", "dicomweb-client", "python loop"))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return _table(
        "Ratios (the kheops-async command's throughput / other tool's, same run)",
        "case | vs curl: | vs curl xargs -P N: | vs dicomweb-client: | vs python loop -P N:",
        rows,
    )


def _ratio_cells(case: dict[str, Any], tool: dict[str, Any], others: tuple[str, ...]) -> list[str]:
    """``tool``'s throughput over each of ``others``' in ``case`` ("-" for one not run)."""
    cells = []
    for other_name in others:
        other = tool_summary(case, other_name)
        cells.append(f"{tool['mb_per_s'] / other['mb_per_s']:.2f}" if other else "-")
    return cells


def _floor_table(cases: dict[str, Any]) -> list[str]:
    """Where plain Python stands against curl: the floor under every target of a case."""
    rows = []
    for name, case in cases.items():
        plain = tool_summary(case, "python loop")
        if plain is None:
            continue
        cells = _ratio_cells(case, plain, ("curl", "curl xargs"))
        rows.append(
            f"| {name} | {plain['wall_s']:.2f} | {plain['cpu_s']:.2f} | " + " | ".join(cells) + " |"
        )
    return _table(
        "The plain Python loop (plain_loop.py: the same requests and file calls, nothing else)",
        "case | wall s: | CPU s: | its throughput / curl's: | / curl xargs -P N's:",
        rows,
    )


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    rows = [
        f"| {t['case']} | {t['target']} | {t['value']} | "
        + ("met |" if t["met"] else "**MISSED** |")
        for t in targets
    ]
    met = sum(t["met"] for t in targets)
    return _table(f"Targets ({met} of {len(targets)} met)", "case | target | measured: | met", rows)


def _design_floor_table(cases: dict[str, Any], stack: dict[str, Any] | None) -> list[str]:
    """Each command target's time against the floor of the design's stack (floor_rows)."""
    if not stack or "fastest_stack_s" not in stack:
        return []
    verdicts = {True: "yes", False: "**no**", None: "no floor (latency)"}
    rows = [
        f"| {r['case']} | {r['target']} | {r['target_s']:.3f} | {r['command_s']:.3f} "
        f"| {r['plain_s']:.3f} + {r['stack_s']:.3f} = {r['floor_s']:.3f} "
        f"| {verdicts[r['reachable']]} |"
        for r in floor_rows(cases, stack)
    ]
    if not rows:
        return []
    runs = len(stack["runs_pass_s"])
    return [
        *_table(
            "The command's targets against the floor of the design's stack",
            "case | target | target's time s: | the command s: "
            "| floor s (plain loop + stack imports, fastest runs): | floor within the target:",
            rows,
        ),
        "",
        f"The stack: `import {', '.join(STACK_MODULES)}` adds {stack['fastest_stack_s']:.3f} s "
        f"(fastest runs; medians {stack['stack_s']:.3f} s) to an interpreter that imports "
        f"what the plain loop does ({stack['pass_s']:.3f} s; {runs} interleaved runs each). "
        "A command built on the design card's packages imports them and makes at least the "
        "plain loop's system calls, so where the floor exceeds the target's time no code of "
        "ours meets that target on this machine; where it does not, the gap between the "
        "command and the floor is ours. Through the latency proxy the plain loop pays a "
        "round trip per series that connections opened ahead hide: no floor there.",
        "",
    ]


def _sweep_table(cases: dict[str, Any]) -> list[str]:
    rows = []
    for name, case in cases.items():
        for p in case.get("sweep", []):
            ka, curl = p["kheops_async"], p["curl_xargs"]
            rows.append(
                f"| {name} | {p['jobs']} | {ka['wall_s']:.2f} | {ka['mb_per_s']:.1f} "
                f"| {ka['cpu_s']:.2f} | {ka['peak_rss_mb']:.0f} | {curl['wall_s']:.2f} "
                f"| {curl['mb_per_s']:.1f} | {p['ratio_vs_curl']:.2f} |"
            )
    if not rows:
        return []
    return _table(
        "Concurrency sweep (kheops-async -j N vs curl xargs -P N)",
        "case | N: | kheops-async wall s: | MB/s: | CPU s: | peak RSS MB: "
        "| curl -P N wall s: | MB/s: | ratio:",
        rows,
    )


def _parser_table(parser: dict[str, Any] | None) -> list[str]:
    if not parser:
        return []
    rows = []
    for c in parser["cases"]:
        reference = c.get("baseline_median_mb_per_s")
        baseline_best = max(c.get("baseline_runs_mb_per_s") or [0.0])
        rows.append(
            f"| {c['name']} | {c['body_bytes'] / MB:.0f} | {c['chunk_bytes'] // 1024} "
            f"| {c['median_mb_per_s']:.0f} | {min(c['runs_mb_per_s']):.0f} "
            f"| {max(c['runs_mb_per_s']):.0f} | {f'{reference:.0f}' if reference else '-'} "
            f"| {f'{baseline_best:.0f}' if baseline_best else '-'} |"
        )
    baseline = parser.get("baseline_commit", "")[:7] or "-"
    return _table(
        f"Multipart parser (bench_parser.py, median of {parser['runs']} runs; baseline: "
        f"the parser at {baseline}, run interleaved with it)",
        "case | body MB: | chunk KiB: | median MB/s: | min: | max: | baseline median MB/s: "
        "| baseline max:",
        rows,
    )


def _startup_table(startup: dict[str, Any] | None) -> list[str]:
    if not startup:
        return []
    rows = []
    for option in ("--version", "--help"):
        figures = startup.get(option, {})
        runs = figures.get("runs_s")
        if runs:
            rows.append(
                f"| kheops-async {option} | {figures['median_s']:.3f} | {min(runs):.3f} "
                f"| {max(runs):.3f} | {len(runs)} |"
            )
        else:
            rows.append(f"| kheops-async {option} | {figures.get('error', '-')} | | | |")
    return _table(
        f"Start-up of the installed script (`{startup.get('script', '?')}`, wall s)",
        "command | median: | min: | max: | runs:",
        rows,
    )


def render_markdown(report: dict[str, Any]) -> str:
    """The whole results page: settings, every figure, the ratios and the targets."""
    cases = report["cases"]
    lines = [
        *_header(report),
        *_results_table(cases),
        *_case_list(report),
        *_ratios_table(cases),
        *_floor_table(cases),
        *_targets_table(report["targets"]),
        *_design_floor_table(cases, report.get("stack_import")),
        *_startup_table(report.get("startup")),
        *_sweep_table(cases),
        *_parser_table(report.get("parser")),
    ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def _parser_once(tree: Path, runs: int, result: Path, log: Path) -> dict[str, Any] | None:
    """One ``bench_parser.py`` run in ``tree`` (see :func:`parser_trees`), or None."""
    result.unlink(missing_ok=True)
    script = tree / "benchmarks" / "bench_parser.py"
    with log.open("ab") as sink:
        code = subprocess.run(
            [sys.executable, str(script), "--json", str(result), "--runs", str(runs)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code != 0 or not result.exists():
        print(f"  bench_parser.py in {tree} failed (exit {code}, see {log})", flush=True)
        return None
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def _pooled_runs(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Every run's MB/s of each parser case, over several ``bench_parser.py`` results."""
    pooled: dict[str, list[float]] = {}
    for data in results:
        for case in data["cases"]:
            pooled.setdefault(case["name"], []).extend(case["runs_mb_per_s"])
    return pooled


def run_parser_bench(
    trees: dict[str, Path], runs: int, out_dir: Path, log: Path, baseline: str
) -> dict[str, Any] | None:
    """The parser on this library and on the baseline, :data:`PARSER_ROUNDS` rounds each.

    Returns the first result with every case's runs pooled over the rounds and its
    median recomputed, plus the baseline's pooled runs and median
    (``baseline_median_mb_per_s``); without a baseline, or if it fails, only this
    library's figures. None if this library's runs fail.
    """
    print(f"parser micro-benchmark (and the baseline, {baseline[:7]}) ...", flush=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for round_number in range(PARSER_ROUNDS):
        order = list(trees.items())
        for name, tree in order if round_number % 2 == 0 else reversed(order):
            data = _parser_once(tree, runs, out_dir / f"parser-{name}.json", log)
            if data is None and name == "current":
                return None
            if data is not None:
                results[name].append(data)
    report = results["current"][0]
    report["runs"] = runs * PARSER_ROUNDS
    current = _pooled_runs(results["current"])
    reference = _pooled_runs(results["baseline"]) if results.get("baseline") else {}
    report["baseline_commit"] = baseline if reference else ""
    for case in report["cases"]:
        case["runs_mb_per_s"] = current[case["name"]]
        case["median_mb_per_s"] = statistics.median(case["runs_mb_per_s"])
        if case["name"] in reference:
            case["baseline_runs_mb_per_s"] = reference[case["name"]]
            case["baseline_median_mb_per_s"] = statistics.median(reference[case["name"]])
        print(
            f"  {case['name']}: {case['median_mb_per_s']:.0f} MB/s "
            f"(baseline {case.get('baseline_median_mb_per_s', 0):.0f})",
            flush=True,
        )
    return report


def measure_startup(log_dir: Path) -> dict[str, Any]:
    """Median wall time of ``kheops-async --version`` and ``--help`` (installed script)."""
    script = console_script()
    startup: dict[str, Any] = {"script": str(script)}
    print(f"start-up of {script} ...", flush=True)
    for option in ("--version", "--help"):
        if not script.exists():
            startup[option] = {"error": "not installed"}
            continue
        try:
            runs = time_console_script(option, STARTUP_RUNS, log_dir / f"startup{option}.log")
        except RuntimeError as exc:
            startup[option] = {"error": str(exc)}
            continue
        startup[option] = {"median_s": statistics.median(runs), "runs_s": runs}
        print(f"  {option}: {startup[option]['median_s']:.3f} s", flush=True)
    return startup


def measure_stack_import(log_dir: Path) -> dict[str, Any]:
    """What importing the design card's packages adds to an interpreter's start."""
    print(f"importing the stack ({', '.join(STACK_MODULES)}) ...", flush=True)
    try:
        figures: dict[str, Any] = time_stack_import(STACK_RUNS, log_dir / "stack-import.log")
    except RuntimeError as exc:
        return {"error": str(exc)}
    print(
        f"  the plain loop's imports {figures['pass_s']:.3f} s, with the stack "
        f"{figures['import_s']:.3f} s: the stack adds {figures['stack_s']:.3f} s "
        f"({figures['fastest_stack_s']:.3f} s between the fastest runs)",
        flush=True,
    )
    return figures


TOUCH_MB = 40
TOUCH_RUNS = 5
_TOUCH_SCRIPT = (
    "import time; t = time.perf_counter(); b = b'\\x01' * ({mb} << 20); "
    "print((time.perf_counter() - t) * 1000)"
)


def measure_memory_touch() -> float:
    """Median ms for a new process to write :data:`TOUCH_MB` MB of fresh memory.

    Labels the machine's phase: on the VM of ``RESULTS.md`` this took 20 ms in fast
    phases and up to 57 ms in slow ones, where first touches of memory (a Python
    process's heap, a file's new page-cache pages) cost the Python tools, which touch
    more of it, more than curl.
    """
    times = []
    for _ in range(TOUCH_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", _TOUCH_SCRIPT.format(mb=TOUCH_MB)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        times.append(float(out.strip()))
    return statistics.median(times)


def check_disk(path: Path, group: DataGroup) -> None:
    shape = group.shape
    if group.name != "S4":
        return
    payload = shape.s4_instances * shape.s4_pixel_bytes + shape.s4_single_pixel_bytes
    needed = 2 * payload + 2_000_000_000  # Orthanc's copy + one tool's output + margin
    free = shutil.disk_usage(path).free
    print(f"disk: {free / 1e9:.1f} GB free under {path}, S4 needs about {needed / 1e9:.1f} GB")
    if free < needed:
        raise SystemExit(f"not enough disk space under {path} for S4")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="e.g. S1,S3")
    parser.add_argument("--runs", type=int, help="runs per tool (default 3, quick 1)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"N for kheops-async -j and xargs -P (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--sweep", help="-j values to sweep on S2/S3 (default 1,2,4,8,16; quick 1,4), or 'none'"
    )
    parser.add_argument("--quick", action="store_true", help="small data: a < 2 min smoke run")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="S3 one-way delay (20)")
    parser.add_argument("--parser-runs", type=int, help="bench_parser.py runs (5, quick 3)")
    parser.add_argument("--no-parser", action="store_true", help="skip bench_parser.py")
    parser.add_argument(
        "--parser-baseline",
        default=PARSER_BASELINE,
        metavar="REV",
        help=f"commit whose parser is 'today' (default {PARSER_BASELINE[:7]})",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per tool run")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    parser.add_argument(
        "--tmp",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the temporary Orthanc and outputs go",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="only re-render its markdown"
    )
    args = parser.parse_args()
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    args.runs = args.runs or (1 if args.quick else 3)
    args.parser_runs = args.parser_runs or (3 if args.quick else 5)
    sweep = args.sweep or ("1,4" if args.quick else "1,2,4,8,16")
    args.sweep = [] if sweep == "none" else [int(v) for v in sweep.split(",")]
    return args


def run_groups(
    bench: Bench, groups: list[DataGroup], report: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Load each data group into its own Orthanc and measure its cases; the upload times."""
    uploads: dict[str, dict[str, float]] = {}
    for group in groups:
        check_disk(bench.args.tmp, group)
        orthanc_dir = bench.workdir / f"orthanc-{group.name}"
        with running_orthanc(orthanc_dir) as server:
            report["orthanc"] = orthanc_versions(server)
            print(f"loading data group {group.name} into Orthanc ...", flush=True)
            loaded = load_group(server, group)
            print(
                f"  {loaded.instances} instances uploaded in {loaded.upload_seconds:.1f} s",
                flush=True,
            )
            uploads[group.name] = {
                "instances": loaded.instances,
                "seconds": loaded.upload_seconds,
            }
            for name in group.cases:
                run_loaded_case(bench, server, loaded.case(name))
        bench.graveyard.set_aside(orthanc_dir)
    return uploads


def run_loaded_case(bench: Bench, server: OrthancServer, case: Case) -> None:
    """Measure ``case`` on ``server``: straight, or through the latency proxy."""
    if not case.latency:
        bench.run_case(case, server.dicomweb_url, {})
        return
    log = bench.logs / "proxy.log"
    with latency_proxy(server.port, bench.args.delay_ms, log) as port:
        url = f"http://127.0.0.1:{port}/dicom-web"
        extra = {"round_trip": probe_round_trip(url)}
        print(f"  proxy round trip: {extra['round_trip']}", flush=True)
        bench.run_case(case, url, extra)


def main() -> None:
    args = parse_args()
    if args.render is not None:
        report = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(render_markdown(report))
        print(f"wrote {args.render.with_suffix('.md')}")
        return
    for binary in ("curl", "xargs"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} is not installed")
    if _version("dicomweb-client") == "not installed":
        raise SystemExit("pip install 'dicomweb-client==0.61.2' (the bench extra) first")
    groups = groups_for(args.scenarios, quick=args.quick)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="kheops-bench-", dir=args.tmp))
    started = time.monotonic()
    library = snapshot_library(workdir)
    report: dict[str, Any] = {
        "machine": machine_description(),
        "library": library,
        "settings": {
            "scenarios": args.scenarios,
            "runs": args.runs,
            "concurrency": args.concurrency,
            "sweep": args.sweep,
            "quick": args.quick,
            "delay_ms_each_way": args.delay_ms,
        },
        "kheops_async_command": " ".join(kheops_async_command()),
    }
    bench = Bench(args, workdir)
    try:
        creation_us, waited_s = settled_creation_cost_us(workdir, bench.graveyard)
        report["machine"]["creation_us"] = creation_us
        report["machine"]["creation_wait_s"] = waited_s
        report["machine"]["touch_ms_start"] = measure_memory_touch()
        report["startup"] = measure_startup(bench.logs)
        report["stack_import"] = measure_stack_import(bench.logs)
        parser = None
        if not args.no_parser:
            trees = parser_trees(workdir, args.parser_baseline)
            parser = run_parser_bench(
                trees, args.parser_runs, args.out, bench.logs / "parser.log", args.parser_baseline
            )
            report["parser"] = parser
        report["uploads"] = run_groups(bench, groups, report)
        report["cases"] = bench.cases
        report["targets"] = evaluate_targets(bench.cases, parser, report["startup"])
        report["loadavg_at_end"] = list(os.getloadavg())
        report["touch_ms_end"] = measure_memory_touch()
        report["total_seconds"] = time.monotonic() - started
        report["runs"] = [asdict(r) for r in bench.runs]
        report["sweep_runs"] = [asdict(r) for r in bench.sweep_runs]
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        markdown = render_markdown(report)
        (args.out / "results.md").write_text(markdown)
        print()
        print(markdown)
        print(f"total {report['total_seconds']:.0f} s; results in {args.out}")
    finally:
        if args.keep_temp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
