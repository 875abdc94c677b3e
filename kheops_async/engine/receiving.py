"""Receiving parts from the network: small ones in memory, large ones into a temp file.

This is the receiving half of writing a part; :mod:`kheops_async.engine.sink` is the
placing half (:mod:`~kheops_async.engine.placement` says where it runs). A part up to
:data:`SMALL_PART_BYTES` is kept as the list of chunks it arrived in (never joined on
the event loop), so that the sink creates and writes its file in one ``writev``, with
the other parts of its batch. A larger part streams to its temporary file in writes of
at least :data:`LARGE_WRITE_BYTES`, each one ``writev`` in a worker thread, keeping its
first :data:`HEADER_PROBE_BYTES` to read its header without a second read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable

import anyio.to_thread

from kheops_async.records import Record
from kheops_async.streaming import RetrievedPart

__all__ = [
    "HEADER_PROBE_BYTES",
    "LARGE_WRITE_BYTES",
    "SMALL_PART_BYTES",
    "PartBody",
    "receive_body",
    "write_all",
]

HEADER_PROBE_BYTES = 64 * 1024
"""Bytes of a large part's head kept in memory to read its header without a second read."""
SMALL_PART_BYTES = 1024 * 1024
"""Parts up to this size are kept in memory and written in one go, by the sink."""
LARGE_WRITE_BYTES = 1024 * 1024
"""A large part is written in pieces of at least this size, each from a worker thread."""


class PartBody(Record):
    """A part's body as received, before its header is checked and its file finished.

    A small part is held in ``chunks`` (as received, not joined: the network's chunks,
    or the parser's slices of them, memoryviews when large, see
    :data:`~kheops_async.multipart.VIEW_MAX_OVERHEAD`); a large part is
    already in ``temp_path`` (``chunks`` is ``None``) with its first bytes in ``head``.
    Whoever holds a body must either hand it to the sink or :meth:`discard` it.
    """

    __slots__ = ("chunks", "content_type", "head", "index", "sha256", "size", "temp_path")

    def __init__(
        self,
        index: int,
        content_type: str,
        temp_path: str,
        size: int,
        chunks: list[bytes | memoryview] | None,
        head: bytes,
        sha256: str | None = None,
    ) -> None:
        self.index = index
        self.content_type = content_type
        self.temp_path = temp_path
        self.size = size
        self.chunks = chunks
        self.head = head
        self.sha256 = sha256

    @property
    def in_memory(self) -> bool:
        """Whether the body is held in memory (a small part) rather than in its file."""
        return self.chunks is not None

    def discard(self) -> None:
        """Forget the part and delete its temporary file, if any (idempotent)."""
        self.chunks = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


def write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write every chunk to ``fd`` with as few ``writev`` calls as the kernel allows."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX is 1024 on Linux
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


async def receive_body(
    part: RetrievedPart,
    temp_path: str,
    *,
    on_bytes: Callable[[int], None] | None = None,
    checksum: bool = False,
) -> PartBody:
    """Receive one part: in memory if small, else into ``temp_path``.

    Memory held: at most :data:`SMALL_PART_BYTES` plus one network chunk (and, for a
    large part, :data:`LARGE_WRITE_BYTES` plus one chunk). On any failure (including
    cancellation) the temporary file is removed. With ``checksum``, a large part's
    sha256 is computed as it streams (a small part's is computed by the sink).
    """
    content_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
    chunks: list[bytes | memoryview] = []
    size = pending = 0
    fd: int | None = None
    digest = hashlib.sha256() if checksum else None
    head = b""
    done = False
    try:
        async for chunk in part.buffers():
            size += len(chunk)
            pending += len(chunk)
            chunks.append(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            if fd is None and size <= SMALL_PART_BYTES:
                continue
            if fd is None:  # a large part: from now on it streams to its file
                fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                head = _head_of(chunks)
            if pending >= LARGE_WRITE_BYTES:
                await _write_from_thread(fd, chunks, digest)
                chunks, pending = [], 0
        if fd is None:
            done = True
            return PartBody(part.index, content_type, temp_path, size, chunks, b"")
        await _write_from_thread(fd, chunks, digest)
        done = True
        return PartBody(
            part.index,
            content_type,
            temp_path,
            size,
            None,
            head,
            digest.hexdigest() if digest is not None else None,
        )
    finally:
        if fd is not None:
            os.close(fd)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_path)


def _head_of(chunks: list[bytes | memoryview]) -> bytes:
    """The first :data:`HEADER_PROBE_BYTES` of the chunks (a small join, on the event loop)."""
    pieces: list[bytes | memoryview] = []
    taken = 0
    for chunk in chunks:
        pieces.append(chunk[: HEADER_PROBE_BYTES - taken])
        taken += len(pieces[-1])
        if taken >= HEADER_PROBE_BYTES:
            break
    return b"".join(pieces)


async def _write_from_thread(
    fd: int, chunks: list[bytes | memoryview], digest: hashlib._Hash | None
) -> None:
    """Write (and hash) ``chunks`` in a worker thread: the event loop never blocks on disk."""

    def write() -> None:
        write_all(fd, chunks)
        if digest is not None:
            for chunk in chunks:
                digest.update(chunk)

    if chunks:
        await anyio.to_thread.run_sync(write)
