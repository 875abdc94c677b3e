"""One series over ``https://`` through a ``CONNECT`` proxy: our tunnel against httpcore's.

Usage::

    python benchmarks/bench_proxy.py [--pairs 8] [--quick] [--tmp DIR]

An Orthanc on loopback (the Debian packages, as in ``run_all.py``) is loaded with
``run_all.py``'s data group **S1** (one series of 200 instances of 512 KiB; ``--quick``:
its small shape). The tests' :class:`~proxies.TlsFront` terminates TLS before it with a
``trustme`` certificate, and their :class:`~proxies.LoopbackProxy` is the ``CONNECT``
proxy; both are Python relays sharing the machine's cores with the client and Orthanc,
so the figures compare the two clients, not the wire.

Each pair runs :func:`kheops_async.download` of the series twice in this process, in
alternating order: once as kheops-async runs it (``TunnelConnectionPool``: the
``CONNECT`` tunnel, then :mod:`kheops_async.http11`'s connection inside it), once with
the transport's pool for the proxy replaced by ``httpcore.AsyncHTTPProxy`` (httpcore's
tunnel and connections, over the same network backend), as kheops-async did before
6aad003. Outputs are set aside between runs (``discard.py``). Prints the medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpcore
import trustme

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from datasets import groups_for, load_group  # noqa: E402
from discard import Graveyard  # noqa: E402
from proxies import LoopbackProxy, https_front  # noqa: E402

from kheops_async import DicomWebClient, Targets, download  # noqa: E402
from kheops_async.demo.orthanc import running_orthanc  # noqa: E402
from kheops_async.http11 import TunnelConnectionPool  # noqa: E402
from kheops_async.transport import KheopsTransport  # noqa: E402

MakePool = Callable[[KheopsTransport, object], httpcore.AsyncConnectionPool]
OURS: MakePool = KheopsTransport._make_pool  # type: ignore[assignment]


def httpcore_tunnel(transport: KheopsTransport, key: object) -> httpcore.AsyncConnectionPool:
    """The pool kheops-async makes, with httpcore's tunnel instead of ours for a proxy."""
    pool = OURS(transport, key)
    if not isinstance(pool, TunnelConnectionPool):
        return pool
    proxy = pool._route.origin
    limits = transport._limits
    return httpcore.AsyncHTTPProxy(
        proxy_url=httpcore.URL(scheme=proxy.scheme, host=proxy.host, port=proxy.port, target=b"/"),
        ssl_context=transport.ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=transport._backend,
    )


VARIANTS: dict[str, MakePool] = {"kheops-async tunnel": OURS, "httpcore tunnel": httpcore_tunnel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the small shape of S1")
    parser.add_argument("--tmp", type=Path, default=None, help="where Orthanc and outputs go")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kheops-bench-proxy-", dir=args.tmp))
    graveyard = Graveyard(workdir / "graveyard")
    (group,) = groups_for(["S1"], quick=args.quick)
    authority = trustme.CA()
    ca_path = workdir / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_path))
    try:
        with running_orthanc(workdir / "orthanc") as server:
            case = load_group(server, group).case("S1")
            with https_front(server.port, authority) as front, LoopbackProxy() as proxy:
                url = f"https://127.0.0.1:{front.port}/dicom-web"

                async def once(name: str) -> float:
                    KheopsTransport._make_pool = VARIANTS[name]  # type: ignore[method-assign]
                    out = workdir / "out"
                    async with DicomWebClient(
                        url, concurrency=8, verify=str(ca_path), proxy=proxy.url, trust_env=False
                    ) as client:
                        started = time.perf_counter()
                        report = await download(client, Targets(studies=case.studies), out)
                        seconds = time.perf_counter() - started
                    if not report.ok or report.written != case.instances:
                        raise SystemExit(f"{name}: {report.summary()}")
                    graveyard.set_aside(out)
                    return seconds

                times: dict[str, list[float]] = {name: [] for name in VARIANTS}
                for pair in range(args.pairs):
                    order = list(VARIANTS) if pair % 2 == 0 else list(reversed(VARIANTS))
                    for name in order:
                        times[name].append(anyio.run(once, name))
        KheopsTransport._make_pool = OURS  # type: ignore[method-assign]
        megabytes = case.payload_bytes / 1e6
        print(f"S1 over https through a CONNECT proxy, {args.pairs} interleaved pairs:")
        print("| client | median s | MB/s | runs |")
        print("|---|---:|---:|---|")
        for name, runs in times.items():
            median = statistics.median(runs)
            listed = " ".join(f"{s:.3f}" for s in runs)
            print(f"| {name} | {median:.3f} | {megabytes / median:.1f} | {listed} |")
    finally:
        graveyard.empty()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
