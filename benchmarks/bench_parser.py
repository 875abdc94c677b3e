"""Throughput of kheops_async.multipart.MultipartParser, in MB/s (1 MB = 10**6 bytes).

Usage: python benchmarks/bench_parser.py [--json out.json] [--runs 5]

Cases (each body is split into fixed-size chunks before timing; the timed loop only feeds
chunks and closes the parser):

* random parts, 64 KB chunks: 400 parts of 512 KiB, like a WADO-RS series retrieve.
* worst case, 64 KB chunks: parts full of CRLF and near-boundary bytes
  (``\\r\\n--`` + boundary minus its last byte), the input that makes a naive parser quadratic.
* random parts, 8 KB chunks: the first body in smaller reads.
* worst case, 8 KB chunks: the second body in smaller reads. Below ~30 KB CPython's
  ``bytes.find`` uses its simple search, which is still linear but slower on such input.

The median of the runs is reported, as a markdown table and optionally as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kheops_async.multipart import MultipartParser, PartData

BOUNDARY = b"0f9a6d1c3e5b7a8c2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7"  # 70 bytes
KIB = 1024


@dataclass
class CaseResult:
    """One benchmark case: body size, chunk size and throughput of each run."""

    name: str
    body_bytes: int
    chunk_bytes: int
    runs_mb_per_s: list[float]

    @property
    def median_mb_per_s(self) -> float:
        return statistics.median(self.runs_mb_per_s)


def build_body(part_bodies: list[bytes]) -> bytes:
    """A multipart/related body as Orthanc sends it: no preamble, three headers a part."""
    pieces: list[bytes] = []
    for body in part_bodies:
        pieces.append(
            b"--" + BOUNDARY + b"\r\n"
            b"Content-Type: application/dicom\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"MIME-Version: 1.0\r\n\r\n"
        )
        pieces.append(body)
        pieces.append(b"\r\n")
    pieces.append(b"--" + BOUNDARY + b"--\r\n")
    return b"".join(pieces)


def split(body: bytes, chunk_bytes: int) -> list[bytes]:
    return [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]


def check(chunks: list[bytes], parts: int, data_bytes: int) -> None:
    """Parse once, untimed, and verify the part count and the body byte count."""
    parser = MultipartParser(BOUNDARY)
    total = 0
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartData):
                total += len(event.data)
    parser.close()
    if parser.parts_completed != parts or total != data_bytes:
        raise SystemExit(
            f"parser mismatch: {parser.parts_completed} parts / {total} bytes, "
            f"expected {parts} / {data_bytes}"
        )


def time_case(name: str, part_bodies: list[bytes], chunk_bytes: int, runs: int) -> CaseResult:
    body = build_body(part_bodies)
    chunks = split(body, chunk_bytes)
    del body
    body_bytes = sum(map(len, chunks))
    check(chunks, len(part_bodies), sum(map(len, part_bodies)))
    results: list[float] = []
    for _ in range(runs):
        parser = MultipartParser(BOUNDARY)
        feed = parser.feed
        events = 0
        start = time.perf_counter()
        for chunk in chunks:
            events += len(feed(chunk))
        parser.close()
        elapsed = time.perf_counter() - start
        results.append(body_bytes / elapsed / 1e6)
    return CaseResult(name, body_bytes, chunk_bytes, results)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    args = parser.parse_args()

    random_part = os.urandom(512 * KIB)
    random_parts = [random_part] * 400
    near_boundary = b"\r\n" * 8 + b"\r\n--" + BOUNDARY[:-1]
    worst_part = near_boundary * (12_500_000 // len(near_boundary))
    worst_parts = [worst_part] * 8

    cases = [
        time_case("random parts, 64 KB chunks", random_parts, 64 * KIB, args.runs),
        time_case(
            "worst case (CRLF, near-boundary), 64 KB chunks", worst_parts, 64 * KIB, args.runs
        ),
        time_case("random parts, 8 KB chunks", random_parts, 8 * KIB, args.runs),
        time_case("worst case (CRLF, near-boundary), 8 KB chunks", worst_parts, 8 * KIB, args.runs),
    ]

    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"Python: {python}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"Median of {args.runs} runs, 1 MB = 10^6 bytes.\n")
    print("| case | body MB | chunk | median MB/s | min MB/s | max MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in cases:
        print(
            f"| {case.name} | {case.body_bytes / 1e6:.0f} | {case.chunk_bytes // KIB} KiB "
            f"| {case.median_mb_per_s:.0f} | {min(case.runs_mb_per_s):.0f} "
            f"| {max(case.runs_mb_per_s):.0f} |"
        )
    if args.json is not None:
        report = {
            "python": python,
            "cpu": cpu_model(),
            "runs": args.runs,
            "cases": [{**asdict(case), "median_mb_per_s": case.median_mb_per_s} for case in cases],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
