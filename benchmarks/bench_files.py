"""The floor a downloader cannot go under here: creating the files, in a plain loop.

Usage::

    python benchmarks/bench_files.py [--dir DIR] [--files 4000] [--size 76000] [--runs 3]
                                     [--threads 1,2] [--json PATH]

kheops-async writes one file per instance, as kheops-client does: a temporary file
created, written, renamed into its series directory. This script does exactly those
system calls, with no network, no parsing and no Python beyond the loop (``os.open``
with ``O_CREAT | O_EXCL``, one ``os.write``, ``os.close``, ``os.replace``; one
directory per 20 files, as in the S2 archive), in one thread and in several, on the
file system of ``--dir`` (default: the system's temporary directory, where
``run_all.py`` writes by default). It also times each call alone, so a slow file
system shows which call is slow.

Each figure is taken twice: with the previous runs' files set aside (written back,
evicted from the page cache and moved away, as ``run_all.py`` does between runs), then
with them deleted. On the 2-core VM of ``RESULTS.md`` (ext4 without a journal) the
second state makes creation quadratic: ext4 skips inodes freed in the last minutes
(``discard.py`` explains it); 4,000 creations went from 0.2 s to 0.5-2.5 s.

Printed: files per second and MB/s per thread count (median of ``--runs``), and the
per-call costs in microseconds. A benchmark case whose kheops-async time is close to
``files / (files per second)`` is bound by the file system, not by kheops-async.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from discard import Graveyard

FILES_PER_DIRECTORY = 20


def place_files(root: Path, files: int, size: int, threads: int) -> float:
    """Create, write and rename ``files`` files of ``size`` bytes; return wall seconds."""
    data = os.urandom(size)
    temp = root / "tmp"
    temp.mkdir()
    for directory in range((files + FILES_PER_DIRECTORY - 1) // FILES_PER_DIRECTORY):
        (root / f"s{directory}").mkdir()

    def work(first: int) -> None:
        for number in range(first, files, threads):
            temp_path = f"{temp}/{number}.part"
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.replace(temp_path, f"{root}/s{number // FILES_PER_DIRECTORY}/{number}.dcm")

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started


def call_costs(root: Path, count: int = 1000) -> dict[str, float]:
    """Microseconds per call of each system call of the loop, timed alone."""
    data = os.urandom(1000)
    (root / "s").mkdir()
    costs: dict[str, float] = {}

    def timed(name: str, call: Any) -> None:
        started = time.perf_counter()
        for number in range(count):
            call(number)
        costs[name] = (time.perf_counter() - started) / count * 1e6

    timed(
        "create",
        lambda n: os.close(os.open(f"{root}/{n}.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
    )

    def write(n: int) -> None:
        fd = os.open(f"{root}/{n}.part", os.O_WRONLY)
        os.write(fd, data)
        os.close(fd)

    timed("open+write+close", write)
    timed("rename", lambda n: os.replace(f"{root}/{n}.part", f"{root}/s/{n}.dcm"))
    timed("stat", lambda n: os.stat(f"{root}/s/{n}.dcm"))
    timed("unlink", lambda n: os.unlink(f"{root}/s/{n}.dcm"))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--size", type=int, default=76_000, help="bytes per file (S2's mean)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="thread counts (comma list)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, Any] = {"dir": str(args.dir), "files": args.files, "size": args.size}
    rows = []
    graveyard = Graveyard(Path(tempfile.mkdtemp(prefix="bench-files-graveyard-", dir=args.dir)))
    # Set-aside runs first: the deleted ones leave freed inodes that ext4 without a
    # journal skips for minutes (see discard.py), which is what the second state shows.
    for state in ("set aside", "deleted"):
        for threads in [int(t) for t in args.threads.split(",")]:
            walls = []
            for _ in range(args.runs):
                root = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.dir))
                try:
                    walls.append(place_files(root, args.files, args.size, threads))
                finally:
                    if state == "set aside":
                        graveyard.set_aside(root)
                    else:
                        shutil.rmtree(root, ignore_errors=True)
            wall = statistics.median(walls)
            rows.append(
                {
                    "previous runs": state,
                    "threads": threads,
                    "wall_s": wall,
                    "files_per_s": args.files / wall,
                    "mb_per_s": args.files * args.size / wall / 1e6,
                }
            )
    graveyard.empty()
    root = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.dir))
    try:
        report["call_us"] = call_costs(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["placement"] = rows
    print(f"{args.files} files of {args.size} B under {args.dir}, median of {args.runs}:")
    print("| previous runs' files | threads | wall s | files/s | MB/s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['previous runs']} | {row['threads']} | {row['wall_s']:.2f} "
            f"| {row['files_per_s']:.0f} | {row['mb_per_s']:.0f} |"
        )
    print("per call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in report["call_us"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
