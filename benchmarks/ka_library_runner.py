"""The library alone: what ``kheops-async download studies`` does, in one ``download()``.

Usage: python benchmarks/ka_library_runner.py --url URL --out-dir DIR [-j N]
       [--backend asyncio|trio] [STUDY_UID...]

Does what ``kheops-async download studies --url URL --out-dir DIR -j N [-x STUDY...]``
does: one :class:`~kheops_async.DicomWebClient`, one :func:`~kheops_async.download` of
the studies (every study on the server when none is given), exit status 1 if a series
failed. ``run_all.py`` runs it under both anyio backends (``--backend``, default
asyncio) in every scenario, to measure the engine without the command line and to
compare trio with asyncio; it also stands in for the command when that does not work.
Also handy to profile the library alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from kheops_async import DEFAULT_CONCURRENCY, DicomWebClient, Targets, download


async def run(url: str, out_dir: Path, concurrency: int, studies: list[str]) -> int:
    async with DicomWebClient(url, concurrency=concurrency) as client:
        targets = Targets(studies=studies) if studies else Targets(query={})
        report = await download(client, targets, out_dir, concurrency=concurrency)
    print(f"kheops-async (library): {report.summary()}", file=sys.stderr)
    # The summary rounds to 0.1 s and 0.1 MB/s; run_all.py reads this line instead.
    print(f"engine: {report.bytes_written} bytes in {report.seconds:.6f} s", file=sys.stderr)
    return 0 if report.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="anyio backend"
    )
    parser.add_argument("studies", nargs="*", help="default: every study")
    args = parser.parse_args()
    return anyio.run(
        run, args.url, args.out_dir, args.concurrency, args.studies, backend=args.backend
    )


if __name__ == "__main__":
    sys.exit(main())
