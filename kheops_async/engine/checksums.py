"""The sha256 of a file on disk, as the journal records it (``--checksum``)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["BLOCK_BYTES", "file_sha256"]

BLOCK_BYTES = 1024 * 1024
"""Bytes read per call."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256 as lowercase hex, read in :data:`BLOCK_BYTES` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()
