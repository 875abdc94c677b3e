"""Connections opened ahead of need: taken by the next request, capped, expired, checked.

Against the fake server on loopback, which (like Orthanc with ``framing="eof"``) closes
each connection after a multipart answer, against Orthanc itself, and through a
forwarding proxy, on both backends.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpcore
import pytest
import trustme
from click.testing import CliRunner
from clienv import CLEAN_ENV
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, make_tree_archive
from proxies import LoopbackProxy, https_front
from treecheck import assert_tree_holds

import kheops_async.connect_ahead as connect_ahead
from kheops_async import DicomWebClient, Targets, download
from kheops_async.cli import main
from kheops_async.connect_ahead import ConnectionsAhead, default_count
from kheops_async.demo import OrthancDataset
from kheops_async.transport import KheopsTransport, LargeReadBackend

pytestmark = pytest.mark.anyio

STUDIES = ["1.2.826.0.9.1", "1.2.826.0.9.2"]


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=3, instances_per_series=2, size=4096)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    """Closes each connection after a retrieve, which takes 50 ms (a slow link)."""
    with FakeDicomWebServer(archive, framing="eof") as srv:
        srv.add_fault("/series/", Delay(0.05), times=1000)
        yield srv


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per :meth:`ConnectionsAhead.take`: whether it handed a connection over."""
    calls: list[bool] = []
    original = ConnectionsAhead.take

    async def take(self: ConnectionsAhead, host: str, port: int) -> Any:
        stream = await original(self, host, port)
        calls.append(stream is not None)
        return stream

    monkeypatch.setattr(ConnectionsAhead, "take", take)
    return calls


def _ahead(count: int) -> ConnectionsAhead:
    return ConnectionsAhead(LargeReadBackend().connect_plain, count)


@asynccontextmanager
async def _running_ahead(count: int) -> AsyncIterator[ConnectionsAhead]:
    """Connections opened ahead as a download's transport runs them."""
    transport = KheopsTransport()
    async with transport.connections_ahead(count) as ahead:
        yield ahead
    await transport.aclose()


async def _settle(ahead: ConnectionsAhead, opened: int) -> None:
    """Wait (bounded) until ``opened`` connections were opened ahead."""
    with anyio.fail_after(5):
        while ahead.opened < opened:
            await anyio.sleep(0.01)


async def _request(stream: httpcore.AsyncNetworkStream) -> bytes:
    await stream.write(b"GET /api/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return await stream.read(65536)


# -- the pool of connections opened ahead ------------------------------------------------


async def test_a_connection_opened_ahead_is_taken_and_works(server: FakeDicomWebServer) -> None:
    async with _running_ahead(2) as ahead:
        ahead.replace("127.0.0.1", server.port, 5)
        await _settle(ahead, 1)
        stream = await ahead.take("127.0.0.1", server.port)
        assert stream is not None
        assert (await _request(stream)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
        assert await ahead.take("127.0.0.1", server.port) is None  # only one was asked for


async def test_at_most_count_connections_wait(server: FakeDicomWebServer) -> None:
    async with _running_ahead(2) as ahead:
        for _ in range(5):
            ahead.replace("127.0.0.1", server.port, 5)
        await _settle(ahead, 2)
        await anyio.sleep(0.1)
        assert ahead.opened == 2


async def test_a_connection_the_server_closed_is_not_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connect_ahead, "MAX_IDLE", 5.0)  # refused as closed, not as old
    with FakeDicomWebServer(FakeArchive(), keepalive_timeout=0.05) as server:
        async with _running_ahead(1) as ahead:
            ahead.replace("127.0.0.1", server.port, 5)
            await _settle(ahead, 1)
            await anyio.sleep(0.3)  # the server gave up waiting for a request
            assert await ahead.take("127.0.0.1", server.port) is None


async def test_a_connection_waits_at_most_max_idle(
    server: FakeDicomWebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connect_ahead, "MAX_IDLE", 0.1)
    async with _running_ahead(1) as ahead:
        ahead.replace("127.0.0.1", server.port, 5)
        await _settle(ahead, 1)
        await anyio.sleep(0.3)
        assert ahead.waiting == 0  # closed by the sweep, not only refused when taken
        assert await ahead.take("127.0.0.1", server.port) is None


async def test_a_failed_connection_ahead_is_left_to_the_request(free_tcp_port: int) -> None:
    async with _running_ahead(1) as ahead:
        ahead.replace("127.0.0.1", free_tcp_port, 5)  # refused
        await anyio.sleep(0.2)
        assert ahead.opened == 0
        assert await ahead.take("127.0.0.1", free_tcp_port) is None
        with socket.create_server(("127.0.0.1", free_tcp_port)):  # the server is back
            ahead.replace("127.0.0.1", free_tcp_port, 5)  # the failure freed its place
            await _settle(ahead, 1)
            stream = await ahead.take("127.0.0.1", free_tcp_port)
            assert stream is not None
            await stream.aclose()


async def test_connections_are_kept_per_origin(archive: FakeArchive) -> None:
    with (
        FakeDicomWebServer(archive, framing="eof") as first,
        FakeDicomWebServer(archive, framing="eof") as second,
    ):
        async with _running_ahead(1) as ahead:
            ahead.replace("127.0.0.1", first.port, 5)
            ahead.replace("127.0.0.1", second.port, 5)
            await _settle(ahead, 2)
            for server in (first, second):
                stream = await ahead.take("127.0.0.1", server.port)
                assert stream is not None
                assert (await _request(stream)).startswith(b"HTTP/1.1 200")
                await stream.aclose()
                assert len({r.connection for r in server.requests}) == 1


# -- the transport and the engine ----------------------------------------------------------


class Interrupted(BaseException):
    """Not an Exception, as KeyboardInterrupt is not."""


@pytest.mark.parametrize("error", [ValueError, Interrupted])
async def test_the_block_raises_its_own_error_and_closes_what_waits(
    server: FakeDicomWebServer, error: type[BaseException]
) -> None:
    transport = KheopsTransport()
    opened: list[ConnectionsAhead] = []

    async def fail_once_opened() -> None:
        async with transport.connections_ahead(2) as ahead:
            opened.append(ahead)
            ahead.replace("127.0.0.1", server.port, 5)
            ahead.replace("127.0.0.1", server.port, 5)
            await _settle(ahead, 2)
            raise error("the block's own error")

    with pytest.raises(error, match="the block's own"):  # itself, not an exception group
        await fail_once_opened()
    assert opened[0].waiting == 0
    await transport.aclose()


async def test_a_block_cancelled_from_outside_ends_and_closes_what_waits(
    server: FakeDicomWebServer,
) -> None:
    transport = KheopsTransport()
    opened: list[ConnectionsAhead] = []
    after_the_block: list[bool] = []
    with anyio.move_on_after(0.5) as scope:
        async with transport.connections_ahead(1) as ahead:
            opened.append(ahead)
            ahead.replace("127.0.0.1", server.port, 5)
            await anyio.sleep(10)
        after_the_block.append(True)
    assert scope.cancelled_caught and not after_the_block
    assert opened[0].opened == 1 and opened[0].waiting == 0
    await transport.aclose()


async def test_a_block_inside_another_uses_its_connections(server: FakeDicomWebServer) -> None:
    transport = KheopsTransport()
    async with transport.connections_ahead(2) as outer:
        async with transport.connections_ahead(2) as inner:
            assert inner is outer
        outer.replace("127.0.0.1", server.port, 5)  # the outer block still opens them
        await _settle(outer, 1)
    await transport.aclose()


async def test_a_download_from_a_closing_server_takes_connections_opened_ahead(
    server: FakeDicomWebServer, archive: FakeArchive, taken: list[bool], tmp_path: Path
) -> None:
    async with DicomWebClient(server.base_url, concurrency=2) as client:
        report = await download(client, Targets(studies=STUDIES), tmp_path, connections_ahead=2)
    assert report.ok and report.written == len(archive)
    assert sum(taken) >= 3  # 6 series over 2 slots: the 4 after the first 2 find one ready
    retrieves = [r for r in server.requests if "/series/" in r.path]
    assert len({r.connection for r in retrieves}) == len(retrieves)  # each on its own


async def test_none_are_opened_when_asked_for_none(
    server: FakeDicomWebServer, taken: list[bool], tmp_path: Path
) -> None:
    async with DicomWebClient(server.base_url, concurrency=2) as client:
        report = await download(client, Targets(studies=STUDIES), tmp_path, connections_ahead=0)
    assert report.ok and taken == []


async def test_connections_ahead_go_to_the_proxy(
    server: FakeDicomWebServer, archive: FakeArchive, taken: list[bool], tmp_path: Path
) -> None:
    with LoopbackProxy() as proxy:
        async with DicomWebClient(server.base_url, concurrency=2, proxy=proxy.url) as client:
            report = await download(client, Targets(studies=STUDIES), tmp_path, connections_ahead=2)
        assert report.ok and report.written == len(archive)
        assert sum(taken) >= 3
        assert all(c.target.startswith(server.origin) for c in proxy.connections)


async def test_orthanc_retrieves_take_connections_opened_ahead(
    orthanc_dataset: OrthancDataset, taken: list[bool], tmp_path: Path
) -> None:
    async with DicomWebClient(orthanc_dataset.server.dicomweb_url, concurrency=2) as client:
        report = await download(client, Targets(query={}), tmp_path, connections_ahead=2)
    assert report.ok
    assert_tree_holds(tmp_path, orthanc_dataset.instances)
    assert any(taken)  # Orthanc closed the connections of earlier retrieves


@pytest.mark.parametrize(
    ("option", "expect_taken"), [((), True), (("--connections-ahead", "0"), False)]
)
def test_the_command_line_option(
    server: FakeDicomWebServer,
    taken: list[bool],
    tmp_path: Path,
    option: tuple[str, ...],
    expect_taken: bool,
) -> None:
    args = ["download", "studies", "--url", server.base_url, "-o", str(tmp_path), "-j", "2"]
    args += [a for study in STUDIES for a in ("--study-uid", study)]
    result = CliRunner().invoke(main, [*args, *option], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    assert any(taken) is expect_taken


def test_the_command_line_refuses_a_negative_count(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "download",
            "studies",
            "--url",
            "http://127.0.0.1:9/api",
            "-o",
            str(tmp_path),
            "--study-uid",
            STUDIES[0],
            "--connections-ahead",
            "-1",
        ],
        env=CLEAN_ENV,
    )
    assert result.exit_code == 2 and "--connections-ahead" in result.output


async def test_asking_after_the_end_does_nothing() -> None:
    ahead = _ahead(1)
    await ahead.aclose()
    ahead.replace("127.0.0.1", 9, 5)  # a request that began before the end
    assert ahead.opened == 0 and ahead.waiting == 0


def test_half_the_concurrency_at_most_eight_by_default() -> None:
    assert [default_count(j) for j in (1, 2, 3, 8, 16, 64)] == [1, 1, 2, 4, 8, 8]


# -- TLS and CONNECT tunnels on connections opened ahead ------------------------------------


@pytest.fixture
def https_base_url(server: FakeDicomWebServer, authority: trustme.CA) -> Iterator[str]:
    with https_front(server.port, authority) as front:
        yield f"https://127.0.0.1:{front.port}/api"


@pytest.mark.parametrize("tunnel", [False, True])
async def test_tls_runs_on_connections_opened_ahead(
    https_base_url: str,
    authority: trustme.CA,
    archive: FakeArchive,
    taken: list[bool],
    tmp_path: Path,
    tunnel: bool,
) -> None:
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with LoopbackProxy() as proxy:
        async with DicomWebClient(
            https_base_url,
            concurrency=2,
            verify=str(bundle),
            proxy=proxy.url if tunnel else None,
        ) as client:
            report = await download(
                client, Targets(studies=STUDIES), tmp_path / "out", connections_ahead=2
            )
        assert report.ok and report.written == len(archive)
        assert sum(taken) >= 3
        assert bool(proxy.connections) is tunnel
        assert all(c.method == "CONNECT" for c in proxy.connections)
