"""DICOM UID validation: a UID goes into a URL path, so it is checked first.

PS3.5 9.1: at most 64 characters, digits and dots, components without leading
zeros. Leading zeros are tolerated (some archives have them); anything that could
change the meaning of a URL path (``/``, ``..``, ``?``, ``%``) is rejected.
"""

from __future__ import annotations

import re

from kheops_async.errors import ConfigurationError

__all__ = ["MAX_UID_LENGTH", "is_valid_uid", "validate_uid"]

MAX_UID_LENGTH = 64
_UID_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a well-formed DICOM UID."""
    return len(value) <= MAX_UID_LENGTH and bool(_UID_RE.match(value))


def validate_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` stripped of blanks and NUL padding, or raise ConfigurationError."""
    cleaned = value.strip().rstrip("\x00").strip() if isinstance(value, str) else ""
    if not is_valid_uid(cleaned):
        shown = cleaned if len(cleaned) <= 80 else cleaned[:77] + "..."
        raise ConfigurationError(
            f"malformed {what} {shown!r}: a DICOM UID is up to 64 digits and dots, "
            "e.g. 1.2.840.113619.2.55.3"
        )
    return cleaned
