"""Mirroring at archive scale (issue 10): the cost of a sync with nothing new, and --workers.

Usage::

    python benchmarks/bench_mirror.py [--runs 3] [--tmp DIR] [--json PATH] [--quick]
                                      [--parts sync,workers]

Two Orthanc servers on loopback (the Debian packages, as in ``run_all.py``), loaded with
``run_all.py``'s data groups: **T**, 50 studies x 10 series x 100 tiny instances (50,000
instances of about 1.4 KB), and **S2**, 50 studies x 4 series x 20 instances of 50-100
KB (4,000 instances, 300 MB). Every measured command is the installed ``kheops-async``
script, run under ``spawn_measured.py`` (wall time, and user + sys CPU of the command
and every process it reaped: the workers of ``--workers`` included). Orthanc's own CPU
is read from ``/proc/<pid>/stat`` around each run, to show how the 2 cores of this
machine are shared between the client and the server.

- **sync**: T is mirrored once (``download studies``), then ``sync`` with nothing new
  is run ``--runs`` times. Target (issue 10): at most 10 s for 50,000 instances. One more
  sync at ``-vvv`` counts its HTTP requests by kind: a sync with nothing new must make
  no WADO-RS request and one study query per ``--page-size`` studies.
- **workers**: a fresh ``download studies`` of T and of S2 with ``--workers 1`` and
  ``--workers 2`` (``-j 8`` each), interleaved, ``--runs`` times each; the destination
  is emptied before each run.

Medians are printed as a Markdown table (and every run to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from datasets import groups_for, load_group  # noqa: E402
from discard import Graveyard  # noqa: E402

from kheops_async.demo.orthanc import OrthancServer, running_orthanc  # noqa: E402

SYNC_TARGET_SECONDS = 10.0
"""Issue 10: a sync with nothing new of 50,000 instances already mirrored."""
SPAWN = HERE / "spawn_measured.py"
REQUEST_LINE = re.compile(r"HTTP Request: GET (\S+)")


def kheops_async() -> str:
    return str(Path(sys.executable).parent / "kheops-async")


def orthanc_cpu_seconds(server: OrthancServer) -> float:
    """User + system CPU seconds Orthanc has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(argv: list[str], log: Path, server: OrthancServer) -> dict[str, Any]:
    """Run ``argv`` under spawn_measured.py; its figures, and Orthanc's CPU meanwhile."""
    result = log.with_suffix(".json")
    before = orthanc_cpu_seconds(server)
    with log.open("w") as out:
        code = subprocess.call(
            [sys.executable, "-I", "-S", str(SPAWN), str(result), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    figures: dict[str, Any] = json.loads(result.read_text())
    figures["orthanc_cpu_s"] = orthanc_cpu_seconds(server) - before
    figures["cpu_s"] = figures["user_s"] + figures["sys_s"]
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited with {code}: see {log}")
    return figures


def download_argv(url: str, dest: Path, *extra: str) -> list[str]:
    return [
        kheops_async(),
        "download",
        "studies",
        "--url",
        url,
        "--out-dir",
        str(dest),
        "-q",
        "-j",
        "8",
        *extra,
    ]


def sync_argv(url: str, dest: Path, *extra: str) -> list[str]:
    return [kheops_async(), "sync", "--url", url, "--out-dir", str(dest), "-q", *extra]


def count_requests(log: Path) -> Counter[str]:
    """The requests of a ``-vvv`` run, by kind: study/series/instance queries, retrieves."""
    kinds: Counter[str] = Counter()
    for match in REQUEST_LINE.finditer(log.read_text()):
        path = match.group(1).split("?", 1)[0].rstrip("/")
        if path.endswith("/studies"):
            kinds["QIDO studies"] += 1
        elif path.endswith("/series"):
            kinds["QIDO series"] += 1
        elif path.endswith("/instances"):
            kinds["QIDO instances"] += 1
        else:
            kinds["WADO-RS"] += 1
    return kinds


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_sync(
    server: OrthancServer, instances: int, work: Path, runs: int, graveyard: Graveyard
) -> dict[str, Any]:
    dest = work / "sync-tree"
    logs = work / "logs"
    first = measured(download_argv(server.dicomweb_url, dest), logs / "sync-first.log", server)
    results = [
        measured(sync_argv(server.dicomweb_url, dest), logs / f"sync-{n}.log", server)
        for n in range(runs)
    ]
    verbose_log = logs / "sync-vvv.log"
    subprocess.run(
        [*sync_argv(server.dicomweb_url, dest)[:-1], "-vvv"],
        stdout=verbose_log.open("w"),
        stderr=subprocess.STDOUT,
        check=True,
    )
    requests = count_requests(verbose_log)
    graveyard.set_aside(dest)
    return {
        "instances": instances,
        "first_download": first,
        "runs": results,
        "wall_s": median(results, "wall_s"),
        "cpu_s": median(results, "cpu_s"),
        "orthanc_cpu_s": median(results, "orthanc_cpu_s"),
        "max_rss_mb": median(results, "max_rss_kb") / 1024,
        "requests": dict(requests),
        "target_s": SYNC_TARGET_SECONDS,
        "met": median(results, "wall_s") <= SYNC_TARGET_SECONDS and not requests["WADO-RS"],
    }


def bench_workers(
    server: OrthancServer,
    name: str,
    instances: int,
    work: Path,
    runs: int,
    graveyard: Graveyard,
) -> dict[str, Any]:
    logs = work / "logs"
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for run in range(runs):
        for workers in (1, 2):
            dest = work / f"{name}-w{workers}"
            graveyard.set_aside(dest)
            argv = download_argv(server.dicomweb_url, dest, "--workers", str(workers))
            log = logs / f"{name}-w{workers}-{run}.log"
            results[workers].append(measured(argv, log, server))
            graveyard.set_aside(dest)
    summary: dict[str, Any] = {"instances": instances}
    for workers, measured_runs in results.items():
        summary[f"workers_{workers}"] = {
            "runs": measured_runs,
            "wall_s": median(measured_runs, "wall_s"),
            "cpu_s": median(measured_runs, "cpu_s"),
            "orthanc_cpu_s": median(measured_runs, "orthanc_cpu_s"),
            "max_rss_mb": median(measured_runs, "max_rss_kb") / 1024,
        }
    return summary


def render(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']}", ""]
    sync = report.get("sync")
    if sync:
        requests = ", ".join(f"{k} {v}" for k, v in sorted(sync["requests"].items()))
        lines += [
            "| sync with nothing new | instances | wall s | CPU s | Orthanc CPU s | peak RSS MB "
            "| requests (-vvv run) | target | |",
            "|---|---:|---:|---:|---:|---:|---|---:|---|",
            f"| T | {sync['instances']} | {sync['wall_s']:.2f} | {sync['cpu_s']:.2f} | "
            f"{sync['orthanc_cpu_s']:.2f} | {sync['max_rss_mb']:.0f} | {requests} | "
            f"<= {sync['target_s']:.0f} s | {'met' if sync['met'] else 'MISSED'} |",
            "",
            f"(first download of T: {sync['first_download']['wall_s']:.1f} s wall, "
            f"{sync['first_download']['cpu_s']:.1f} s CPU)",
            "",
        ]
    workers = report.get("workers")
    if workers:
        lines += [
            "| fresh download | instances | --workers | wall s | client CPU s | Orthanc CPU s "
            "| client CPU ms / instance | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, data in workers.items():
            one = data["workers_1"]["wall_s"]
            for count in (1, 2):
                row = data[f"workers_{count}"]
                lines.append(
                    f"| {name} | {data['instances']} | {count} | {row['wall_s']:.2f} | "
                    f"{row['cpu_s']:.2f} | {row['orthanc_cpu_s']:.2f} | "
                    f"{1000 * row['cpu_s'] / data['instances']:.3f} | {one / row['wall_s']:.2f}x |"
                )
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="small archives (a smoke run)")
    parser.add_argument("--parts", default="sync,workers")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir=args.tmp))
    graveyard = Graveyard(work / "graveyard")
    (work / "logs").mkdir()
    report: dict[str, Any] = {"machine": machine(), "runs": args.runs, "workers": {}}
    started = time.monotonic()
    try:
        for group in groups_for(["T", "S2"], quick=args.quick):
            with running_orthanc(work / f"orthanc-{group.name}") as server:
                print(f"loading {group.name} into Orthanc ...", flush=True)
                loaded = load_group(server, group)
                print(
                    f"  {loaded.instances} instances in {loaded.upload_seconds:.0f} s", flush=True
                )
                if group.name == "T" and "sync" in parts:
                    report["sync"] = bench_sync(
                        server, loaded.instances, work, args.runs, graveyard
                    )
                if "workers" in parts:
                    report["workers"][group.name] = bench_workers(
                        server, group.name, loaded.instances, work, args.runs, graveyard
                    )
            graveyard.set_aside(work / f"orthanc-{group.name}")
    finally:
        report["seconds"] = time.monotonic() - started
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=1))
        print(render(report))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
