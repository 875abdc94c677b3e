"""Default values shared by the library and the command line, in a module that imports nothing.

The command line shows them in ``--help``; keeping them here means ``--help`` does not
import the modules that use them (httpx, anyio, tenacity, pydicom).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LOG_INTERVAL",
    "DEFAULT_PAGE_SIZE",
]

DEFAULT_CONCURRENCY = 8
"""Requests in flight by default, chosen by measurement (benchmarks/RESULTS.md, sweep):
on loopback -j 2 to 16 are alike (CPU-bound); through 40 ms of latency -j 8 is 10-17 %
faster than -j 4, and -j 16 adds 7-11 % for a larger load on the server."""

DEFAULT_PAGE_SIZE = 200
"""Records asked per QIDO request when paging: Azure refuses a limit above 200 (400),
GCP allows 5000, Kheops and Orthanc have no cap; paging gets the rest."""

DEFAULT_ATTEMPTS = 5
"""Attempts per request (the first try and four retries)."""

DEFAULT_LOG_INTERVAL = 10.0
"""Seconds between two plain progress lines off a terminal (a log stays readable)."""
