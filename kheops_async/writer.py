"""Writing received parts to disk: temporary file, header check, atomic rename.

A part streams into ``<dest>/.kheops-partial/<pid>.<random>.part`` (same file
system as its final place), its DICOM header is read with pydicom (only the tags
needed, never the pixels), and only then is it renamed over its final name. The
bytes are written exactly as received. A crash leaves at most temporary files,
which the next run removes (those whose process is gone); the tree itself never
holds a partial instance.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

from kheops_async.errors import InvalidDicomError
from kheops_async.report import DownloadProgress
from kheops_async.streaming import RetrievedPart

__all__ = [
    "HEADER_PROBE_BYTES",
    "PARTIAL_DIR_NAME",
    "PartialFiles",
    "ReceivedPart",
    "read_header_values",
    "receive_part",
]

PARTIAL_DIR_NAME = ".kheops-partial"
HEADER_PROBE_BYTES = 64 * 1024
"""Bytes of a part's head kept in memory to read its header without a second read."""

PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
"""(7FE0,0010) in little endian: when the head holds it, the header before it is whole."""

REPORT_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "Modality",
    "SeriesDate",
    "SeriesTime",
)


FOREIGN_PARTIAL_MAX_AGE = 24 * 3600.0
"""Seconds after which a temporary file of another host is taken as abandoned."""

_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "localhost"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PartialFiles:
    """The temporary-file area of one destination directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / PARTIAL_DIR_NAME

    def prepare(self) -> int:
        """Create the area and delete files left by dead runs; return how many were removed.

        A file is removed when its run is gone: a PID of this host that no longer
        runs, or any file older than :data:`FOREIGN_PARTIAL_MAX_AGE` (another host
        sharing the directory over a network file system).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        now = time.time()
        for entry in self.directory.iterdir():
            pid_text, _, rest = entry.name.partition(".")
            host = rest.partition(".")[2].removesuffix(".part")
            pid = int(pid_text) if pid_text.isdigit() else -1
            if host == _HOST:
                if pid == os.getpid() or _pid_alive(pid):
                    continue
            else:
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime < FOREIGN_PARTIAL_MAX_AGE:
                        continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
        return removed

    def new_path(self) -> Path:
        """A fresh temporary file name, tagged with this process's PID and host."""
        return self.directory / f"{os.getpid()}.{secrets.token_hex(8)}.{_HOST}.part"

    def remove_if_empty(self) -> None:
        """Drop the area when nothing is left in it (end of a run)."""
        with contextlib.suppress(OSError):
            self.directory.rmdir()


def _element_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def read_header_values(source: bytes | Path, keywords: Iterable[str]) -> dict[str, str]:
    """Read ``keywords`` from a Part-10 header (bytes or a file), pixels never read.

    Raises :class:`InvalidDicomError` when the source is not a DICOM Part-10 file or
    lacks a SOPInstanceUID.
    """
    wanted = list(dict.fromkeys([*keywords, "SOPInstanceUID"]))
    fp: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = dcmread(fp, stop_before_pixels=True, specific_tags=wanted)
            values = {k: _element_text(dataset.get(k)) for k in wanted}
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"not a DICOM Part-10 file: {exc}") from None
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from None
    if not values.get("SOPInstanceUID"):
        raise InvalidDicomError("the DICOM header has no SOPInstanceUID")
    return values


@dataclass
class ReceivedPart:
    """A part written to its temporary file, with its header values and size."""

    temp_path: Path
    size: int
    values: dict[str, str]

    def discard(self) -> None:
        """Delete the temporary file (the part is skipped or invalid)."""
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()

    def commit(self, final_path: Path, *, fsync: bool = False) -> None:
        """Move the temporary file to ``final_path`` atomically (replacing any file)."""
        final_path.parent.mkdir(parents=True, exist_ok=True)
        if fsync:
            fd = os.open(self.temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.temp_path, final_path)
        if fsync:
            dir_fd = os.open(final_path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


async def receive_part(
    part: RetrievedPart,
    partial: PartialFiles,
    keywords: Sequence[str],
    progress: DownloadProgress | None = None,
) -> ReceivedPart:
    """Stream one part into a new temporary file and read its DICOM header.

    Memory held: one network chunk plus at most :data:`HEADER_PROBE_BYTES` of head.
    The temporary file is removed if anything fails (including cancellation), and
    :class:`InvalidDicomError` is raised for a part that is not DICOM.
    """
    content_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
    temp_path = partial.new_path()
    head = bytearray()
    size = 0
    committed = False
    try:
        with open(temp_path, "xb", buffering=0) as sink:
            async for chunk in part:
                size += len(chunk)
                if progress is not None:
                    progress.bytes_done += len(chunk)
                if len(head) < HEADER_PROBE_BYTES:
                    head += chunk[: HEADER_PROBE_BYTES - len(head)]
                sink.write(chunk)
        if content_type != "application/dicom":
            raise InvalidDicomError(
                f"part {part.index} has Content-Type {content_type!r}, not DICOM"
            )
        if size <= HEADER_PROBE_BYTES:
            values = read_header_values(bytes(head), keywords)
        else:
            values = _read_large_part_header(bytes(head), temp_path, keywords)
        committed = True
        return ReceivedPart(temp_path, size, values)
    finally:
        if not committed:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()


def _read_large_part_header(
    head: bytes, temp_path: Path, keywords: Sequence[str]
) -> dict[str, str]:
    """Header of a part larger than the probe: from its head, else from the file.

    The head holds the header in practice (it reaches the pixel data tag); when it
    does not (huge private tags), the header is read from the file.
    """
    if head[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    if PIXEL_DATA_TAG_LE not in head:  # the header runs past the head: read the file
        return read_header_values(temp_path, keywords)
    try:
        return read_header_values(head, keywords)
    except InvalidDicomError:
        return read_header_values(temp_path, keywords)
