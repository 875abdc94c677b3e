"""Credentials, link URLs and redaction: the token never leaks."""

from __future__ import annotations

import base64

import httpx
import pytest

from kheops_async import ConfigurationError, DicomWebClient, HTTPStatusError
from kheops_async.auth import Credentials, Redactor, normalize_base_url, split_link_url

pytestmark = pytest.mark.anyio

TOKEN = "B18jTXCzTrQzj1ZednqHUY"


def test_link_and_viewer_urls_split_into_base_and_token() -> None:
    assert split_link_url(f"https://h.org/api/link/{TOKEN}/studies/1.2") == (
        "https://h.org/api",
        TOKEN,
    )
    assert split_link_url(f"https://h.org/api/link/{TOKEN}") == ("https://h.org/api", TOKEN)
    assert split_link_url(f"https://h.org/view/{TOKEN}") == ("https://h.org/api", TOKEN)
    assert split_link_url("https://h.org/api") == ("https://h.org/api", None)


@pytest.mark.parametrize(
    "url", ["ftp://x/api", "not a url", "https:///api", "http://h:99999/x", "https://h/a?x=1"]
)
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        normalize_base_url(url)


def test_redactor_removes_tokens_passwords_and_link_tokens() -> None:
    redactor = Redactor.for_secrets([TOKEN, None, ""])
    text = f"GET https://u:pw@h/api/link/{TOKEN}/studies?x={TOKEN} and /view/abc"
    cleaned = redactor.redact(text)
    assert TOKEN not in cleaned and "pw@" not in cleaned and "/view/abc" not in cleaned
    assert "/link/***/" in cleaned


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials(token=TOKEN)
    assert TOKEN not in repr(creds) and TOKEN not in str(creds)
    basic = Credentials(username="alice", password="s3cret")
    assert "s3cret" not in repr(basic)
    with pytest.raises(ConfigurationError):
        Credentials(username="alice")
    assert Credentials(token="  ").token is None


def recording_client(seen: list[httpx.Request], **kwargs: object) -> DicomWebClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return DicomWebClient("https://h.org/api", http_client=http, **kwargs)  # type: ignore[arg-type]


async def test_no_authorization_header_without_credentials() -> None:
    seen: list[httpx.Request] = []
    async with recording_client(seen) as client:
        await client.search_studies()
    assert "Authorization" not in seen[0].headers
    assert seen[0].headers["User-Agent"].startswith("kheops-async/")


async def test_bearer_basic_token_and_basic_user() -> None:
    seen: list[httpx.Request] = []
    async with recording_client(seen, token=TOKEN) as client:
        await client.search_studies()
        assert TOKEN not in repr(client)
    async with recording_client(seen, token=TOKEN, basic_token=True) as client:
        await client.search_studies()
    async with recording_client(seen, username="alice", password="pw") as client:
        await client.search_studies()
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    _user, _, password = (
        base64.b64decode(seen[1].headers["Authorization"].split()[1]).decode().partition(":")
    )
    assert password == TOKEN
    assert base64.b64decode(seen[2].headers["Authorization"].split()[1]) == b"alice:pw"


async def test_link_url_becomes_bearer_and_never_enters_the_request_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with DicomWebClient(f"https://h.org/api/link/{TOKEN}/", http_client=http) as client:
        assert client.base_url == "https://h.org/api"
        await client.search_studies()
    await http.aclose()
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(seen[0].url)


async def test_lent_http_client_is_not_closed() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(204)))
    async with DicomWebClient("https://h.org/api", http_client=http) as client:
        result = await client.search_studies()
    assert result.records == []
    assert not http.is_closed
    await http.aclose()


async def test_a_redirect_is_an_error_naming_the_target() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "https://h.org/api/studies"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with DicomWebClient("http://h.org/api", http_client=http) as client:
        with pytest.raises(HTTPStatusError, match=r"redirects to https://h\.org/api/studies"):
            await client.search_studies()
    await http.aclose()
