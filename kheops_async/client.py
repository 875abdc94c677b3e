"""The async DICOMweb client: QIDO-RS searches, WADO-RS streamed retrieves, metadata.

:class:`DicomWebClient` wraps an ``httpx.AsyncClient`` (its own, or one lent by the
caller) and speaks to Kheops, Orthanc or any DICOMweb server. It works under
asyncio and trio. Searches page automatically; retrieves hand over each part of the
multipart answer as it arrives, never holding a whole instance in memory::

    async with DicomWebClient("https://demo.kheops.online/api", token=token) as client:
        async for study in client.iter_studies({"PatientID": "P1"}):
            async with client.retrieve_series(study.study_uid, series_uid) as parts:
                async for part in parts:
                    async for chunk in part:
                        ...
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal, cast

import anyio
import httpx

from kheops_async._version import __version__
from kheops_async.auth import Credentials, Redactor, normalize_base_url, split_link_url
from kheops_async.dicomjson import DicomRecord
from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    HTTPStatusError,
    KheopsAsyncError,
    NotFoundError,
    NotMultipartError,
    PermissionDeniedError,
    ProtocolError,
    TimeoutError_,
    TransportError,
)
from kheops_async.multipart import boundary_from_content_type
from kheops_async.qido import (
    DEFAULT_PAGE_SIZE,
    Page,
    QueryResult,
    build_query_params,
    normalize_filters,
    paginate,
    record_matches,
)
from kheops_async.retry import RetryPolicy, retry_call
from kheops_async.streaming import MultipartReader
from kheops_async.transport import KheopsTransport
from kheops_async.uids import validate_uid

__all__ = ["DEFAULT_TIMEOUT", "DicomWebClient", "Filters", "QueryPager"]

log = logging.getLogger("kheops_async")

DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=60.0, pool=300.0)
"""Nothing waits forever: connect 15 s, 120 s between two body chunks, pool 300 s."""

ANY_TRANSFER_SYNTAX = "*"
Filters = Mapping[str, str] | Iterable[tuple[str, str]] | None
Level = Literal["studies", "series", "instances"]


class DicomWebClient:
    """An async DICOMweb client for one server (base URL plus credentials).

    ``base_url`` is the DICOMweb root (``https://host/api`` for Kheops,
    ``http://host:8042/dicom-web`` for Orthanc); a Kheops link or viewer URL is
    accepted and split into base URL and token. Credentials: ``token`` (Bearer,
    or HTTP Basic password with ``basic_token=True``) or ``username``/``password``.
    With none, no ``Authorization`` header is sent.

    ``concurrency`` sizes the connection pool; ``http_client`` lends an
    ``httpx.AsyncClient`` that this client will use but not close. Without one, the
    client makes its own over :class:`~kheops_async.transport.KheopsTransport` (large
    socket reads, TLS context only for ``https://``): ``verify`` is ``True``, ``False``,
    a CA bundle path or an ``ssl.SSLContext``; ``proxy`` is a proxy URL for every
    request, else ``trust_env`` reads ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        basic_token: bool = False,
        http_client: httpx.AsyncClient | None = None,
        concurrency: int = 8,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
        proxy: str | None = None,
        trust_env: bool = True,
        retry: RetryPolicy | None = None,
        page_size: int | None = DEFAULT_PAGE_SIZE,
        album: str | None = None,
        inbox: bool = False,
        user_agent: str | None = None,
    ) -> None:
        link_base, link_token = split_link_url(base_url)
        if link_token and token and link_token != token:
            raise ConfigurationError("the link URL already carries a token; do not give another")
        self.credentials = Credentials(
            token=token or link_token,
            username=username,
            password=password,
            basic_token=basic_token,
        )
        self.redactor = Redactor.for_secrets(self.credentials.secrets)
        self.base_url = normalize_base_url(link_base)
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if page_size is not None and page_size < 1:
            raise ConfigurationError("page_size must be >= 1")
        self.concurrency = concurrency
        self.retry = retry if retry is not None else RetryPolicy()
        self.page_size = page_size
        self.album = album
        self.inbox = inbox
        self._owns_http = http_client is None
        self._user_agent = user_agent or f"kheops-async/{__version__} httpx/{httpx.__version__}"
        headers = {"User-Agent": self._user_agent}
        self._transport: KheopsTransport | None = None
        if http_client is None:
            transport = self._transport = KheopsTransport(
                verify=verify,
                proxy=proxy,
                trust_env=trust_env,
                limits=httpx.Limits(
                    max_connections=concurrency + 4,
                    max_keepalive_connections=concurrency + 4,
                    keepalive_expiry=0.5,  # Orthanc drops idle connections after ~1 s
                ),
            )
            http_client = httpx.AsyncClient(
                timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
                transport=transport,
                headers=headers,
                follow_redirects=False,
                trust_env=False,  # the transport reads the proxy variables itself
            )
        self._http = http_client
        self._auth = self.credentials.to_httpx_auth()

    def __repr__(self) -> str:
        return f"DicomWebClient({self.base_url!r}, credentials={self.credentials!r})"

    async def __aenter__(self) -> DicomWebClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool, unless it was lent by the caller."""
        if self._owns_http:
            await self._http.aclose()

    @asynccontextmanager
    async def connections_ahead(self, count: int) -> AsyncIterator[None]:
        """Within the block, open up to ``count`` connections ahead of the requests.

        Saves each new connection's handshake on servers that close every connection
        after a multipart answer, as Orthanc does (see :mod:`~kheops_async.connect_ahead`).
        Does nothing when ``count`` is 0, or with a lent ``http_client``: its
        connections are not ours.
        """
        if self._transport is None or count < 1:
            yield
            return
        async with self._transport.connections_ahead(count):
            yield

    # -- plumbing ------------------------------------------------------------------

    def url_for(self, *segments: str) -> str:
        """The absolute URL of a resource below the base URL (UIDs validated)."""
        return "/".join([self.base_url, *segments])

    def safe(self, text: object) -> str:
        """``text`` with every credential removed: for logs and messages."""
        return self.redactor.redact(str(text))

    def _error_for(self, response: httpx.Response) -> HTTPStatusError:
        status = response.status_code
        url = self.safe(response.request.url.copy_with(query=None))
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        reason = response.reason_phrase or ""
        base = f"HTTP {status} {reason}".rstrip() + f" from {url}"
        kwargs: dict[str, Any] = {"status_code": status, "url": url, "retry_after": retry_after}
        if status == 401:
            return AuthenticationError(
                f"{base}: the server wants a valid token; check --token / KHEOPS_TOKEN "
                "(an expired or mistyped token gives 401)",
                **kwargs,
            )
        if status == 407:
            return AuthenticationError(
                f"{base}: the proxy wants valid credentials; check the user and password "
                "in --proxy or HTTP(S)_PROXY (http://user:password@host:port)",
                **kwargs,
            )
        if status == 403:
            return PermissionDeniedError(
                f"{base}: the token does not grant this resource (album, study or "
                "series outside its scope, or a read-only token)",
                **kwargs,
            )
        if status in (404, 410):
            return NotFoundError(f"{base}: not found", **kwargs)
        if 300 <= status < 400:
            location = self.safe(response.headers.get("Location", "?"))
            return HTTPStatusError(
                f"{base}: the server redirects to {location}; use that URL as the base URL",
                **kwargs,
            )
        if status == 400:
            return HTTPStatusError(
                f"{base}: the server refused the request (a filter it does not support, "
                "or a page size above its maximum: try --page-size 100)",
                **kwargs,
            )
        return HTTPStatusError(base, **kwargs)

    def _translate(self, exc: httpx.HTTPError, url: httpx.URL) -> KheopsAsyncError:
        where = self.safe(url.copy_with(query=None))
        detail = self.safe(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return TimeoutError_(f"timed out talking to {where} ({type(exc).__name__})")
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ConfigurationError(f"cannot request {where}: {detail}")
        if isinstance(exc, httpx.TransportError):
            return TransportError(f"connection to {where} failed: {detail}")
        return KheopsAsyncError(f"request to {where} failed: {detail}")

    @asynccontextmanager
    async def _stream(
        self,
        url: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """GET ``url`` and yield the response with its body unread; errors translated."""
        request = self._http.build_request(
            "GET",
            url,
            params=list(params),
            headers={"User-Agent": self._user_agent, **(headers or {})},
        )
        try:
            response = await self._http.send(
                request, auth=self._auth or httpx.USE_CLIENT_DEFAULT, stream=True
            )
        except httpx.HTTPError as exc:
            raise self._translate(exc, request.url) from None
        try:
            if not 200 <= response.status_code < 300:
                with contextlib.suppress(httpx.HTTPError):
                    await response.aread()
                raise self._error_for(response)
            yield response
        finally:
            await response.aclose()

    async def _get_json(
        self, url: str, params: Sequence[tuple[str, str]] = ()
    ) -> tuple[list[Any], httpx.Headers]:
        """GET a DICOM JSON array (``204`` and an empty body give ``[]``), with retries."""

        async def attempt() -> tuple[list[Any], httpx.Headers]:
            async with self._stream(
                url, params=params, headers={"Accept": "application/dicom+json"}
            ) as response:
                try:
                    body = await response.aread()
                except httpx.HTTPError as exc:
                    raise self._translate(exc, response.request.url) from None
                if response.status_code == 204 or not body.strip():
                    return [], response.headers
                try:
                    data = json.loads(body)
                except ValueError:
                    raise ProtocolError(
                        f"{self.safe(response.request.url)} did not answer DICOM JSON "
                        f"(Content-Type {response.headers.get('Content-Type')!r})"
                    ) from None
                if not isinstance(data, list):
                    raise ProtocolError(f"{self.safe(url)} answered JSON that is not an array")
                return data, response.headers

        return await retry_call(self.retry, attempt, describe=f"GET {self.safe(url)}")

    # -- QIDO-RS -------------------------------------------------------------------

    def _query_path(self, level: Level, study_uid: str | None, series_uid: str | None) -> str:
        segments: list[str] = []
        if study_uid is not None:
            segments += ["studies", validate_uid(study_uid, "StudyInstanceUID")]
        if series_uid is not None:
            if study_uid is None:
                raise ConfigurationError("a series UID needs its study UID")
            segments += ["series", validate_uid(series_uid, "SeriesInstanceUID")]
        segments.append(level)
        return self.url_for(*segments)

    def query(
        self,
        level: Level,
        filters: Filters = None,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        includefield: Sequence[str] = (),
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
        page_size: int | Literal["default"] | None = "default",
        album: str | None = None,
        inbox: bool | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> QueryPager:
        """A QIDO-RS search at ``level``, as an async iterator of :class:`DicomRecord`.

        ``limit`` caps the total returned (``None``: every match); ``page_size`` is
        the records asked per request (``None``: one request, no paging). Kheops's
        ``album``/``inbox`` default to the client's. Filters are keywords or tags
        (``*`` wildcards, date ranges); records that contradict a filter the server
        ignored are dropped. ``limiter``: each page request holds one of its slots (the
        download engine's bound on requests in flight), released between pages.
        """
        normalized = normalize_filters(filters, level=level if study_uid is None else "series")
        params = build_query_params(
            filters=normalized,
            includefield=includefield,
            fuzzymatching=fuzzymatching,
            album=album if album is not None else self.album,
            inbox=self.inbox if inbox is None else inbox,
        )
        url = self._query_path(level, study_uid, series_uid)
        return QueryPager(
            self,
            url,
            params,
            normalized,
            limit=limit,
            offset=offset,
            page_size=self.page_size if page_size == "default" else page_size,
            fuzzy=bool(fuzzymatching),
            limiter=limiter,
        )

    async def _fetch_page(
        self, url: str, params: Sequence[tuple[str, str]], limit: int | None, offset: int
    ) -> Page:
        paging: list[tuple[str, str]] = []
        if limit is not None:
            paging.append(("limit", str(limit)))
        if offset:
            paging.append(("offset", str(offset)))
        data, headers = await self._get_json(url, [*params, *paging])
        total = headers.get("X-Total-Count")
        return Page(
            records=[DicomRecord(item) for item in data if isinstance(item, Mapping)],
            total_count=int(total) if total and total.strip().isdigit() else None,
            warning=headers.get("Warning"),
        )

    def iter_studies(self, filters: Filters = None, **options: Any) -> QueryPager:
        """Search studies (``GET /studies``); see :meth:`query` for the options."""
        return self.query("studies", filters, **options)

    def iter_series(
        self, filters: Filters = None, *, study_uid: str | None = None, **options: Any
    ) -> QueryPager:
        """Search series of one study, or of all (root ``/series``: not on Kheops)."""
        return self.query("series", filters, study_uid=study_uid, **options)

    def iter_instances(
        self,
        filters: Filters = None,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        **options: Any,
    ) -> QueryPager:
        """Search instances at the root, of a study, or of a series."""
        return self.query(
            "instances", filters, study_uid=study_uid, series_uid=series_uid, **options
        )

    async def search_studies(self, filters: Filters = None, **options: Any) -> QueryResult:
        """Every matching study, with the completeness flags; see :meth:`query`."""
        return await self.iter_studies(filters, **options).collect()

    async def search_series(self, filters: Filters = None, **options: Any) -> QueryResult:
        """Every matching series; ``study_uid=`` for one study's series."""
        return await self.iter_series(filters, **options).collect()

    async def search_instances(self, filters: Filters = None, **options: Any) -> QueryResult:
        """Every matching instance; ``study_uid=``/``series_uid=`` narrow the scope."""
        return await self.iter_instances(filters, **options).collect()

    # -- WADO-RS -------------------------------------------------------------------

    def _retrieve_path(
        self, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> list[str]:
        segments = ["studies", validate_uid(study_uid, "StudyInstanceUID")]
        if series_uid is not None:
            segments += ["series", validate_uid(series_uid, "SeriesInstanceUID")]
        if sop_uid is not None:
            if series_uid is None:
                raise ConfigurationError("an instance UID needs its series UID")
            segments += ["instances", validate_uid(sop_uid, "SOPInstanceUID")]
        return segments

    @asynccontextmanager
    async def retrieve(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        *,
        transfer_syntax: str = ANY_TRANSFER_SYNTAX,
    ) -> AsyncIterator[MultipartReader]:
        """Stream a study, series or instance as DICOM parts (WADO-RS, one request).

        ``transfer_syntax="*"`` (default) asks for the bytes as stored; give a UID to
        ask the server to transcode. Yields a :class:`MultipartReader`; each part's
        body arrives chunk by chunk. Not retried here: a retry must restart the
        stream, which the caller (the download engine) decides. Raises
        :class:`TruncatedBodyError` when the body ends early.
        """
        url = self.url_for(*self._retrieve_path(study_uid, series_uid, sop_uid))
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        async with self._stream(url, headers=headers) as response:
            content_type = response.headers.get("Content-Type", "")
            if not content_type.strip().lower().startswith("multipart/"):
                raise NotMultipartError(
                    f"{self.safe(response.request.url.copy_with(query=None))} answered "
                    f"{response.status_code} with Content-Type {content_type[:100]!r}, not "
                    "multipart/related (a proxy's or load balancer's page?)"
                )
            boundary = boundary_from_content_type(content_type)
            stream = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
            request_url = response.request.url

            async def receive() -> bytes:
                try:
                    return await stream.__anext__()
                except StopAsyncIteration:
                    return b""
                except httpx.HTTPError as exc:
                    raise self._translate(exc, request_url) from None

            try:
                yield MultipartReader(receive, boundary)
            finally:
                # Close the body iterator on every exit (trio warns about one left open).
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

    def retrieve_study(self, study_uid: str, **kwargs: Any) -> Any:
        """Stream every instance of a study; see :meth:`retrieve`."""
        return self.retrieve(study_uid, **kwargs)

    def retrieve_series(self, study_uid: str, series_uid: str, **kwargs: Any) -> Any:
        """Stream every instance of a series; see :meth:`retrieve`."""
        return self.retrieve(study_uid, series_uid, **kwargs)

    def retrieve_instance(
        self, study_uid: str, series_uid: str, sop_uid: str, **kwargs: Any
    ) -> Any:
        """Stream one instance (a one-part multipart answer); see :meth:`retrieve`."""
        return self.retrieve(study_uid, series_uid, sop_uid, **kwargs)

    async def retrieve_metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[dict[str, Any]]:
        """WADO-RS metadata (DICOM JSON, one object per instance), with retries."""
        url = self.url_for(*self._retrieve_path(study_uid, series_uid, sop_uid), "metadata")
        data, _ = await self._get_json(url)
        return [item for item in data if isinstance(item, dict)]


class QueryPager:
    """An async iterator over QIDO results that pages by itself.

    After iteration, ``result`` tells whether the list is complete
    (``result.truncated``, ``result.warning``, ``result.total_count``).
    """

    def __init__(
        self,
        client: DicomWebClient,
        url: str,
        params: list[tuple[str, str]],
        filters: Mapping[str, str],
        *,
        limit: int | None,
        offset: int,
        page_size: int | None,
        fuzzy: bool = False,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._iterator: AsyncGenerator[DicomRecord, None] | None = None
        self._fuzzy = fuzzy
        self._url = url
        self._params = params
        self._filters = filters
        self._limit = limit
        self._offset = offset
        self._page_size = page_size
        self.result = QueryResult()

    def __aiter__(self) -> AsyncIterator[DicomRecord]:
        self._iterator = self._records()
        return self._iterator

    async def aclose(self) -> None:
        """Stop paging now (a caller that leaves the loop early): closes the generators.

        Use ``async with contextlib.aclosing(pager): async for record in pager: ...``
        when the loop may be left early or cancelled (trio warns about a generator
        collected before it was closed).
        """
        if self._iterator is not None:
            await self._iterator.aclose()

    async def _records(self) -> AsyncGenerator[DicomRecord, None]:
        started = time.monotonic()

        async def fetch(limit: int | None, offset: int) -> Page:
            if self._limiter is None:
                return await self._client._fetch_page(self._url, self._params, limit, offset)
            async with self._limiter:
                return await self._client._fetch_page(self._url, self._params, limit, offset)

        describe = f"query {self._client.safe(self._url)}"
        dropped = 0
        pages = paginate(
            fetch,
            limit=self._limit,
            offset=self._offset,
            page_size=self._page_size,
            result=self.result,
            describe=describe,
        )
        async with contextlib.aclosing(pages):
            async for record in pages:
                if self._filters and not record_matches(record, self._filters, fuzzy=self._fuzzy):
                    dropped += 1
                    continue
                yield record
        if dropped:
            self.result.dropped_by_filter_check = dropped
            log.warning(
                "%s: the server ignored a filter; %d records that do not match %s were dropped",
                describe,
                dropped,
                dict(self._filters),
            )
        log.debug("%s took %.2fs", describe, time.monotonic() - started)

    async def collect(self) -> QueryResult:
        """Run the whole query and return every record with the completeness flags."""
        async for record in self:
            self.result.records.append(record)
        return self.result


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
