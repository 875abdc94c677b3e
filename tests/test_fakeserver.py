"""Self-tests of the tests/fakeserver package: the fake Kheops must do what other tests rely on.

Plain synchronous httpx and raw sockets only, and a tiny local multipart splitter (the
project's own parser is what other tests check against this server, not the other way
round). Everything talks to 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
from fakeserver import (
    CloseAfter,
    Delay,
    FakeArchive,
    FakeDicomWebServer,
    FakeInstance,
    Framing,
    NotDicomPart,
    OmitInstances,
    ResetAfter,
    StallAfter,
    Status,
    TruncateAfter,
    make_instance,
)

TOKEN = "tok-123"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EVIL_UID = "../../evil"
STUDIES = ("1.2.3.1", "1.2.3.2")


def _series_uid(study: str, index: int) -> str:
    return f"{study}.{index}"


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    """Two studies of two series (CT then MR) of three instances, plus a hostile study."""
    archive = FakeArchive()
    for s_index, study in enumerate(STUDIES):
        for r_index, modality in enumerate(("CT", "MR")):
            series = _series_uid(study, r_index)
            for i_index in range(3):
                data = make_instance(
                    study,
                    series,
                    f"{series}.{i_index}",
                    patient_id=f"PAT{s_index}",
                    modality=modality,
                    seed=i_index,
                    size=1500,
                    series_number=r_index + 1,
                    instance_number=i_index + 1,
                )
                archive.add_part10(data)
    archive.add_raw("9.9", "9.9.1", EVIL_UID, b"<html>not dicom</html>", modality="OT")
    return archive


ServerFactory = Callable[..., FakeDicomWebServer]


@pytest.fixture
def make_server(archive: FakeArchive) -> Iterator[ServerFactory]:
    """Start servers on demand (defaults: the module archive); all closed at teardown."""
    servers: list[FakeDicomWebServer] = []

    def factory(**options: Any) -> FakeDicomWebServer:
        options.setdefault("archive", archive)
        server = FakeDicomWebServer(options.pop("archive"), **options)
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()
        assert server.errors == []


@pytest.fixture
def server(make_server: ServerFactory) -> FakeDicomWebServer:
    return make_server()


#: One TLS context for every client: building one per httpx.Client costs ~50 ms.
SSL_CONTEXT = ssl.create_default_context()


def new_client(timeout: float = 5.0) -> httpx.Client:
    """A client that ignores proxy variables, so it only ever talks to 127.0.0.1."""
    return httpx.Client(trust_env=False, timeout=timeout, verify=SSL_CONTEXT)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with new_client() as client:
        yield client


# --------------------------------------------------------------------------- helpers


@dataclass
class Part:
    headers: dict[str, str]
    data: bytes


def boundary_of(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    raise AssertionError(f"no boundary in {content_type!r}")


def split_multipart(body: bytes, content_type: str) -> tuple[list[Part], bool]:
    """Complete parts of ``body`` and whether the closing delimiter was seen."""
    dash = b"--" + boundary_of(content_type)
    position = 0 if body.startswith(dash) else body.find(b"\r\n" + dash) + 2
    assert position >= 0, "no first delimiter"
    position += len(dash)
    parts: list[Part] = []
    while True:
        if body[position : position + 2] == b"--":
            return parts, True
        assert body[position : position + 2] == b"\r\n", "bad delimiter line"
        end = body.find(b"\r\n" + dash, position + 2)
        if end < 0:
            return parts, False
        head, _, data = body[position + 2 : end].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, data))
        position = end + 2 + len(dash)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` and read until the server closes."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; ``True`` when the zero-size last chunk was present."""
    content = bytearray()
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            return bytes(content), False
        size = int(body[position:line_end], 16)
        if size == 0:
            return bytes(content), body[line_end : line_end + 4] == b"\r\n\r\n"
        content += body[line_end + 2 : line_end + 2 + size]
        position = line_end + 2 + size + 2


def get_request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def series_bytes(archive: FakeArchive, study: str, series: str) -> list[bytes]:
    return [item.data for item in archive.instances(study, series)]


def uids(answer: list[dict[str, Any]], tag: str) -> list[str]:
    return [row[tag]["Value"][0] for row in answer]


# --------------------------------------------------------------------------- data model


def test_make_instance_is_deterministic_valid_dicom() -> None:
    first = make_instance("1.2", "1.2.3", "1.2.3.4", seed=7, size=5000)
    assert first == make_instance("1.2", "1.2.3", "1.2.3.4", seed=7, size=5000)
    assert first != make_instance("1.2", "1.2.3", "1.2.3.4", seed=8, size=5000)
    ds = pydicom.dcmread(io.BytesIO(first))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "1.2",
        "1.2.3",
        "1.2.3.4",
    )
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert 5000 <= len(ds.PixelData) < 6100


def test_make_instance_accepts_hostile_uids_without_warnings() -> None:
    data = make_instance("1.2", "1.2.3", EVIL_UID, modality="MR")
    instance = FakeArchive().add_part10(data)
    assert instance.sop_uid == EVIL_UID
    assert instance.modality == "MR"


def test_archive_reads_attributes_from_part10_and_object_fields_win() -> None:
    @dataclass
    class Sample:
        study_uid: str
        series_uid: str
        sop_uid: str
        patient_id: str
        modality: str
        data: bytes

    data = make_instance("1.5", "1.5.1", "1.5.1.1", patient_id="FROM-FILE", study_date="20200304")
    archive = FakeArchive([Sample("1.5", "1.5.1", "1.5.1.1", "FROM-OBJECT", "MR", data)])
    (instance,) = archive.all_instances()
    assert instance.patient_id == "FROM-OBJECT"
    assert instance.modality == "MR"
    assert instance.study_date == "20200304"
    assert instance.patient_name == "Patient^FROM-FILE"
    assert instance.metadata is not None
    assert instance.data is data


def test_archive_add_raw_keeps_entries_verbatim() -> None:
    archive = FakeArchive()
    raw = archive.add_raw("a/b", "c", "../../x", b"junk")
    assert isinstance(raw, FakeInstance)
    assert archive.study_uids() == ["a/b"]
    assert archive.instances("a/b", "c") == [raw]
    with pytest.raises(ValueError, match="not DICOM"):
        archive.add_part10(b"junk")


# --------------------------------------------------------------------------- QIDO-RS


def test_qido_studies_paging_total_count_and_204(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    url = f"{server.base_url}/studies"
    everything = client.get(url)
    assert everything.status_code == 200
    assert everything.headers["content-type"] == "application/dicom+json"
    assert everything.headers["x-total-count"] == "3"
    assert uids(everything.json(), "0020000D") == [*STUDIES, "9.9"]

    page = client.get(url, params={"limit": 2, "offset": 1})
    assert page.headers["x-total-count"] == "3"
    assert uids(page.json(), "0020000D") == [STUDIES[1], "9.9"]

    empty = client.get(url, params={"offset": 3})
    assert empty.status_code == 204
    assert empty.headers["x-total-count"] == "3"
    assert empty.content == b""
    assert "warning" not in empty.headers


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "offset=-1", "limit=abc"])
def test_qido_rejects_bad_paging(
    server: FakeDicomWebServer, client: httpx.Client, query: str
) -> None:
    assert client.get(f"{server.base_url}/studies?{query}").status_code == 400


@pytest.mark.parametrize("path", ["/series", "/instances", "/nothing", "/studies/1.2.3.1/x"])
def test_unknown_resources_are_404(
    server: FakeDicomWebServer, client: httpx.Client, path: str
) -> None:
    assert client.get(server.base_url + path).status_code == 404


def test_study_level_filters(server: FakeDicomWebServer, client: httpx.Client) -> None:
    def studies(**params: str) -> list[str]:
        response = client.get(f"{server.base_url}/studies", params=params)
        return [] if response.status_code == 204 else uids(response.json(), "0020000D")

    assert studies(PatientID="pat1") == [STUDIES[1]]
    assert studies(PatientID="P*") == list(STUDIES)
    assert studies(**{"00100020": "PAT0"}) == [STUDIES[0]]
    assert studies(StudyInstanceUID=STUDIES[1]) == [STUDIES[1]]
    assert studies(ModalitiesInStudy="ot") == ["9.9"]
    assert studies(PatientName="pat1", fuzzymatching="false") == []
    assert studies(PatientName="pat1", fuzzymatching="true") == [STUDIES[1]]
    # Kheops ignores filters it does not honour at study level: everything comes back.
    assert studies(Modality="XA") == [*STUDIES, "9.9"]


def test_study_json_attributes(server: FakeDicomWebServer, client: httpx.Client) -> None:
    (study,) = client.get(f"{server.base_url}/studies", params={"PatientID": "PAT0"}).json()
    assert study["0020000D"]["Value"] == [STUDIES[0]]
    assert study["00100020"]["Value"] == ["PAT0"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Patient^PAT0"}]
    assert study["00080020"]["Value"] == ["20240102"]
    assert study["00080030"]["Value"] == ["101500"]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [6]
    assert study["00081190"]["Value"] == [f"{server.base_url}/studies/{STUDIES[0]}"]


def test_series_and_instance_qido(server: FakeDicomWebServer, client: httpx.Client) -> None:
    study = STUDIES[0]
    series = client.get(f"{server.base_url}/studies/{study}/series")
    assert series.headers["x-total-count"] == "2"
    first = series.json()[0]
    assert first["0020000E"]["Value"] == [_series_uid(study, 0)]
    assert first["00080060"]["Value"] == ["CT"]
    assert first["00200011"]["Value"] == [1]
    assert first["00201209"]["Value"] == [3]
    assert first["00100020"]["Value"] == ["PAT0"]
    assert first["00080021"]["Value"] == ["20240102"]
    assert "0008103E" in first
    assert "00080031" in first

    mr = client.get(f"{server.base_url}/studies/{study}/series", params={"Modality": "mr"})
    assert uids(mr.json(), "0020000E") == [_series_uid(study, 1)]

    series_uid = _series_uid(study, 1)
    instances = client.get(f"{server.base_url}/studies/{study}/series/{series_uid}/instances")
    assert instances.headers["x-total-count"] == "3"
    row = instances.json()[2]
    assert row["00080018"]["Value"] == [f"{series_uid}.2"]
    assert row["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.4"]
    assert row["00200013"]["Value"] == [3]
    assert row["0020000D"]["Value"] == [study]

    whole = client.get(f"{server.base_url}/studies/{study}/instances", params={"limit": 4})
    assert whole.headers["x-total-count"] == "6"
    assert len(whole.json()) == 4
    assert client.get(f"{server.base_url}/studies/0.0/series").status_code == 404


def test_warning_header_forms_when_capped(make_server: ServerFactory, client: httpx.Client) -> None:
    server = make_server(max_results=1)
    studies = client.get(f"{server.base_url}/studies")
    assert len(studies.json()) == 1
    assert studies.headers["x-total-count"] == "3"
    assert studies.headers["warning"] == (
        "Warning: 299 {+service}: There are 2 additional results that can be requested"
    )
    series = client.get(f"{server.base_url}/studies/{STUDIES[0]}/series", params={"limit": 5})
    assert series.headers["warning"] == (
        "299 {+service}: There are 1 additional results that can be requested"
    )
    within_cap = client.get(f"{server.base_url}/studies", params={"limit": 1})
    assert "warning" not in within_cap.headers
    last_page = client.get(f"{server.base_url}/studies", params={"offset": 2})
    assert "warning" not in last_page.headers


def test_ignore_offset_always_returns_the_first_page(
    make_server: ServerFactory, client: httpx.Client
) -> None:
    server = make_server(ignore_offset=True)
    pages = [
        uids(client.get(f"{server.base_url}/studies?limit=1&offset={n}").json(), "0020000D")
        for n in range(3)
    ]
    assert pages == [[STUDIES[0]]] * 3


def test_series_count_override_lies_in_qido_only(
    make_server: ServerFactory, client: httpx.Client, archive: FakeArchive
) -> None:
    series_uid = _series_uid(STUDIES[0], 0)
    server = make_server(series_count_override={series_uid: 7})
    (row, _) = client.get(f"{server.base_url}/studies/{STUDIES[0]}/series").json()
    assert row["00201209"]["Value"] == [7]
    wado = client.get(f"{server.base_url}/studies/{STUDIES[0]}/series/{series_uid}")
    assert len(split_multipart(wado.content, wado.headers["content-type"])[0]) == 3


def test_hostile_uids_are_answered_verbatim(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    listing = client.get(f"{server.base_url}/studies/9.9/series/9.9.1/instances")
    assert uids(listing.json(), "00080018") == [EVIL_UID]
    encoded = "..%2F..%2Fevil"
    wado = client.get(f"{server.base_url}/studies/9.9/series/9.9.1/instances/{encoded}")
    assert wado.status_code == 200
    (part,) = split_multipart(wado.content, wado.headers["content-type"])[0]
    assert part.data == b"<html>not dicom</html>"
    assert part.headers["content-location"].endswith(encoded)
    assert server.requests[-1].path.endswith(encoded)


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bearer", 200),
        ("basic", 200),
        ("link", 200),
        ("none", 401),
        ("bad-bearer", 401),
        ("bad-basic", 401),
        ("bad-link", 401),
        ("garbage", 401),
    ],
)
def test_credentials(
    make_server: ServerFactory, client: httpx.Client, kind: str, expected: int
) -> None:
    server = make_server(token=TOKEN)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    bad_basic = base64.b64encode(b"anyone:nope").decode()
    headers = {
        "bearer": {"Authorization": f"Bearer {TOKEN}"},
        "basic": {"Authorization": f"Basic {basic}"},
        "bad-bearer": {"Authorization": "Bearer nope"},
        "bad-basic": {"Authorization": f"Basic {bad_basic}"},
        "garbage": {"Authorization": "Basic !!!"},
    }.get(kind, {})
    root = {"link": server.link_url(), "bad-link": server.link_url("nope")}.get(
        kind, server.base_url
    )
    response = client.get(f"{root}/studies", headers=headers)
    assert response.status_code == expected
    if expected == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert server.requests[-1].authorization == headers.get("Authorization")


def test_link_mode_retrieve_url_carries_the_token(
    make_server: ServerFactory, client: httpx.Client
) -> None:
    server = make_server(token=TOKEN)
    studies = client.get(f"{server.link_url()}/studies").json()
    assert studies[0]["00081190"]["Value"] == [f"{server.link_url()}/studies/{STUDIES[0]}"]
    assert TOKEN in studies[0]["00081190"]["Value"][0]


def test_album_and_inbox(make_server: ServerFactory, client: httpx.Client) -> None:
    server = make_server(token=TOKEN, forbidden_albums={"secret-album"})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{server.base_url}/studies"
    assert client.get(url, params={"album": "mine"}, headers=auth).status_code == 200
    assert client.get(url, params={"album": "secret-album"}, headers=auth).status_code == 403
    both = {"album": "mine", "inbox": "true"}
    assert client.get(url, params=both, headers=auth).status_code == 400
    assert client.get(url, params={"inbox": "true"}, headers=auth).status_code == 200


def test_open_server_records_missing_authorization(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    client.get(f"{server.base_url}/studies")
    (record,) = server.requests
    assert record.authorization is None
    assert record.headers["host"] == f"127.0.0.1:{server.port}"
    assert record.method == "GET"
    assert record.status == 200


# --------------------------------------------------------------------------- WADO-RS


@pytest.mark.parametrize("framing", ["eof", "chunked", "length"])
@pytest.mark.parametrize("quote_boundary", [False, True])
@pytest.mark.parametrize("padding", [(b"", b""), (b"preamble text", b"epilogue\r\n")])
def test_wado_framings_deliver_archive_bytes(
    make_server: ServerFactory,
    client: httpx.Client,
    archive: FakeArchive,
    framing: str,
    quote_boundary: bool,
    padding: tuple[bytes, bytes],
) -> None:
    server = make_server(
        framing=framing,
        quote_boundary=quote_boundary,
        preamble=padding[0],
        epilogue=padding[1],
        chunk_size=1000,
    )
    study = STUDIES[1]
    response = client.get(f"{server.base_url}/studies/{study}", headers={"Accept": WADO_ACCEPT})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert ('boundary="' in content_type) is quote_boundary
    parts, closed = split_multipart(response.content, content_type)
    assert closed
    expected = [item.data for item in archive.instances(study)]
    assert [part.data for part in parts] == expected
    assert response.content.endswith(padding[1])
    assert response.content.startswith(padding[0])
    for index, part in enumerate(parts):
        assert part.headers["content-type"] == "application/dicom"
        assert part.headers["content-length"] == str(len(expected[index]))
        assert part.headers["x-part-index"] == str(index)
        assert part.headers["content-location"].startswith(f"{server.base_url}/studies/{study}/")
    headers = response.headers
    if framing == "eof":
        assert "content-length" not in headers
        assert "transfer-encoding" not in headers
        assert headers["connection"] == "close"
    elif framing == "chunked":
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
    else:
        assert headers["content-length"] == str(len(response.content))


def test_eof_framing_on_the_wire(make_server: ServerFactory, archive: FakeArchive) -> None:
    server = make_server(framing="eof")
    series = _series_uid(STUDIES[0], 0)
    raw = raw_exchange(server.port, get_request(f"/api/studies/{STUDIES[0]}/series/{series}"))
    status, headers, body = split_response(raw)
    assert status == 200
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    parts, closed = split_multipart(body, headers["content-type"])
    assert closed
    assert [part.data for part in parts] == series_bytes(archive, STUDIES[0], series)


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_keep_alive_for_non_eof_framings(
    make_server: ServerFactory, client: httpx.Client, framing: str
) -> None:
    server = make_server(framing=framing)
    for _ in range(3):
        client.get(f"{server.base_url}/studies/{STUDIES[0]}")
        client.get(f"{server.base_url}/studies")
    assert len({record.connection for record in server.requests}) == 1


def test_pipelined_requests_on_one_connection(server: FakeDicomWebServer) -> None:
    first = b"GET /api/studies?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    raw = raw_exchange(server.port, first + get_request("/api/studies?offset=9"))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 204 No Content\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")
    assert len({record.connection for record in server.requests}) == 1


def test_eof_framing_closes_each_connection(
    make_server: ServerFactory, client: httpx.Client
) -> None:
    server = make_server(framing="eof")
    for _ in range(3):
        client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert len({record.connection for record in server.requests}) == 3


def test_single_instance_and_metadata(
    server: FakeDicomWebServer, client: httpx.Client, archive: FakeArchive
) -> None:
    study, series = STUDIES[0], _series_uid(STUDIES[0], 1)
    sop = f"{series}.1"
    url = f"{server.base_url}/studies/{study}/series/{series}/instances/{sop}"
    response = client.get(url)
    (part,) = split_multipart(response.content, response.headers["content-type"])[0]
    assert part.data == archive.instances(study, series)[1].data
    assert client.get(f"{url}.404").status_code == 404

    (meta,) = client.get(f"{url}/metadata").json()
    assert meta["00080018"]["Value"] == [sop]
    assert meta["7FE00010"]["BulkDataURI"] == f"{url}/bulkdata/7FE00010"
    assert len(client.get(f"{server.base_url}/studies/{study}/metadata").json()) == 6
    assert len(client.get(f"{server.base_url}/studies/{study}/series/{series}/metadata").json())


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        (None, 200),
        ("*/*", 200),
        (WADO_ACCEPT, 200),
        ('multipart/related; type="application/dicom"', 200),
        ("multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1", 200),
        (f"{WADO_ACCEPT}, multipart/related; type=application/dicom", 406),
        ("application/dicom", 406),
        ('multipart/related; type="application/octet-stream"', 406),
        ("application/dicom+json", 406),
    ],
)
def test_accept_header(
    server: FakeDicomWebServer, client: httpx.Client, accept: str | None, status: int
) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    client.headers.pop("accept", None)
    response = client.get(f"{server.base_url}/studies/{STUDIES[0]}", headers=headers)
    assert response.status_code == status
    assert server.requests[-1].accept == accept


def test_require_transfer_syntax_star(make_server: ServerFactory, client: httpx.Client) -> None:
    server = make_server(require_transfer_syntax_star=True)
    url = f"{server.base_url}/studies/{STUDIES[0]}"
    plain = 'multipart/related; type="application/dicom"'
    assert client.get(url, headers={"Accept": plain}).status_code == 406
    assert client.get(url, headers={"Accept": WADO_ACCEPT}).status_code == 200


# --------------------------------------------------------------------------- faults


def test_status_fault_with_retry_after_and_times(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    server.add_fault("/studies/1.2.3.1", Status(503, retry_after=2), times=2)
    url = f"{server.base_url}/studies/{STUDIES[0]}"
    first, second, third = (client.get(url) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["retry-after"] == "2"
    assert "retry-after" not in third.headers
    assert server.pending_faults() == []
    assert [record.status for record in server.requests] == [503, 503, 200]


def test_status_fault_variants(server: FakeDicomWebServer, client: httpx.Client) -> None:
    server.add_fault("/studies", Status(429, retry_after=0.25, body=b"slow down"))
    server.add_fault("/studies", Status(401))
    busy = client.get(f"{server.base_url}/studies")
    assert (busy.status_code, busy.headers["retry-after"], busy.text) == (429, "0.25", "slow down")
    unauthorized = client.get(f"{server.base_url}/studies")
    assert unauthorized.status_code == 401
    assert "www-authenticate" in unauthorized.headers
    assert client.get(f"{server.base_url}/studies").status_code == 200


def test_faults_match_by_substring_in_order(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    series = _series_uid(STUDIES[1], 1)
    server.add_fault(f"/series/{series}", Status(500))
    server.add_fault("", Status(502))
    assert client.get(f"{server.base_url}/studies").status_code == 502
    assert client.get(f"{server.base_url}/studies/{STUDIES[1]}/series/{series}").status_code == 500
    assert client.get(f"{server.base_url}/studies").status_code == 200
    server.add_fault("limit=5", Status(500))
    assert client.get(f"{server.base_url}/studies?limit=4").status_code == 200
    assert client.get(f"{server.base_url}/studies?limit=5").status_code == 500
    server.add_fault("never-matches", Status(500))
    server.clear_faults()
    assert server.pending_faults() == []


@pytest.mark.parametrize("framing", ["eof", "chunked", "length"])
def test_reset_after_breaks_the_connection(
    make_server: ServerFactory, client: httpx.Client, framing: str
) -> None:
    server = make_server(framing=framing)
    server.add_fault(STUDIES[0], ResetAfter(1000))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert client.get(f"{server.base_url}/studies/{STUDIES[0]}").status_code == 200


@pytest.mark.parametrize("framing", ["eof", "chunked", "length"])
def test_truncate_after_cuts_only_the_multipart(
    make_server: ServerFactory, client: httpx.Client, archive: FakeArchive, framing: str
) -> None:
    server = make_server(framing=framing)
    server.add_fault(STUDIES[0], TruncateAfter(4000))
    response = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert response.status_code == 200
    assert len(response.content) == 4000
    parts, closed = split_multipart(response.content, response.headers["content-type"])
    assert not closed
    assert [part.data for part in parts] == [archive.instances(STUDIES[0])[0].data]


def test_truncate_never_sends_the_closing_delimiter(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    server.add_fault(STUDIES[0], TruncateAfter(10**9))
    response = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    parts, closed = split_multipart(response.content, response.headers["content-type"])
    assert (len(parts), closed) == (5, False)
    assert not response.content.rstrip().endswith(b"--")


def test_truncated_chunked_stream_ends_with_the_last_chunk(server: FakeDicomWebServer) -> None:
    server.add_fault(STUDIES[0], TruncateAfter(3000))
    raw = raw_exchange(server.port, get_request(f"/api/studies/{STUDIES[0]}"))
    _, headers, body = split_response(raw)
    assert headers["transfer-encoding"] == "chunked"
    content, terminated = dechunk(body)
    assert terminated
    assert len(content) == 3000


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_close_after_leaves_the_http_message_unfinished(
    make_server: ServerFactory, client: httpx.Client, framing: str
) -> None:
    server = make_server(framing=framing)
    server.add_fault(STUDIES[0], CloseAfter(2000))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(f"{server.base_url}/studies/{STUDIES[0]}")


def test_delay_and_stall(server: FakeDicomWebServer, client: httpx.Client) -> None:
    server.add_fault("/studies", Delay(0.3))
    started = time.monotonic()
    assert client.get(f"{server.base_url}/studies").status_code == 200
    assert time.monotonic() - started >= 0.3

    server.add_fault(STUDIES[0], StallAfter(500, seconds=5))
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{server.base_url}/studies/{STUDIES[0]}", timeout=0.3)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2


def test_stall_then_finishes(server: FakeDicomWebServer, client: httpx.Client) -> None:
    server.add_fault(STUDIES[0], StallAfter(500, seconds=0.2))
    response = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert split_multipart(response.content, response.headers["content-type"])[1]


def test_not_dicom_part(server: FakeDicomWebServer, client: httpx.Client) -> None:
    server.add_fault(STUDIES[0], NotDicomPart(index=1))
    response = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    parts, closed = split_multipart(response.content, response.headers["content-type"])
    assert closed
    assert parts[1].data == b"<html>oops</html>"
    assert parts[1].headers["content-type"] == "application/dicom"
    assert parts[1].headers["content-length"] == str(len(b"<html>oops</html>"))
    assert parts[0].data.startswith(b"\x00" * 128 + b"DICM")


def test_omit_instances_while_qido_reports_them(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    study = STUDIES[0]
    server.add_fault(study, OmitInstances(1, series_uid=_series_uid(study, 1)))
    server.add_fault(study, OmitInstances(2))
    one_less = client.get(f"{server.base_url}/studies/{study}")
    parts, closed = split_multipart(one_less.content, one_less.headers["content-type"])
    assert (len(parts), closed) == (5, True)
    two_less = client.get(f"{server.base_url}/studies/{study}")
    assert len(split_multipart(two_less.content, two_less.headers["content-type"])[0]) == 2
    counts = client.get(f"{server.base_url}/studies/{study}/series").json()
    assert [row["00201209"]["Value"] for row in counts] == [[3], [3]]


def test_framing_fault_overrides_one_answer(
    server: FakeDicomWebServer, client: httpx.Client
) -> None:
    server.add_fault(STUDIES[0], Framing(framing="eof", quote_boundary=True, boundary="b-1"))
    odd = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert odd.headers["connection"] == "close"
    assert odd.headers["content-type"].endswith('boundary="b-1"')
    normal = client.get(f"{server.base_url}/studies/{STUDIES[0]}")
    assert normal.headers["transfer-encoding"] == "chunked"


def test_qido_can_be_truncated_too(server: FakeDicomWebServer, client: httpx.Client) -> None:
    server.add_fault("/studies", TruncateAfter(10))
    response = client.get(f"{server.base_url}/studies")
    assert response.headers["x-total-count"] == "3"
    assert len(response.content) == 10


# --------------------------------------------------------------------------- concurrency


def test_max_in_flight_counts_concurrent_requests(server: FakeDicomWebServer) -> None:
    workers = 6
    server.add_fault("/studies", Delay(0.4), times=workers)
    barrier = threading.Barrier(workers)
    statuses: list[int] = []

    def fetch() -> None:
        with new_client() as client:
            barrier.wait()
            statuses.append(client.get(f"{server.base_url}/studies").status_code)

    threads = [threading.Thread(target=fetch) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * workers
    assert server.max_in_flight == workers
    assert server.in_flight == 0
    server.reset_stats()
    assert (server.max_in_flight, server.requests) == (0, [])
    with new_client() as client:
        client.get(f"{server.base_url}/studies")
        client.get(f"{server.base_url}/studies")
    assert server.max_in_flight == 1


@pytest.mark.parametrize("framing", ["eof", "chunked"])
def test_many_concurrent_clients_get_intact_answers(
    make_server: ServerFactory, archive: FakeArchive, framing: str
) -> None:
    server = make_server(framing=framing, chunk_size=512)
    targets = [(study, _series_uid(study, r)) for study in STUDIES for r in range(2)] * 8
    failures: list[str] = []

    def fetch(study: str, series: str) -> None:
        with new_client(timeout=10) as client:
            response = client.get(f"{server.base_url}/studies/{study}/series/{series}")
            parts, closed = split_multipart(response.content, response.headers["content-type"])
            if not closed or [p.data for p in parts] != series_bytes(archive, study, series):
                failures.append(series)

    threads = [threading.Thread(target=fetch, args=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(server.requests) == len(targets)


# --------------------------------------------------------------------------- lifecycle


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fakeserver-")]


def test_shutdown_is_bounded_and_leaves_nothing_behind(archive: FakeArchive) -> None:
    before = set(_server_threads())
    with (
        FakeDicomWebServer(archive) as server,
        socket.create_connection(("127.0.0.1", server.port)) as idle,
        socket.create_connection(("127.0.0.1", server.port)) as waiting,
    ):
        server.add_fault("/studies", Delay(20))
        waiting.sendall(get_request("/api/studies"))
        deadline = time.monotonic() + 2
        while server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.in_flight == 1
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2
        waiting.settimeout(2)
        assert waiting.recv(100) == b""
        idle.settimeout(2)
        assert idle.recv(100) == b""
    assert set(_server_threads()) <= before
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", server.port), 1),
    ):
        pass


def test_malformed_request_gets_400(server: FakeDicomWebServer) -> None:
    raw = raw_exchange(server.port, b"NONSENSE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    raw = raw_exchange(
        server.port,
        b"POST /api/studies HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert raw.startswith(b"HTTP/1.1 405 ")
