"""Client behaviours Orthanc cannot show, against the Kheops-like fake server (real HTTP)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from fakeserver import (
    FakeArchive,
    FakeDicomWebServer,
    Framing,
    TruncateAfter,
    make_tree_archive,
)

from kheops_async import (
    AuthenticationError,
    DicomWebClient,
    OffsetIgnoredError,
    PermissionDeniedError,
    TruncatedBodyError,
)

pytestmark = pytest.mark.anyio

TOKEN = "kheops-Secret-Token-42"
STUDIES = [f"1.2.826.0.1.{n}" for n in range(1, 8)]


def build_archive() -> FakeArchive:
    return make_tree_archive(
        STUDIES, series_per_study=2, instances_per_series=3, size=512, size_step=37, patients=3
    )


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return build_archive()


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN, forbidden_albums={"secret-album"}) as srv:
        yield srv


def raw_get(url: str, params: dict[str, object]) -> httpx.Response:
    """A plain synchronous request, to see exactly what the server sends."""
    return httpx.get(url, params=params, auth=(".", TOKEN))  # type: ignore[arg-type]


def client(server: FakeDicomWebServer, **kwargs: object) -> DicomWebClient:
    options: dict[str, object] = {"token": TOKEN}
    options.update(kwargs)
    return DicomWebClient(server.base_url, **options)  # type: ignore[arg-type]


async def test_204_and_x_total_count(server: FakeDicomWebServer) -> None:
    async with client(server) as c:
        empty = await c.search_studies({"PatientID": "nobody"})
        full = await c.search_studies()
    assert empty.records == []
    assert empty.total_count == 0
    assert full.total_count == len(STUDIES)
    statuses = [r.status for r in server.requests]
    assert 204 in statuses


@pytest.mark.parametrize("page_size", [2, 3, 1000])
async def test_server_cap_is_paged_through_with_both_warning_forms(
    archive: FakeArchive, page_size: int
) -> None:
    with FakeDicomWebServer(archive, token=TOKEN, max_results=3) as srv:
        async with client(srv, page_size=page_size) as c:
            studies = await c.search_studies()
            series = await c.search_series(study_uid=STUDIES[0])
        raw = raw_get(f"{srv.base_url}/studies", {"limit": 1000})
    assert {r.study_uid for r in studies.records} == set(STUDIES)
    assert len(studies.records) == len(STUDIES)
    assert not studies.truncated
    assert len(series.records) == 2
    # What the client had to read: Kheops's study-level value begins with "Warning: ".
    assert raw.headers["Warning"].startswith("Warning: 299")


async def test_unrequested_truncation_is_flagged_and_logged(
    archive: FakeArchive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kheops_async")
    with FakeDicomWebServer(archive, token=TOKEN, max_results=3) as srv:
        async with client(srv, page_size=None) as c:
            result = await c.search_studies()
    assert len(result.records) == 3
    assert result.truncated
    assert result.warning is not None and "4 more results" in result.warning
    assert any(
        "incomplete" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


async def test_offset_ignored_is_an_error_not_a_loop(archive: FakeArchive) -> None:
    with FakeDicomWebServer(archive, token=TOKEN, ignore_offset=True) as srv:
        async with client(srv, page_size=2) as c:
            with pytest.raises(OffsetIgnoredError):
                await c.search_studies()
        assert len(srv.requests) == 2


async def test_bearer_basic_and_link_auth(server: FakeDicomWebServer) -> None:
    async with client(server) as bearer:
        assert len(await bearer.search_studies()) == len(STUDIES)
    async with client(server, basic_token=True) as basic:
        assert len(await basic.search_studies()) == len(STUDIES)
    async with DicomWebClient(server.link_url(TOKEN)) as link:
        assert len(await link.search_studies()) == len(STUDIES)
    auths = [r.authorization or "" for r in server.requests]
    assert auths[0] == f"Bearer {TOKEN}"
    assert auths[1].startswith("Basic ")
    assert auths[2] == f"Bearer {TOKEN}"


async def test_401_and_403_carry_no_token(server: FakeDicomWebServer) -> None:
    async with DicomWebClient(server.base_url) as anonymous:
        with pytest.raises(AuthenticationError) as no_token:
            await anonymous.search_studies()
    assert server.requests[-1].authorization is None
    async with client(server, token="wrong-token-value") as wrong:
        with pytest.raises(AuthenticationError) as bad:
            await wrong.search_studies()
    async with client(server, album="secret-album") as c:
        with pytest.raises(PermissionDeniedError) as forbidden:
            await c.search_studies()
    for caught in (no_token, bad, forbidden):
        assert TOKEN not in str(caught.value) and "wrong-token-value" not in str(caught.value)
    assert no_token.value.status_code == 401 and forbidden.value.status_code == 403
    assert "token" in str(bad.value)
    assert server.requests[-1].param("album") == "secret-album"


@pytest.mark.parametrize(
    "framing",
    [
        Framing(framing="eof"),
        Framing(framing="chunked", chunk_size=7),
        Framing(framing="length", quote_boundary=True),
        Framing(framing="chunked", preamble=b"preamble text\r\n", epilogue=b"\r\nbye\r\n"),
    ],
    ids=["eof", "chunked-tiny", "length-quoted", "preamble-epilogue"],
)
async def test_retrieve_framings(
    server: FakeDicomWebServer, archive: FakeArchive, framing: Framing
) -> None:
    study = STUDIES[1]
    series = f"{study}.1"
    server.add_fault(f"/series/{series}", framing)
    async with client(server) as c:
        async with c.retrieve_series(study, series) as parts:
            bodies = [(part.header("X-Part-Index"), await part.read()) async for part in parts]
    expected = [i.data for i in archive.instances(study, series)]
    assert [b for _, b in bodies] == expected
    assert [i for i, _ in bodies] == [str(n) for n in range(len(expected))]
    accept = server.requests[-1].accept
    assert accept == 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def test_truncated_body_raises(server: FakeDicomWebServer) -> None:
    study = STUDIES[2]
    server.add_fault(f"/series/{study}.2", TruncateAfter(900))

    async def read_all() -> None:
        async with client(server) as c, c.retrieve_series(study, f"{study}.2") as parts:
            async for part in parts:
                await part.read()

    with pytest.raises(TruncatedBodyError):
        await read_all()


async def test_explicit_transfer_syntax(server: FakeDicomWebServer) -> None:
    async with client(server) as c:
        async with c.retrieve_series(
            STUDIES[0], f"{STUDIES[0]}.1", transfer_syntax="1.2.840.10008.1.2.1"
        ) as parts:
            assert len([p async for p in parts]) == 3
    assert server.requests[-1].accept.endswith("transfer-syntax=1.2.840.10008.1.2.1")
