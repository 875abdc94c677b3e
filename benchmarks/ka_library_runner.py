"""Stand-in for the ``kheops-async`` command while it does not exist: ``download()``.

Usage: python benchmarks/ka_library_runner.py --url URL --out-dir DIR [-j N] [STUDY_UID...]

Does what ``kheops-async download studies --url URL --out-dir DIR -j N [-x STUDY...]``
does: one :class:`~kheops_async.DicomWebClient`, one :func:`~kheops_async.download` of
the studies (every study on the server when none is given), exit status 1 if a series
failed. ``run_all.py`` uses the real command as soon
as ``kheops_async.cli`` is importable. Also handy to profile the library alone.
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
    return 0 if report.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("studies", nargs="*", help="default: every study")
    args = parser.parse_args()
    return anyio.run(run, args.url, args.out_dir, args.concurrency, args.studies)


if __name__ == "__main__":
    sys.exit(main())
