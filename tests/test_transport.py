"""The HTTP transport: large reads, proxies (CONNECT and forwarding), TLS, on both backends.

Everything speaks real HTTP on loopback: the fake Kheops server, behind
:class:`~proxies.LoopbackProxy` and, for ``https://``, :class:`~proxies.TlsFront` with
a ``trustme`` certificate.
"""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httpx
import pytest
import trustme
from click.testing import CliRunner
from fakeserver import FakeArchive, FakeDicomWebServer, make_tree_archive
from proxies import LoopbackProxy, https_front

from kheops_async import AuthenticationError, DicomWebClient, Targets, TransportError, download
from kheops_async.cli import main
from kheops_async.http11 import (
    ForwardConnection,
    ForwardConnectionPool,
    TunnelConnection,
    TunnelConnectionPool,
)
from kheops_async.transport import (
    READ_SIZE,
    KheopsTransport,
    LargeReadStream,
    bypasses_proxy,
    proxy_for_url,
)

pytestmark = pytest.mark.anyio

TOKEN = "transport-Secret-Token-7"
PROXY_PASSWORD = "proxy-Secret-Pass-9"
STUDIES = ["1.2.826.0.7.1", "1.2.826.0.7.2"]
PROXY_VARIABLES = [
    f(name)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for f in (str, str.upper)
]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no proxy variable set (the CI machine may have some)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=2, instances_per_series=3, size=2048)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


@pytest.fixture
def proxy() -> Iterator[LoopbackProxy]:
    with LoopbackProxy() as running:
        yield running


@pytest.fixture
def https_server(server: FakeDicomWebServer, authority: trustme.CA) -> Iterator[str]:
    """The fake server behind TLS: its ``https://127.0.0.1:PORT/api`` base URL."""
    with https_front(server.port, authority) as front:
        yield f"https://127.0.0.1:{front.port}/api"


@pytest.fixture
def ca_bundle(authority: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return path


async def study_count(base_url: str, **options: Any) -> int:
    async with DicomWebClient(base_url, token=TOKEN, **options) as client:
        return len((await client.search_studies()).records)


# -- large reads ------------------------------------------------------------------------


class RecordingStream(httpcore.AsyncNetworkStream):
    """An inner stream that records the sizes asked of it."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.asked.append(max_bytes)
        return b"x"


async def test_reads_ask_the_socket_for_large_blocks() -> None:
    inner = RecordingStream()
    stream = LargeReadStream(inner, READ_SIZE)
    await stream.read(65536)
    await stream.read(4 * READ_SIZE)
    assert inner.asked == [READ_SIZE, 4 * READ_SIZE]


async def test_a_whole_download_over_the_transport(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    async with DicomWebClient(server.base_url, token=TOKEN) as client:
        report = await download(client, Targets(studies=STUDIES), tmp_path)
    assert report.ok and report.written == len(archive)


async def test_connections_are_kept_alive(server: FakeDicomWebServer) -> None:
    async with DicomWebClient(server.base_url, token=TOKEN) as client:
        for _ in range(3):
            await client.search_studies()
    assert len(server.requests) == 3
    assert len({r.connection for r in server.requests}) == 1


# -- no SSL context for http:// -----------------------------------------------------------


async def test_no_ssl_context_for_an_http_server(
    server: FakeDicomWebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> ssl.SSLContext:
        raise AssertionError("an SSL context was made for an http:// server")

    monkeypatch.setattr(httpx, "create_ssl_context", refuse)
    monkeypatch.setattr(ssl, "create_default_context", refuse)
    assert await study_count(server.base_url) == len(STUDIES)


# -- TLS -------------------------------------------------------------------------------------


async def test_tls_is_verified_by_default(https_server: str) -> None:
    with pytest.raises(TransportError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await study_count(https_server, retry=_no_retry())


async def test_tls_with_a_ca_bundle(https_server: str, ca_bundle: Path) -> None:
    assert await study_count(https_server, verify=str(ca_bundle)) == len(STUDIES)


# -- proxies -----------------------------------------------------------------------------


async def test_http_server_through_a_forwarding_proxy(
    server: FakeDicomWebServer, proxy: LoopbackProxy
) -> None:
    assert await study_count(server.base_url, proxy=proxy.url) == len(STUDIES)
    assert proxy.connections
    first = proxy.connections[0]
    assert first.method == "GET" and first.target.startswith(server.origin + "/api/studies")


async def _three_requests_on_one_connection(
    transport: KheopsTransport, base_url: str, pool_type: type, connection_type: type
) -> None:
    """Three study queries through ``transport``: one pool of ``pool_type``, holding one
    idle ``connection_type`` connection that carried all three."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, headers=headers) as client:
        for _ in range(3):
            response = await client.get(f"{base_url}/studies")
            assert response.status_code == 200 and len(response.json()) == len(STUDIES)
        pools = list(transport._pools.values())
        assert len(pools) == 1 and isinstance(pools[0], pool_type)
        (connection,) = pools[0].connections
        assert isinstance(connection, connection_type) and connection.is_idle()
        assert "Request Count: 3" in connection.info()


async def test_forwarded_requests_are_kept_alive_over_our_own_connections(
    server: FakeDicomWebServer, proxy: LoopbackProxy
) -> None:
    transport = KheopsTransport(proxy=proxy.url, trust_env=False)
    await _three_requests_on_one_connection(
        transport, server.base_url, ForwardConnectionPool, ForwardConnection
    )
    (first,) = proxy.connections  # one connection to the proxy, three requests
    assert first.method == "GET" and first.target.startswith(server.origin + "/api/studies")


async def test_an_ipv6_server_is_named_in_brackets_in_a_forwarded_request() -> None:
    with LoopbackProxy(credentials=("hospital", PROXY_PASSWORD)) as guarded:
        transport = KheopsTransport(proxy=guarded.url, trust_env=False)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://[::1]:8042/studies?limit=1")
    assert response.status_code == 407  # the proxy's answer, before any upstream
    (forwarded,) = guarded.connections
    assert (forwarded.method, forwarded.target) == ("GET", "http://[::1]:8042/studies?limit=1")
    assert forwarded.host == "[::1]:8042"


async def test_https_server_through_a_connect_tunnel(
    https_server: str, ca_bundle: Path, proxy: LoopbackProxy, tmp_path: Path
) -> None:
    async with DicomWebClient(
        https_server, token=TOKEN, verify=str(ca_bundle), proxy=proxy.url
    ) as client:
        report = await download(client, Targets(studies=STUDIES[:1]), tmp_path)
    assert report.ok and report.written == 6
    port = https_server.split(":")[2].split("/")[0]
    assert proxy.connections and all(
        c.method == "CONNECT" and c.target == f"127.0.0.1:{port}" for c in proxy.connections
    )


async def test_a_connect_tunnel_is_kept_alive_over_our_own_connections(
    https_server: str, ca_bundle: Path, proxy: LoopbackProxy
) -> None:
    transport = KheopsTransport(verify=str(ca_bundle), proxy=proxy.url, trust_env=False)
    await _three_requests_on_one_connection(
        transport, https_server, TunnelConnectionPool, TunnelConnection
    )
    assert [c.method for c in proxy.connections] == ["CONNECT"]  # one tunnel, three requests


async def test_tunnel_credentials_are_sent_and_a_refusal_is_a_proxy_error(
    https_server: str, ca_bundle: Path
) -> None:
    with LoopbackProxy(credentials=("hospital", PROXY_PASSWORD)) as guarded:
        good = f"http://hospital:{PROXY_PASSWORD}@127.0.0.1:{guarded.port}"
        assert await study_count(https_server, verify=str(ca_bundle), proxy=good) == len(STUDIES)
        assert guarded.connections[0].method == "CONNECT"
        assert guarded.connections[0].proxy_authorization
        wrong = f"http://hospital:wrong-{PROXY_PASSWORD}@127.0.0.1:{guarded.port}"
        transport = KheopsTransport(verify=str(ca_bundle), proxy=wrong, trust_env=False)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(
                httpx.ProxyError, match="407 Proxy Authentication Required"
            ) as refused:
                await client.get(f"{https_server}/studies")
            assert not transport._pools[next(iter(transport._pools))].connections  # slot freed
            assert PROXY_PASSWORD not in repr(transport._pools)
    assert PROXY_PASSWORD not in str(refused.value)


async def test_a_tunnel_closed_while_it_opens_answers_then_closes(
    https_server: str, ca_bundle: Path
) -> None:
    """As a direct connection does, not left open in a pool that forgot it."""
    with LoopbackProxy(connect_delay=0.5) as slow:
        transport = KheopsTransport(verify=str(ca_bundle), proxy=slow.url, trust_env=False)
        client = httpx.AsyncClient(
            transport=transport, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        answers: list[httpx.Response] = []

        async def fetch() -> None:
            answers.append(await client.get(f"{https_server}/studies"))

        async with anyio.create_task_group() as group:
            group.start_soon(fetch)
            with anyio.fail_after(5):
                while not slow.connections:
                    await anyio.sleep(0.01)
            (pool,) = transport._pools.values()
            (connection,) = pool.connections
            await client.aclose()  # while the proxy has not answered the CONNECT yet
        assert answers[0].status_code == 200
        assert connection.is_closed()
        with anyio.fail_after(5):
            while not slow.tunnels_ended:  # our side of the tunnel was closed
                await anyio.sleep(0.01)


async def test_an_ipv6_server_is_named_in_brackets_in_the_connect(ca_bundle: Path) -> None:
    with LoopbackProxy(credentials=("hospital", PROXY_PASSWORD)) as guarded:
        transport = KheopsTransport(verify=str(ca_bundle), proxy=guarded.url, trust_env=False)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ProxyError, match="407"):
                await client.get("https://[::1]:8443/studies")
    (connect,) = guarded.connections
    assert (connect.method, connect.target, connect.host) == ("CONNECT", "[::1]:8443", "[::1]:8443")


async def test_https_server_through_an_https_proxy(
    https_server: str,
    ca_bundle: Path,
    authority: trustme.CA,
    proxy: LoopbackProxy,
    anyio_backend: str,
) -> None:
    """TLS with the proxy, and TLS with the server inside it (both checked).

    asyncio can start TLS inside TLS from Python 3.11 only: before, a clear error.
    """
    with https_front(proxy.port, authority) as tls_proxy:
        proxy_url = f"https://127.0.0.1:{tls_proxy.port}"
        options: dict[str, Any] = {"verify": str(ca_bundle), "proxy": proxy_url}
        if anyio_backend == "asyncio" and sys.version_info < (3, 11):
            with pytest.raises(TransportError, match="TLS inside TLS"):
                await study_count(https_server, trust_env=False, **options)
        else:
            assert await study_count(https_server, trust_env=False, **options) == len(STUDIES)
    assert proxy.connections and {c.method for c in proxy.connections} == {"CONNECT"}


@contextlib.contextmanager
def _loop_errors_recorded(anyio_backend: str, handled: list[dict[str, Any]]) -> Iterator[None]:
    """Within the block, what reaches asyncio's exception handler goes to ``handled``.

    The loop's previous handler (the anyio test runner's) is put back after the block.
    """
    if anyio_backend != "asyncio":
        yield
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: handled.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


async def test_an_untrusted_server_behind_an_https_proxy_is_a_certificate_error(
    server: FakeDicomWebServer,
    ca_bundle: Path,
    authority: trustme.CA,
    proxy: LoopbackProxy,
    anyio_backend: str,
) -> None:
    """The proxy's certificate is trusted, the server's is not: the error says so.

    Under CPython 3.11.0-3.11.7 and 3.12.0-3.12.1 (gh-113214) the inner TLS layer's
    failure raised a TypeError in asyncio instead, which came out as "needs Python 3.11"
    and as errors handed to the loop's exception handler; before 3.11 asyncio cannot
    start TLS inside TLS at all.
    """
    handled: list[dict[str, Any]] = []
    with _loop_errors_recorded(anyio_backend, handled):
        stranger = trustme.CA()  # issued the server's certificate; the bundle trusts only ours
        with (
            https_front(server.port, stranger) as origin,
            https_front(proxy.port, authority) as front,
        ):
            options: dict[str, Any] = {"verify": str(ca_bundle), "retry": _no_retry()}
            options |= {"proxy": f"https://127.0.0.1:{front.port}", "trust_env": False}
            if anyio_backend == "asyncio" and sys.version_info < (3, 11):
                expected = "TLS inside TLS"
            else:
                expected = r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"
            with anyio.fail_after(10), pytest.raises(TransportError, match=expected):
                await study_count(f"https://127.0.0.1:{origin.port}/api", **options)
            await anyio.sleep(0.05)  # what the loop still had to do with the failed layers
    assert [c.method for c in proxy.connections] == ["CONNECT"]
    assert handled == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tls_inside_tls_the_loop_cannot_do_is_a_connect_error(
    https_server: str,
    ca_bundle: Path,
    authority: trustme.CA,
    proxy: LoopbackProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As under Python 3.10, whose asyncio cannot start TLS on a TLS transport."""
    transport_class = asyncio.sslproto._SSLProtocolTransport
    monkeypatch.delattr(transport_class, "_start_tls_compatible", raising=False)  # 3.11+
    with https_front(proxy.port, authority) as tls_proxy:
        proxy_url = f"https://127.0.0.1:{tls_proxy.port}"
        with pytest.raises(TransportError, match="TLS inside TLS"):
            await study_count(https_server, verify=str(ca_bundle), proxy=proxy_url, trust_env=False)


async def test_proxy_from_the_environment_and_no_proxy(
    server: FakeDicomWebServer, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert await study_count(server.base_url) == len(STUDIES)
    through_proxy = len(proxy.connections)
    assert through_proxy >= 1
    monkeypatch.setenv("no_proxy", "localhost, 127.0.0.0/8")
    assert await study_count(server.base_url) == len(STUDIES)
    assert len(proxy.connections) == through_proxy  # direct this time
    monkeypatch.delenv("no_proxy")
    assert await study_count(server.base_url, trust_env=False) == len(STUDIES)
    assert len(proxy.connections) == through_proxy


async def test_proxy_credentials_are_sent_and_never_shown(
    server: FakeDicomWebServer, caplog: pytest.LogCaptureFixture
) -> None:
    with LoopbackProxy(credentials=("hospital", PROXY_PASSWORD)) as guarded:
        url = f"http://hospital:{PROXY_PASSWORD}@127.0.0.1:{guarded.port}"
        assert await study_count(server.base_url, proxy=url) == len(STUDIES)
        assert guarded.connections[0].proxy_authorization
        wrong = f"http://hospital:wrong-{PROXY_PASSWORD}@127.0.0.1:{guarded.port}"
        with pytest.raises(AuthenticationError, match=r"407 .* the proxy wants") as refused:
            await study_count(server.base_url, proxy=wrong, retry=_no_retry())
    assert PROXY_PASSWORD not in str(refused.value)
    assert PROXY_PASSWORD not in caplog.text


def test_cli_through_a_proxy_with_a_ca_bundle(
    https_server: str, ca_bundle: Path, proxy: LoopbackProxy, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "list",
            "studies",
            "--url",
            https_server,
            "--ca-bundle",
            str(ca_bundle),
            "--proxy",
            proxy.url,
            "--out-dir",
            str(tmp_path),
            "--format",
            "csv",
        ],
        env={"KHEOPS_TOKEN": TOKEN},
    )
    assert result.exit_code == 0, result.output
    assert all(uid in result.output for uid in STUDIES)
    assert proxy.connections and proxy.connections[0].method == "CONNECT"


def test_cli_refuses_a_malformed_proxy(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "list",
            "studies",
            "--url",
            "http://127.0.0.1:9/api",
            "--proxy",
            f"ftp://x:{PROXY_PASSWORD}@h",
        ],
        env={"KHEOPS_TOKEN": TOKEN},
    )
    assert result.exit_code == 2
    assert "invalid --proxy" in result.output and PROXY_PASSWORD not in result.output
    assert "Traceback" not in result.output


# -- the proxy decision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("pacs.example.org", 443, "*", True),
        ("pacs.example.org", 443, "example.org", True),
        ("pacs.example.org", 443, ".example.org", True),
        ("pacs.example.org", 443, "*.example.org", True),
        ("example.org", 443, ".example.org", True),
        ("badexample.org", 443, "example.org", False),
        ("pacs.example.org", 8042, "pacs.example.org:8043", False),
        ("pacs.example.org", 8042, "pacs.example.org:8042", True),
        ("10.1.2.3", 80, "intranet, 10.0.0.0/8", True),
        ("10.1.2.3", 80, "10.1.2.4", False),
        ("::1", 8042, "::1", True),
        ("::1", 8042, "[::1]:8042", True),
        ("example.org", 443, "", False),
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypassed


def test_which_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    https = httpx.URL("https://pacs.example.org/api")
    http = httpx.URL("http://orthanc.local:8042/dicom-web")
    assert proxy_for_url(https, None, trust_env=True) is None
    monkeypatch.setenv("https_proxy", "proxy.example.org:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.example.org:8080")
    assert proxy_for_url(https, None, trust_env=True) == "http://proxy.example.org:3128"
    assert proxy_for_url(http, None, trust_env=True) == "http://all.example.org:8080"
    assert proxy_for_url(https, None, trust_env=False) is None
    assert proxy_for_url(https, "http://explicit:1", trust_env=True) == "http://explicit:1"
    monkeypatch.setenv("NO_PROXY", "example.org")
    assert proxy_for_url(https, None, trust_env=True) is None
    assert proxy_for_url(http, None, trust_env=True) == "http://all.example.org:8080"


async def test_an_unsupported_proxy_scheme_is_refused() -> None:
    transport = KheopsTransport(proxy="socks5://127.0.0.1:1080")
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.UnsupportedProtocol, match="socks5"):
            await http.get("http://127.0.0.1:9/")


def _no_retry() -> Any:
    from kheops_async import RetryPolicy

    return RetryPolicy(attempts=1)


async def test_the_environment_is_read_once_per_transport(
    server: FakeDicomWebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    reads = []
    real = urllib.request.getproxies_environment

    def counted() -> dict[str, str]:
        reads.append(1)
        return real()

    monkeypatch.setattr(urllib.request, "getproxies_environment", counted)
    async with httpx.AsyncClient(transport=KheopsTransport(), trust_env=False) as client:
        for _ in range(5):
            await client.get(f"{server.base_url}/studies")  # 401: no token, still a request
    assert len(reads) == 1
