"""Credentials, Kheops link URLs and redaction.

Kheops accepts a token as ``Authorization: Bearer <token>`` (preferred), as the
password of HTTP Basic (user name ignored), or inside a link URL
(``https://host/api/link/<token>/...``). Other servers (Orthanc) use Basic with a
user and a password. This module turns what the user gave into a base URL and an
``httpx.Auth``, and makes sure no secret ever reaches a repr, a log or a message.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

from kheops_async.errors import ConfigurationError
from kheops_async.records import FrozenPublicRecord, Record

__all__ = [
    "BearerAuth",
    "Credentials",
    "Redactor",
    "normalize_base_url",
    "split_link_url",
]

REDACTED = "***"

# /api/link/<token>/... (link URL) and /view/<token> (viewer URL).
_LINK_RE = re.compile(r"^(?P<prefix>.*?)/link/(?P<token>[^/?#]+)(?:/.*)?$")
_VIEW_RE = re.compile(r"^(?P<prefix>.*?)/view/(?P<token>[^/?#]+)/?$")


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; the token is kept out of the repr."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


@dataclass(frozen=True, init=False, repr=False, eq=False)
class Credentials(FrozenPublicRecord):
    """What the user gave to authenticate; any field may be absent.

    ``token`` alone means Bearer; ``username`` and ``password`` mean Basic;
    ``token`` with ``basic_token=True`` sends the token as a Basic password (Kheops).
    """

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    basic_token: bool = False

    def __init__(
        self,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        basic_token: bool = False,
    ) -> None:
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "basic_token", basic_token)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            object.__setattr__(self, "token", None)
        if self.token is not None and self.password is not None:
            raise ConfigurationError("give either a token or a password, not both")
        if (self.username is None) != (self.password is None) and not self.basic_token:
            raise ConfigurationError("HTTP Basic needs both a user name and a password")

    def __repr__(self) -> str:
        token = REDACTED if self.token else None
        password = REDACTED if self.password else None
        return (
            f"Credentials(token={token!r}, username={self.username!r}, "
            f"password={password!r}, basic_token={self.basic_token})"
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret strings to redact wherever text may leave the process."""
        return tuple(s for s in (self.token, self.password) if s)

    def to_httpx_auth(self) -> httpx.Auth | None:
        """The httpx auth to use, or ``None`` (then no Authorization header is sent)."""
        if self.token is not None:
            if self.basic_token:
                return httpx.BasicAuth(self.username or "kheops", self.token)
            return BearerAuth(self.token)
        if self.username is not None and self.password is not None:
            return httpx.BasicAuth(self.username, self.password)
        return None


def normalize_base_url(url: str) -> str:
    """Validate a DICOMweb base URL and return it without a trailing slash.

    Raises :class:`ConfigurationError` for anything but an absolute http(s) URL with
    a host. The message never contains the URL's password or a link token.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = Redactor().redact_url(text)
        raise ConfigurationError(
            f"invalid server URL {shown!r}: expected http(s)://host[:port]/path, "
            "for example https://demo.kheops.online/api"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in server URL {parts.netloc!r}") from exc
    if parts.query or parts.fragment:
        raise ConfigurationError("the server URL must not have a query or fragment")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def split_link_url(url: str) -> tuple[str, str | None]:
    """Split a Kheops link or viewer URL into ``(base_url, token)``.

    ``https://host/api/link/TOKEN/studies/1.2`` gives ``("https://host/api", "TOKEN")``;
    ``https://host/view/TOKEN`` gives ``("https://host/api", "TOKEN")``. Any other URL is
    returned unchanged with ``None``.
    """
    parts = urlsplit(url.strip())
    link = _LINK_RE.match(parts.path)
    if link:
        path, token = link.group("prefix"), link.group("token")
    else:
        view = _VIEW_RE.match(parts.path)
        if not view:
            return url, None
        path, token = view.group("prefix").rstrip("/") + "/api", view.group("token")
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")), token


class Redactor(Record):
    """Removes secrets from text: given tokens and passwords, link tokens, URL passwords."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = secrets

    @classmethod
    def for_secrets(cls, secrets: Iterable[str | None]) -> Redactor:
        """A redactor for the given secrets (empty and ``None`` ones are dropped)."""
        return cls(tuple(sorted({s for s in secrets if s}, key=len, reverse=True)))

    def redact(self, text: str) -> str:
        """Return ``text`` with every known secret and every link token replaced."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = re.sub(r"(/link/)[^/?#\s\"']+", rf"\g<1>{REDACTED}", text)
        text = re.sub(r"(/view/)[^/?#\s\"']+", rf"\g<1>{REDACTED}", text)
        return re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", rf"\g<1>{REDACTED}@", text)

    def redact_url(self, url: str | httpx.URL) -> str:
        """A URL as text, safe to show."""
        return self.redact(str(url))

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"
