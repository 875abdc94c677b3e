"""The settings of one command-line run, gathered from the options, and the client they make.

Kept apart from click so that the commands' async bodies take plain values, and so
that building the :class:`~kheops_async.DicomWebClient` (credentials, TLS, timeouts,
retries) happens in one place.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import httpx

from kheops_async.auth import Redactor, split_link_url
from kheops_async.client import DEFAULT_TIMEOUT, DicomWebClient
from kheops_async.engine import DEFAULT_CONCURRENCY
from kheops_async.errors import ConfigurationError
from kheops_async.qido import DEFAULT_PAGE_SIZE
from kheops_async.records import Record
from kheops_async.retry import RetryPolicy

__all__ = ["ConnectionSettings", "OutputSettings"]

_PROXY_VARIABLES = tuple(
    name for base in ("https_proxy", "http_proxy", "all_proxy") for name in (base, base.upper())
)

log = logging.getLogger("kheops_async.cli")


class ConnectionSettings(Record):
    """Where the server is and how to talk to it (``--url``, credentials, TLS, ...)."""

    __slots__ = (
        "album",
        "basic_token",
        "ca_bundle",
        "concurrency",
        "inbox",
        "insecure",
        "page_size",
        "password",
        "proxy",
        "retries",
        "timeout",
        "token",
        "url",
        "user",
    )
    _hidden_in_repr = ("token", "password", "proxy")

    def __init__(
        self,
        url: str,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        basic_token: bool = False,
        album: str | None = None,
        inbox: bool = False,
        ca_bundle: Path | None = None,
        insecure: bool = False,
        proxy: str | None = None,
        timeout: float | None = None,
        retries: int = RetryPolicy().attempts - 1,
        concurrency: int = DEFAULT_CONCURRENCY,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.url = url
        self.token = token
        self.user = user
        self.password = password
        self.basic_token = basic_token
        self.album = album
        self.inbox = inbox
        self.ca_bundle = ca_bundle
        self.insecure = insecure
        self.proxy = proxy  # may carry a password
        self.timeout = timeout
        self.retries = retries
        self.concurrency = concurrency
        self.page_size = page_size  # 0: one request per query, no paging

    def redactor(self) -> Redactor:
        """Redacts the token, the password and a link URL's token from any text."""
        _, link_token = split_link_url(self.url)
        return Redactor.for_secrets([self.token, self.password, link_token, *self._proxy_secrets()])

    def _proxy_secrets(self) -> list[str | None]:
        """The password of ``--proxy`` (and of a proxy URL from the environment)."""
        from urllib.parse import urlsplit

        candidates = [self.proxy, *(os.environ.get(name) for name in _PROXY_VARIABLES)]
        secrets: list[str | None] = []
        for url in candidates:
            if url and "@" in url:
                try:
                    secrets.append(urlsplit(url if "://" in url else f"http://{url}").password)
                except ValueError:
                    continue
        return secrets

    def _verify(self) -> bool | ssl.SSLContext:
        if self.insecure and self.ca_bundle is not None:
            raise ConfigurationError("--insecure and --ca-bundle contradict each other")
        if self.insecure:
            if self.url.strip().lower().startswith("https:"):
                log.warning("TLS certificate verification is off (--insecure)")
            return False
        if self.ca_bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the CA bundle {self.ca_bundle}: {exc.strerror or exc}"
            ) from None

    def _proxy(self) -> str | None:
        if self.proxy is None:
            return None
        from urllib.parse import urlsplit

        text = self.proxy.strip()
        try:
            parts = urlsplit(text if "://" in text else f"http://{text}")
            _ = parts.port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            shown = self.redactor().redact(text)
            raise ConfigurationError(
                f"invalid --proxy {shown!r}: expected http://[user:password@]host:port"
            )
        return parts.geturl()

    def _timeout(self) -> httpx.Timeout:
        if self.timeout is None:
            return DEFAULT_TIMEOUT
        return httpx.Timeout(self.timeout, pool=DEFAULT_TIMEOUT.pool)

    def client(self) -> DicomWebClient:
        """A new client for these settings (use it as an async context manager).

        Raises :class:`ConfigurationError` for a bad URL, contradictory credentials or
        an unreadable CA bundle.
        """
        return DicomWebClient(
            self.url,
            token=self.token,
            username=self.user,
            password=self.password,
            basic_token=self.basic_token,
            concurrency=self.concurrency,
            timeout=self._timeout(),
            verify=self._verify(),
            proxy=self._proxy(),
            retry=RetryPolicy(attempts=self.retries + 1),
            album=self.album,
            inbox=self.inbox,
            page_size=self.page_size or None,
        )


class OutputSettings(Record):
    """Where results go, how tables are shown and how much is said on stderr.

    ``wide``: Terminal tables show whole values instead of fitting the terminal's width.
    """

    __slots__ = ("dry_run", "out_dir", "quiet", "verbosity", "wide")

    def __init__(
        self,
        out_dir: Path = Path("downloads"),
        dry_run: bool = False,
        verbosity: int = 0,
        quiet: bool = False,
        wide: bool = False,
    ) -> None:
        self.out_dir = out_dir
        self.dry_run = dry_run
        self.verbosity = verbosity
        self.quiet = quiet
        self.wide = wide

    def prepare_out_dir(self) -> None:
        """Create the output directory, or raise :class:`ConfigurationError` if unusable.

        Called before any query, so that an unwritable directory fails fast; a dry run
        never calls it (it writes nothing, not even the directory).
        """
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the output directory {self.out_dir}: {exc.strerror or exc}"
            ) from None
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise ConfigurationError(f"the output directory {self.out_dir} is not writable")
