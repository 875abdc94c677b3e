"""The HTTP layer alone: how fast one WADO-RS series can be read, bytes thrown away.

Usage::

    python benchmarks/bench_http.py [--runs 5] [--instances 200] [--pixel-bytes 524288]
                                    [--url URL] [--json PATH]

Starts its own Orthanc (or uses ``--url``, a DICOMweb root holding one study), loads
one series (S1's shape: 200 instances of 512 KiB pixels), then reads that study's
WADO-RS answer with each reader below, counting the bytes and discarding them:

- ``curl``: the reference of ``run_all.py`` (``-o /dev/null``);
- ``socket loop``: a plain blocking ``recv`` loop in Python (one GET, 1 MiB reads): what
  Python itself reaches on this machine with the same system calls;
- ``httpx default``: ``httpx.AsyncClient`` with its own transport (64 KiB reads);
- ``KheopsTransport``: the same client over :class:`kheops_async.transport.KheopsTransport`
  (reads of up to 1 MiB), under asyncio and trio;
- ``client + parser``: :meth:`DicomWebClient.retrieve` (the transport plus the multipart
  parser), under asyncio and trio: what the engine receives before it writes anything.

Printed: MB/s per reader (median of ``--runs``) and its ratio to curl. The gap between
``client + parser`` and the engine's figure in ``run_all.py`` is the engine's own cost
(checks, files, journal); the gap between ``socket loop`` and the httpx rows is the
HTTP stack's (h11's buffer copies, httpcore's and anyio's per-read work).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from kheops_async import DicomWebClient
from kheops_async.demo import generate_large_series, upload_instances
from kheops_async.demo.orthanc import running_orthanc
from kheops_async.transport import KheopsTransport

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
READ_SIZE = 1 << 20


def curl_read(url: str) -> int:
    """Bytes curl received for ``url`` (written to /dev/null)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-H", f"Accept: {ACCEPT}", "-o", "/dev/null", "-w",
         "%{size_download}", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout)


def socket_read(url: str) -> int:
    """One GET over a plain socket, read to the end in 1 MiB ``recv`` calls."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80)) as sock:
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: {ACCEPT}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        total = 0
        while chunk := sock.recv(READ_SIZE):
            total += len(chunk)
    return total  # headers included: a few hundred bytes


async def httpx_read(url: str, transport: httpx.AsyncBaseTransport | None) -> int:
    """Stream ``url`` with httpx (its default transport when ``transport`` is None)."""
    async with (
        httpx.AsyncClient(transport=transport, timeout=120) as http,
        http.stream("GET", url, headers={"Accept": ACCEPT}) as response,
    ):
        return sum([len(chunk) async for chunk in response.aiter_raw()])


async def client_read(base_url: str, study_uid: str) -> int:
    """The study through DicomWebClient.retrieve: transport and multipart parser."""
    total = 0
    async with DicomWebClient(base_url) as client, client.retrieve(study_uid) as parts:
        async for part in parts:
            async for chunk in part:
                total += len(chunk)
    return total


def timed(read: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    size = read()
    return time.perf_counter() - started, size


def in_loop(backend: str, make: Callable[[], Awaitable[int]]) -> Callable[[], int]:
    async def run() -> int:
        return await make()

    return lambda: anyio.run(run, backend=backend)


def measure(base_url: str, study_uid: str, runs: int) -> list[dict[str, Any]]:
    url = f"{base_url}/studies/{study_uid}"
    readers: list[tuple[str, Callable[[], int]]] = [
        ("curl", lambda: curl_read(url)),
        ("socket loop (Python recv, 1 MiB)", lambda: socket_read(url)),
    ]
    for backend in ("asyncio", "trio"):
        readers += [
            (f"httpx default ({backend})", in_loop(backend, lambda: httpx_read(url, None))),
            (
                f"KheopsTransport ({backend})",
                in_loop(backend, lambda: httpx_read(url, KheopsTransport())),
            ),
            (
                f"client + parser ({backend})",
                in_loop(backend, lambda: client_read(base_url, study_uid)),
            ),
        ]
    rows = []
    for name, read in readers:
        read()  # warm the server's cache and the imports
        results = [timed(read) for _ in range(runs)]
        wall = statistics.median(w for w, _ in results)
        rows.append({"reader": name, "wall_s": wall, "mb_per_s": results[0][1] / wall / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--pixel-bytes", type=int, default=512 * 1024)
    parser.add_argument("--url", help="a DICOMweb root holding the one study to read")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.url:
        rows = measure(args.url, first_study(args.url), args.runs)
    else:
        with running_orthanc(Path(tempfile.mkdtemp(prefix="bench-http-"))) as server:
            series = generate_large_series(instances=args.instances, pixel_bytes=args.pixel_bytes)
            upload_instances(server, (instance.data for instance in series))
            url = server.dicomweb_url
            rows = measure(url, first_study(url), args.runs)
    curl = rows[0]["mb_per_s"]
    print(f"one study read {args.runs} times per reader (median), bytes discarded:")
    print("| reader | wall s | MB/s | x curl |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['reader']} | {row['wall_s']:.3f} | {row['mb_per_s']:.0f} "
            f"| {row['mb_per_s'] / curl:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def first_study(base_url: str) -> str:
    studies = httpx.get(f"{base_url}/studies", headers={"Accept": "application/dicom+json"})
    return str(studies.json()[0]["0020000D"]["Value"][0])


if __name__ == "__main__":
    sys.exit(main())
