"""Run every benchmark: our own Orthanc, generated data, curl / dicomweb-client / kheops-async.

Usage::

    python benchmarks/run_all.py [--scenarios S1,S2,S3,S4] [--runs 3] [--concurrency N]
                                 [--sweep 1,2,4,8,16|none] [--quick]

For each data group it starts an Orthanc (``kheops_async.demo``) in a temporary directory,
generates and uploads the data (one instance at a time), then runs each tool as a separate
subprocess, ``--runs`` times, interleaved (curl, curl xargs -P N, dicomweb-client,
kheops-async, then again). The output directory is emptied before every run; nothing else
is dropped, and an untimed curl pass first warms the page cache for all tools alike.
S3 goes through ``latency_proxy.py`` (20 ms each way). S2 and S3 also sweep kheops-async's
``-j`` (and curl ``xargs -P`` at the same values). The parser micro-benchmark
(``bench_parser.py``) runs first.

Writes ``benchmarks/out/results.json`` and ``benchmarks/out/results.md`` (``--out``).
``--quick`` shrinks the data (and defaults to one run, sweep 1,4): a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
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
from benchmarks.tools import (  # noqa: E402
    TOOL_ENVIRONMENT,
    RunResult,
    Tool,
    clear_directory,
    curl_parallel,
    curl_sequential,
    dicomweb_client,
    kheops_async,
    kheops_async_command,
    run_measured,
)
from kheops_async import DEFAULT_CONCURRENCY  # noqa: E402
from kheops_async.demo import OrthancServer, running_orthanc  # noqa: E402

BENCH_DIR = REPO / "benchmarks"
MB = 1e6
RSS_TARGET_MB = 150.0
PARSER_TARGET_MB_S = 1000.0

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

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "commit_subject": git("log", "-1", "--format=%s"),
        "uncommitted_library_changes": git("status", "--porcelain", "--", "kheops_async"),
    }


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

    def measure(self, tool: Tool, case: Case, url: str, run: int) -> RunResult:
        out_dir = self.workdir / "out" / tool.kind
        clear_directory(out_dir)
        argv = tool.argv(case, url, out_dir, self.workdir)
        log = self.logs / f"{case.name}-{tool.kind}-{tool.concurrency}-run{run}.log"
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
            engine_mb_per_s=_engine_rate(log) if tool.kind == "ka" else 0.0,
        )
        mbps = case.payload_bytes / MB / max(wall, 1e-9)
        flag = "" if ok else f"  FAILED: {problem} (log {log})"
        print(
            f"  {case.name} run {run} {tool.name:<22} {wall:7.2f} s {mbps:8.1f} MB/s "
            f"cpu {user + system:6.2f} s rss {rss:7.1f} MB{flag}",
            flush=True,
        )
        clear_directory(out_dir)
        return result

    def run_case(self, case: Case, url: str, extra: dict[str, Any]) -> None:
        concurrency = self.args.concurrency
        tools = [curl_sequential()]
        if len(case.series) > 1:
            tools.append(curl_parallel(concurrency))
        tools += [dicomweb_client(), kheops_async(concurrency)]
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
        results: list[RunResult] = []
        for run in range(1, self.args.runs + 1):
            for tool in tools:
                results.append(self.measure(tool, case, url, run))
        self.runs += results
        self.cases[case.name] = {
            "description": case.description,
            "instances": case.instances,
            "series": len(case.series),
            "studies": len(case.studies),
            "payload_bytes": case.payload_bytes,
            "latency": case.latency,
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
            results: list[RunResult] = []
            for run in range(1, self.args.runs + 1):
                for tool in tools:
                    results.append(self.measure(tool, case, url, run))
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


def _engine_rate(log: Path) -> float:
    """The MB/s kheops-async reports itself ("... MB in 1.2s (87.6 MB/s)"), or 0."""
    found = re.findall(r"MB in [\d.]+s \(([\d.]+) MB/s\)", log.read_text(errors="replace"))
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
        "user_s": statistics.median(r.user_s for r in good),
        "sys_s": statistics.median(r.sys_s for r in good),
        "peak_rss_mb": max(r.max_rss_mb for r in results),
        "median_rss_mb": statistics.median(r.max_rss_mb for r in results),
        "others_cpu_s": statistics.median(r.others_cpu_s for r in good),
        "loadavg_1m": statistics.median(r.loadavg_1m for r in results),
        "engine_mb_per_s": statistics.median(r.engine_mb_per_s for r in good),
    }


# -- targets --------------------------------------------------------------------------------


def _tool(case: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    for name, summary in case["tools"].items():
        if name.startswith(prefix):
            return dict(summary)
    return None


def evaluate_targets(cases: dict[str, Any], parser: dict[str, Any] | None) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def ratio(case: str, versus: str, goal: float, label: str) -> None:
        if case not in cases:
            return
        ka, other = _tool(cases[case], "kheops-async"), _tool(cases[case], versus)
        if ka is None or other is None:
            return
        value = ka["mb_per_s"] / other["mb_per_s"]
        ok = value >= goal and ka["verified_runs"] == ka["runs"]
        targets.append({"case": case, "target": label, "value": f"{value:.2f}x", "met": ok})

    ratio("S1", "curl", 0.7, ">= 0.7 x curl (sequential, one request) throughput")
    ratio("S2", "dicomweb-client", 3.0, ">= 3 x dicomweb-client throughput")
    ratio("S3", "dicomweb-client", 10.0, ">= 10 x dicomweb-client throughput")
    ratio("S3", "curl xargs", 0.8, ">= 0.8 x curl xargs -P N (same N) throughput")
    for case in ("S4a", "S4b"):
        if case in cases:
            ka = _tool(cases[case], "kheops-async")
            if ka is not None:
                rss = ka["peak_rss_mb"]
                what = cases[case]["description"]
                targets.append(
                    {
                        "case": case,
                        "target": f"peak RSS <= {RSS_TARGET_MB:.0f} MB ({what})",
                        "value": f"{rss:.0f} MB",
                        "met": rss <= RSS_TARGET_MB and ka["verified_runs"] == ka["runs"],
                    }
                )
    if parser is not None:
        for case in parser["cases"]:
            if case["chunk_bytes"] == 64 * 1024:
                value = case["median_mb_per_s"]
                targets.append(
                    {
                        "case": "parser",
                        "target": f">= 1 GB/s on 64 KB chunks: {case['name']}",
                        "value": f"{value:.0f} MB/s",
                        "met": value >= PARSER_TARGET_MB_S,
                    }
                )
    return targets


# -- output ---------------------------------------------------------------------------------


def _num(value: float) -> str:
    """Three significant figures or so: 1234, 123, 12.3, 1.23."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# kheops-async benchmarks",
        "",
        f"- Date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs; "
        f"RAM {machine['ram_gb']} GB; Linux {machine['kernel']}",
        f"- {machine['python']}; httpx {machine['httpx']}; anyio {machine['anyio']}; "
        f"pydicom {machine['pydicom']}; dicomweb-client {machine['dicomweb-client']} "
        f"(requests {machine['requests']}); {machine['curl']}",
        f"- Orthanc {report.get('orthanc', {}).get('orthanc', '?')}, DICOMweb plugin "
        f"{report.get('orthanc', {}).get('dicomweb_plugin', '?')} (own process, loopback)",
        f"- kheops-async run as: `{report['kheops_async_command']}`; library at commit "
        f"{report['library']['commit']} ({report['library']['commit_subject']})"
        + (", with uncommitted changes" if report["library"]["uncommitted_library_changes"] else "")
        + " (a copy taken at the start, so edits during the run do not mix versions)",
        f"- Runs per figure: {report['settings']['runs']} (median wall; peak RSS = max over "
        f"runs); concurrency N = {report['settings']['concurrency']}; "
        f"quick = {report['settings']['quick']}",
        "- Load average (1/5/15 min) at start: "
        + " / ".join(f"{v:.2f}" for v in machine["loadavg_at_start"])
        + f"; at end: {' / '.join(f'{v:.2f}' for v in report['loadavg_at_end'])}",
        "",
        "MB = 10^6 bytes of DICOM Part-10 payload (the same numerator for every tool). "
        "Wall time includes process start-up. CPU = user + sys of the tool's process tree "
        '(wait4). "Others CPU" = CPU the rest of the machine used during the run (Orthanc, '
        'the proxy, anything else running). "Engine MB/s" = kheops-async\'s own figure '
        "(bytes written / seconds from the start of download(), i.e. without interpreter "
        "start-up, imports and client set-up).",
        "",
        "| case | tool | wall s | MB/s | inst/s | CPU s | peak RSS MB | others CPU s | runs ok "
        "| engine MB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, case in report["cases"].items():
        for tool, s in case["tools"].items():
            lines.append(
                f"| {name} | {tool} | {s['wall_s']:.2f} | {s['mb_per_s']:.1f} "
                f"| {_num(s['instances_per_s'])} | {s['cpu_s']:.2f} | {s['peak_rss_mb']:.0f} "
                f"| {s['others_cpu_s']:.2f} | {s['verified_runs']}/{s['runs']} "
                f"| {_num(s['engine_mb_per_s']) if s['engine_mb_per_s'] else ''} |"
            )
    lines += ["", "Cases:", ""]
    for name, case in report["cases"].items():
        extra = ""
        if "round_trip" in case:
            rt = case["round_trip"]
            extra = (
                f"; measured QIDO through the proxy: {rt['kept_alive_ms']:.0f} ms kept-alive, "
                f"{rt['fresh_connection_ms']:.0f} ms on a fresh connection"
            )
        lines.append(
            f"- {name}: {case['description']} ({case['studies']} studies, {case['series']} "
            f"series, {case['instances']} instances, {case['payload_bytes'] / MB:.1f} MB){extra}"
        )
    lines += ["", "## Ratios (kheops-async throughput / other tool's, same run)", ""]
    lines += [
        "| case | vs curl | vs curl xargs -P N | vs dicomweb-client |",
        "|---|---:|---:|---:|",
    ]
    for name, case in report["cases"].items():
        ka = _tool(case, "kheops-async")
        if ka is None:
            continue
        cells = []
        for prefix in ("curl", "curl xargs", "dicomweb-client"):
            other = _tool(case, prefix) if prefix != "curl" else case["tools"].get("curl")
            cells.append(f"{ka['mb_per_s'] / other['mb_per_s']:.2f}" if other else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| case | target | value | met |", "|---|---|---:|---|"]
    for target in report["targets"]:
        met = "met" if target["met"] else "**missed**"
        lines.append(f"| {target['case']} | {target['target']} | {target['value']} | {met} |")
    sweeps = [(n, c["sweep"]) for n, c in report["cases"].items() if "sweep" in c]
    if sweeps:
        lines += [
            "",
            "## Concurrency sweep (kheops-async -j N vs curl xargs -P N)",
            "",
            "| case | N | kheops-async wall s | MB/s | CPU s | peak RSS MB | curl -P N wall s "
            "| MB/s | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, points in sweeps:
            for p in points:
                ka, curl = p["kheops_async"], p["curl_xargs"]
                lines.append(
                    f"| {name} | {p['jobs']} | {ka['wall_s']:.2f} | {ka['mb_per_s']:.1f} "
                    f"| {ka['cpu_s']:.2f} | {ka['peak_rss_mb']:.0f} | {curl['wall_s']:.2f} "
                    f"| {curl['mb_per_s']:.1f} | {p['ratio_vs_curl']:.2f} |"
                )
    parser = report.get("parser")
    if parser:
        lines += [
            "",
            f"## Multipart parser (bench_parser.py, median of {parser['runs']} runs)",
            "",
            "| case | body MB | chunk KiB | median MB/s | min | max |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in parser["cases"]:
            lines.append(
                f"| {c['name']} | {c['body_bytes'] / MB:.0f} | {c['chunk_bytes'] // 1024} "
                f"| {c['median_mb_per_s']:.0f} | {min(c['runs_mb_per_s']):.0f} "
                f"| {max(c['runs_mb_per_s']):.0f} |"
            )
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------


def run_parser_bench(out_dir: Path, runs: int, log: Path) -> dict[str, Any] | None:
    target = out_dir / "parser.json"
    print("parser micro-benchmark ...", flush=True)
    with log.open("ab") as sink:
        code = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "bench_parser.py"),
                "--json",
                str(target),
                "--runs",
                str(runs),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code != 0 or not target.exists():
        print(f"  bench_parser.py failed (exit {code}, see {log})", flush=True)
        return None
    data: dict[str, Any] = json.loads(target.read_text())
    for case in data["cases"]:
        print(f"  {case['name']}: {case['median_mb_per_s']:.0f} MB/s", flush=True)
    return data


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
        parser = None
        if not args.no_parser:
            parser = run_parser_bench(args.out, args.parser_runs, bench.logs / "parser.log")
            report["parser"] = parser
        for group in groups:
            check_disk(args.tmp, group)
            orthanc_dir = workdir / f"orthanc-{group.name}"
            with running_orthanc(orthanc_dir) as server:
                report["orthanc"] = orthanc_versions(server)
                print(f"loading data group {group.name} into Orthanc ...", flush=True)
                loaded = load_group(server, group)
                print(f"  uploaded in {loaded.upload_seconds:.1f} s", flush=True)
                for name in group.cases:
                    case = loaded.case(name)
                    if case.latency:
                        with latency_proxy(
                            server.port, args.delay_ms, bench.logs / "proxy.log"
                        ) as port:
                            url = f"http://127.0.0.1:{port}/dicom-web"
                            extra = {"round_trip": probe_round_trip(url)}
                            print(f"  proxy round trip: {extra['round_trip']}", flush=True)
                            bench.run_case(case, url, extra)
                    else:
                        bench.run_case(case, server.dicomweb_url, {})
            shutil.rmtree(orthanc_dir, ignore_errors=True)
        report["cases"] = bench.cases
        report["targets"] = evaluate_targets(bench.cases, parser)
        report["loadavg_at_end"] = list(os.getloadavg())
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
