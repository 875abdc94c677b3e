"""Receiving parts from the network: small ones in memory, large ones into a temp file.

This is the event-loop half of writing a part; :mod:`kheops_async.engine.sink` is
the worker-thread half. A part up to :data:`SMALL_PART_BYTES` is gathered in memory
so that its file is created and written in one go off the event loop; a larger
part streams to its temporary file as it arrives, keeping its first
:data:`HEADER_PROBE_BYTES` to read its header without a second read.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kheops_async.streaming import RetrievedPart

__all__ = ["HEADER_PROBE_BYTES", "SMALL_PART_BYTES", "PartBody", "receive_body"]

HEADER_PROBE_BYTES = 64 * 1024
"""Bytes of a large part's head kept in memory to read its header without a second read."""
SMALL_PART_BYTES = 1024 * 1024
"""Parts up to this size are gathered in memory and written in one go, in a thread."""


@dataclass
class PartBody:
    """A part's body as received, before its header is checked and its file finished.

    Small parts are held in ``data``; a large part is already in ``temp_path``
    (``data`` is ``None``) with its first bytes in ``head``. Whoever holds a body
    must either hand it to the sink or :meth:`discard` it.
    """

    index: int
    content_type: str
    temp_path: Path
    size: int
    data: bytes | None
    head: bytes
    sha256: str | None = None

    def discard(self) -> None:
        """Forget the part and delete its temporary file, if any (idempotent)."""
        self.data = None
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()


async def receive_body(
    part: RetrievedPart,
    temp_path: Path,
    *,
    on_bytes: Callable[[int], None] | None = None,
    checksum: bool = False,
) -> PartBody:
    """Receive one part: in memory if small, else into ``temp_path``.

    Memory held: at most :data:`SMALL_PART_BYTES` plus one network chunk. On any
    failure (including cancellation) the temporary file is removed. With
    ``checksum``, a large part's sha256 is computed as it streams (a small part's
    is computed by the sink).
    """
    content_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
    chunks: list[bytes] = []
    size = 0
    sink: BinaryIO | None = None
    digest = hashlib.sha256() if checksum else None
    head = b""
    done = False
    try:
        async for chunk in part:
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            if sink is None:
                chunks.append(chunk)
                if size > SMALL_PART_BYTES:  # a large part: stream it to its file
                    joined = b"".join(chunks)
                    head = joined[:HEADER_PROBE_BYTES]
                    sink = open(temp_path, "xb", buffering=0)  # noqa: SIM115 - closed below
                    sink.write(joined)
                    if digest is not None:
                        digest.update(joined)
                    chunks.clear()
            else:
                if len(head) < HEADER_PROBE_BYTES:
                    head += chunk[: HEADER_PROBE_BYTES - len(head)]
                sink.write(chunk)
                if digest is not None:
                    digest.update(chunk)
        done = True
        if sink is None:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return PartBody(part.index, content_type, temp_path, size, data, data[:0])
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
        if sink is not None:
            sink.close()
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    temp_path.unlink()
