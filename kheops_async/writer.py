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
import itertools
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError
from pydicom.filereader import data_element_generator, read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from kheops_async.errors import InvalidDicomError
from kheops_async.report import DownloadProgress
from kheops_async.streaming import RetrievedPart

__all__ = [
    "HEADER_PROBE_BYTES",
    "PARTIAL_DIR_NAME",
    "PartBody",
    "PartialFiles",
    "ReceivedPart",
    "finish_body",
    "read_header_values",
    "receive_body",
    "receive_part",
]

PARTIAL_DIR_NAME = ".kheops-partial"
HEADER_PROBE_BYTES = 64 * 1024
"""Bytes of a large part's head kept in memory to read its header without a second read."""
SMALL_PART_BYTES = 1024 * 1024
"""Parts up to this size are gathered in memory and written in one go (see receive_part)."""

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

_TEMP_COUNTER = itertools.count(secrets.randbits(48))
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
        """A fresh temporary file name, tagged with this process's PID and host.

        Unique within the process by a counter (after a random start), so no
        system randomness is drawn per file.
        """
        return self.directory / f"{os.getpid()}.{next(_TEMP_COUNTER):x}.{_HOST}.part"

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


@lru_cache(maxsize=64)
def _header_tags(keywords: tuple[str, ...]) -> tuple[tuple[tuple[str, BaseTag], ...], BaseTag]:
    """(keyword, tag) pairs of the wanted keywords, and the largest tag among them."""
    pairs = []
    for keyword in dict.fromkeys([*keywords, "SOPInstanceUID"]):
        number = tag_for_keyword(keyword)
        if number is not None:
            pairs.append((keyword, Tag(number)))
    return tuple(pairs), max(tag for _, tag in pairs)


def _value_text(dataset: Dataset, tag: BaseTag) -> str:
    """An element's value as text, straight from its raw bytes when they are ASCII.

    Converting raw elements through pydicom's value machinery costs more than the
    rest of the header read; VRs that are ASCII by definition (UIDs, dates, times,
    codes) need none of it. Text that depends on the character set (names, IDs)
    goes through pydicom, which applies (0008,0005).
    """
    element = dataset.get_item(tag)
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        raw = element.value
        if raw is None:
            return ""
        if element.VR in _PLAIN_ASCII_VRS and isinstance(raw, bytes) and raw.isascii():
            return raw.decode("ascii").strip(" \x00")
        return _element_text(dataset[tag].value)
    return _element_text(element.value)


_PLAIN_ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "CS", "AS", "IS", "DS"})
"""VRs whose bytes are ASCII whatever the Specific Character Set: decoded directly."""


def read_header_values(source: bytes | Path, keywords: Iterable[str]) -> dict[str, str]:
    """Read ``keywords`` from a Part-10 header (bytes or a file), pixels never read.

    Reading stops at the first element after the last wanted tag, so the pixel data
    (and everything else after the wanted tags) is never parsed.
    Raises :class:`InvalidDicomError` when the source is not a DICOM Part-10 file or
    lacks a SOPInstanceUID.
    """
    pairs, last = _header_tags(tuple(keywords))
    try:
        with (
            (
                io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
            ) as fp,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            dataset = _read_wanted_elements(fp, pairs, last)
            values = {keyword: _value_text(dataset, tag) for keyword, tag in pairs}
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"not a DICOM Part-10 file: {exc}") from None
    except InvalidDicomError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from None
    if not values.get("SOPInstanceUID"):
        raise InvalidDicomError("the DICOM header has no SOPInstanceUID")
    return values


_TRANSFER_SYNTAX_TAG = Tag(0x0002, 0x0010)
_CHARACTER_SET_TAG = Tag(0x0008, 0x0005)


def _read_wanted_elements(
    fp: BinaryIO, pairs: tuple[tuple[str, BaseTag], ...], last: BaseTag
) -> Dataset:
    """The wanted elements (raw) of a Part-10 stream, read with pydicom's element reader.

    pydicom's ``dcmread`` builds and converts the whole file meta and every element
    before the wanted ones; this reads the file meta's transfer syntax, then only the
    element headers up to the last wanted tag. Deflated files take pydicom's full path.
    """
    preamble = fp.read(132)
    if len(preamble) < 132 or preamble[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    meta = {
        element.tag: element
        for element in data_element_generator(
            fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
        )
    }
    syntax_element = meta.get(_TRANSFER_SYNTAX_TAG)
    syntax = UID(_raw_text(syntax_element)) if syntax_element is not None else None
    if syntax is None or syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
        fp.seek(0)
        return read_partial(
            fp,
            stop_when=lambda tag, vr, length: bool(tag > last),
            specific_tags=[tag for _, tag in pairs],
        )
    # A set, though typed as a list by pydicom: membership is tested per element.
    wanted: Any = {int(tag) for _, tag in pairs} | {int(_CHARACTER_SET_TAG)}
    elements = data_element_generator(
        fp,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: bool(tag > last),
        specific_tags=wanted,
    )
    return Dataset({element.tag: element for element in elements if element.tag in wanted})


def _raw_text(element: RawDataElement | DataElement) -> str:
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value)


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
        if fsync:
            fd = os.open(self.temp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.replace(self.temp_path, final_path)
        except FileNotFoundError:  # the first file of its directory: make it, once
            if not self.temp_path.exists():
                raise
            final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.temp_path, final_path)
        if fsync:
            dir_fd = os.open(final_path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


@dataclass
class PartBody:
    """A part's body as received, before its header is checked and its file finished.

    Small parts are held in ``data``; a large part is already streaming into
    ``temp_path`` (``data`` is ``None``) with its first bytes in ``head``.
    """

    index: int
    content_type: str
    temp_path: Path
    size: int
    data: bytes | None
    head: bytes

    def discard(self) -> None:
        """Forget the part and delete its temporary file, if any."""
        self.data = None
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()


async def receive_body(
    part: RetrievedPart, partial: PartialFiles, progress: DownloadProgress | None = None
) -> PartBody:
    """Receive one part from the network: in memory if small, else into its temp file.

    A part up to :data:`SMALL_PART_BYTES` is gathered in memory, so that its file
    is created and written later in one go, off the event loop (:func:`finish_body`);
    a larger part streams to its temporary file chunk by chunk. Memory held: at most
    ``SMALL_PART_BYTES`` plus one network chunk. On any failure (including
    cancellation) the temporary file is removed.
    """
    content_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
    temp_path = partial.new_path()
    chunks: list[bytes] = []
    size = 0
    sink: BinaryIO | None = None
    head = bytearray()
    done = False
    try:
        async for chunk in part:
            size += len(chunk)
            if progress is not None:
                progress.bytes_done += len(chunk)
            if sink is None:
                chunks.append(chunk)
                if size > SMALL_PART_BYTES:  # a large part: stream it to its file
                    head += b"".join(chunks)[:HEADER_PROBE_BYTES]
                    sink = open(temp_path, "xb", buffering=0)  # noqa: SIM115 - closed below
                    sink.writelines(chunks)
                    chunks.clear()
            else:
                if len(head) < HEADER_PROBE_BYTES:
                    head += chunk[: HEADER_PROBE_BYTES - len(head)]
                sink.write(chunk)
        done = True
        data = b"".join(chunks) if sink is None else None
        return PartBody(part.index, content_type, temp_path, size, data, bytes(head))
    finally:
        if sink is not None:
            sink.close()
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    temp_path.unlink()


def finish_body(body: PartBody, keywords: Sequence[str]) -> ReceivedPart:
    """Check a received part and complete its temporary file; blocking (run in a thread).

    Reads the DICOM header (before writing a small part, so that a part that is
    not DICOM is never written). Raises :class:`InvalidDicomError`, after deleting
    the temporary file, for a part that is not DICOM.
    """
    try:
        if body.content_type != "application/dicom":
            raise InvalidDicomError(
                f"part {body.index} has Content-Type {body.content_type!r}, not DICOM"
            )
        if body.data is not None:
            values = read_header_values(body.data, keywords)
            with open(body.temp_path, "xb", buffering=0) as sink:
                sink.write(body.data)
            body.data = None
        else:
            values = _read_large_part_header(body.head, body.temp_path, keywords)
    except BaseException:
        body.discard()
        raise
    return ReceivedPart(body.temp_path, body.size, values)


async def receive_part(
    part: RetrievedPart,
    partial: PartialFiles,
    keywords: Sequence[str],
    progress: DownloadProgress | None = None,
) -> ReceivedPart:
    """Receive one part and complete its temporary file (both steps, one after the other).

    The engine runs the two steps in a pipeline instead: the next part is received
    while the previous one is written.
    """
    body = await receive_body(part, partial, progress)
    try:
        return await anyio.to_thread.run_sync(finish_body, body, tuple(keywords))
    except BaseException:
        body.discard()
        raise


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
