"""Reading DICOM Part-10 bytes: the header values a download needs, and completeness.

Two questions are asked of a part or a file, both without reading pixel data:

- :func:`read_header_values`: the values of a few keywords (UIDs for checks and
  paths, the table's columns), read only up to the last wanted tag: by the fast scan
  of :mod:`kheops_async.headerscan` (explicit VR little endian, nearly every part),
  else by pydicom's element reader.
- :func:`is_complete_part10`: whether a file on disk is a whole Part-10 file (every
  element's length fits the file, and the walk ends exactly at its end) of an
  expected SOPInstanceUID. Used for files the journal does not know (an older tree,
  a kheops-client tree): a file cut short, zeroed or replaced fails it.

Neither touches the process-wide ``warnings`` filter (``warnings.catch_warnings`` is
not thread-safe, and these run in worker threads): values are decoded here from
their raw bytes, with the data set's character sets for non-ASCII text.

pydicom is imported only when a header needs it (another transfer syntax, non-ASCII
text, a binary value): a download of ordinary data never loads it, nor the numpy and
Pillow it imports when they are installed (26-45 MB of resident memory, 110-200 ms).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from kheops_async.errors import InvalidDicomError
from kheops_async.headerscan import scan_explicit_le
from kheops_async.keywords import tag_for

__all__ = [
    "MIN_PART10_SIZE",
    "is_complete_part10",
    "read_header_values",
    "scan_header_values",
]

MIN_PART10_SIZE = 132
"""A DICOM Part-10 file is at least its 128-byte preamble and ``DICM``."""

_TRANSFER_SYNTAX_TAG = 0x00020010
_CHARACTER_SET_TAG = 0x00080005
_HEAD_BYTES = 64 * 1024
"""Bytes of a file read for the fast scan (a header longer than this takes pydicom)."""
_PLAIN_ASCII_VRS = frozenset({"UI", "DA", "TM", "DT", "CS", "AS", "IS", "DS", "AE"})
"""VRs whose bytes are ASCII whatever the Specific Character Set: decoded directly."""


@lru_cache(maxsize=64)
def _header_tags(keywords: tuple[str, ...]) -> tuple[tuple[tuple[str, int], ...], int]:
    """(keyword, tag) pairs of the wanted keywords, and the largest tag among them."""
    pairs = []
    for keyword in dict.fromkeys([*keywords, "SOPInstanceUID"]):
        number = tag_for(keyword)
        if number is not None:
            pairs.append((keyword, number))
    return tuple(pairs), max(tag for _, tag in pairs)


def read_header_values(source: bytes | Path, keywords: Iterable[str]) -> dict[str, str]:
    """Read ``keywords`` from a Part-10 header (bytes or a file), pixels never read.

    Values are text (multiple values joined with ``\\``), ``""`` when absent.
    Raises :class:`InvalidDicomError` when the source is not a DICOM Part-10 file or
    lacks a SOPInstanceUID.
    """
    pairs, last = _header_tags(tuple(keywords))
    try:
        head = bytes(source) if isinstance(source, bytes | bytearray) else _file_head(source)
    except OSError as exc:
        raise InvalidDicomError(f"unreadable file: {exc.strerror or exc}") from None
    fast = _read_explicit_le(head, pairs, last)
    if fast is not None:
        return fast
    return _read_with_pydicom(source, pairs, last)


def scan_header_values(prefix: bytes, keywords: Iterable[str]) -> dict[str, str] | None:
    """``keywords`` from the first bytes of a Part-10 file, or ``None`` when unsure.

    Only the fast scan (:mod:`kheops_async.headerscan`) answers here, which walks the
    elements and gives up on a header cut short by the end of ``prefix``: the caller
    then reads the whole file or part. (pydicom reads a cut-off header without an
    error and returns the values it found, so a truncated copy must never reach it.)
    """
    pairs, last = _header_tags(tuple(keywords))
    return _read_explicit_le(prefix, pairs, last)


def _file_head(path: Path) -> bytes:
    with open(path, "rb") as fp:
        return fp.read(_HEAD_BYTES)


def _read_with_pydicom(
    source: bytes | Path, pairs: tuple[tuple[str, int], ...], last: int
) -> dict[str, str]:
    """The general path: pydicom's element reader, imported now."""
    from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

    try:
        with (
            io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
        ) as fp:
            elements = _read_wanted_elements(fp, pairs, last)
            charset = elements.get(_CHARACTER_SET_TAG)
            values = {keyword: _value_text(elements.get(tag), charset) for keyword, tag in pairs}
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"not a DICOM Part-10 file: {exc}") from None
    except InvalidDicomError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidDicomError(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from None
    if not values.get("SOPInstanceUID"):
        raise InvalidDicomError("the DICOM header has no SOPInstanceUID")
    return values


class _ScannedElement(NamedTuple):
    """A value found by the fast scan, shaped like pydicom's raw element for decoding."""

    VR: str
    value: bytes


Element = Any  # pydicom's RawDataElement / DataElement, or a _ScannedElement


@lru_cache(maxsize=64)
def _wanted_ints(pairs: tuple[tuple[str, int], ...]) -> frozenset[int]:
    return frozenset(tag for _, tag in pairs) | {_CHARACTER_SET_TAG}


def _read_explicit_le(
    data: bytes, pairs: tuple[tuple[str, int], ...], last: int
) -> dict[str, str] | None:
    """The values by the fast scan (:mod:`kheops_async.headerscan`), or ``None``."""
    raw = scan_explicit_le(data, _wanted_ints(pairs), last)
    if raw is None:
        return None
    found_charset = raw.get(_CHARACTER_SET_TAG)
    charset = _ScannedElement(*found_charset) if found_charset is not None else None
    values: dict[str, str] = {}
    for keyword, tag in pairs:
        found = raw.get(tag)
        values[keyword] = "" if found is None else _bytes_text(found[0], found[1], charset)
    return values if values.get("SOPInstanceUID") else None


def _read_wanted_elements(
    fp: BinaryIO, pairs: tuple[tuple[str, int], ...], last: int
) -> dict[int, Element]:
    """The wanted elements (raw) of a Part-10 stream, read with pydicom's element reader.

    Reads the file meta's transfer syntax, then only the element headers up to the
    last wanted tag. Deflated files take pydicom's full path (``read_partial``).
    """
    from pydicom.filereader import data_element_generator, read_partial
    from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

    preamble = fp.read(132)
    if len(preamble) < 132 or preamble[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    meta: dict[int, Element] = {
        element.tag: element
        for element in data_element_generator(
            fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2
        )
    }
    syntax_element = meta.get(_TRANSFER_SYNTAX_TAG)
    syntax = UID(_raw_ascii(syntax_element)) if syntax_element is not None else None
    wanted_tags = [tag for _, tag in pairs]
    if syntax is None or syntax == DeflatedExplicitVRLittleEndian or not syntax.is_transfer_syntax:
        fp.seek(0)
        dataset = read_partial(
            fp,
            stop_when=lambda tag, vr, length: bool(tag > last),
            specific_tags=[*wanted_tags, _CHARACTER_SET_TAG],
        )
        return {tag: dataset[tag] for tag in [*wanted_tags, _CHARACTER_SET_TAG] if tag in dataset}
    # A set, though typed as a list by pydicom: membership is tested per element.
    wanted: Any = {int(tag) for tag in wanted_tags} | {int(_CHARACTER_SET_TAG)}
    elements = data_element_generator(
        fp,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: bool(tag > last),
        specific_tags=wanted,
    )
    return {element.tag: element for element in elements if element.tag in wanted}


def _raw_ascii(element: Element) -> str:
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value)


def _encodings(element: Element | None) -> list[str]:
    """The Python codecs of a (0008,0005) Specific Character Set (ASCII when absent).

    Unknown terms fall back to pydicom's handling (which may warn: odd data only).
    """
    if element is None:
        return ["iso8859"]
    from pydicom.charset import convert_encodings

    terms = [t.strip() for t in _raw_ascii(element).split("\\")]
    return convert_encodings(terms or [""])


_PN_DELIMITERS = {0x5C, 0x5E, 0x3D}
_TEXT_DELIMITERS = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}
"""Backslash (value separator) and pydicom's text-VR delimiters (CR, LF, TAB, FF)."""


def _value_text(element: Element | None, charset: Element | None) -> str:
    """An element's value as text, straight from its raw bytes.

    ASCII bytes (every UID, date, time and code, and most names) are decoded directly;
    other text (ISO 2022 escapes are ASCII bytes too) with the character sets of
    ``charset``, the data set's (0008,0005), through pydicom.
    """
    if element is None:
        return ""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return _bytes_text(element.VR, value, charset)
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _bytes_text(vr: str, value: bytes, charset: Element | None) -> str:
    """A raw text value of VR ``vr`` as text (see :func:`_value_text`).

    Called for every wanted value of every part (the fast scan's values come here
    straight, without an element object).
    """
    if vr in _PLAIN_ASCII_VRS or (value.isascii() and b"\x1b" not in value):
        text = value.decode("ascii", "replace")
    else:
        from pydicom.charset import decode_bytes

        delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
        text = decode_bytes(value, _encodings(charset), delimiters)
    text = text.strip(" \x00")
    return text.rstrip("=") if vr == "PN" else text  # as pydicom shows a name


# --------------------------------------------------------------------------- completeness

_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class _Incomplete(Exception):
    """The walk found an element that does not fit the file."""


class _Walker:
    """Walks a Part-10 data set by element lengths, seeking over values."""

    def __init__(self, fp: BinaryIO, size: int, *, implicit: bool, little: bool) -> None:
        self.fp = fp
        self.size = size
        self.implicit = implicit
        self.order = "<" if little else ">"

    def read(self, count: int) -> bytes:
        data = self.fp.read(count)
        if len(data) != count:
            raise _Incomplete
        return data

    def skip(self, length: int) -> None:
        position = self.fp.tell() + length
        if position > self.size:
            raise _Incomplete
        self.fp.seek(position)

    def element_header(self) -> tuple[int, bytes | None, int]:
        group, element = struct.unpack(self.order + "HH", self.read(4))
        tag = (group << 16) | element
        if group == 0xFFFE or self.implicit:
            (length,) = struct.unpack(self.order + "L", self.read(4))
            return tag, None, length
        vr = self.read(2)
        if vr in _LONG_LENGTH_VRS:
            (length,) = struct.unpack(self.order + "2xL", self.read(6))
        else:
            (length,) = struct.unpack(self.order + "H", self.read(2))
        return tag, vr, length

    def walk(self, end_tag: int | None = None, depth: int = 0) -> None:
        """Walk elements until the end of the file (or ``end_tag`` inside an item)."""
        if depth > _MAX_DEPTH:
            raise _Incomplete
        while True:
            if end_tag is None and self.fp.tell() == self.size:
                return
            tag, _vr, length = self.element_header()
            if tag == end_tag:
                return
            if tag in (_ITEM_END, _SEQUENCE_END):
                raise _Incomplete  # a delimiter where none belongs
            if length == _UNDEFINED:
                self.walk_items(depth + 1)
            else:
                self.skip(length)

    def walk_items(self, depth: int) -> None:
        """Items of an undefined-length sequence (or encapsulated pixel data)."""
        while True:
            tag, _, length = self.element_header()
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise _Incomplete
            if length == _UNDEFINED:
                self.walk(end_tag=_ITEM_END, depth=depth)
            else:
                self.skip(length)


_DEFLATED = "1.2.840.10008.1.2.1.99"
_ENCODINGS = {"1.2.840.10008.1.2": (True, True), "1.2.840.10008.1.2.2": (False, False)}
"""Implicit VR little endian, explicit VR big endian; every other standard transfer
syntax (``1.2.840.10008.1.2.*``) is explicit VR little endian."""


def _encoding_of(syntax: str) -> tuple[bool, bool] | str | None:
    """(implicit VR, little endian), ``"deflated"``, or ``None`` if not a transfer syntax."""
    if syntax == _DEFLATED:
        return "deflated"
    if syntax in _ENCODINGS:
        return _ENCODINGS[syntax]
    if syntax.startswith("1.2.840.10008.1.2."):
        return (False, True)
    from pydicom.uid import UID  # a private or unknown UID: ask pydicom's dictionary

    uid = UID(syntax)
    return (uid.is_implicit_VR, uid.is_little_endian) if uid.is_transfer_syntax else None


def is_complete_part10(path: Path, sop_uid: str) -> bool:
    """Whether ``path`` is a whole DICOM Part-10 file of SOPInstanceUID ``sop_uid``.

    Checks the header's SOPInstanceUID, then walks every element by its length:
    a file cut short, padded, zeroed or holding another instance fails. Reads only
    element headers (a few KB), whatever the file's size. Deflated files are
    accepted on their header alone (their body is one zlib stream).
    """
    try:
        size = os.path.getsize(path)
        if size < MIN_PART10_SIZE:
            return False
        values = read_header_values(path, ("SOPInstanceUID",))
        if values["SOPInstanceUID"] != sop_uid:
            return False
        with open(path, "rb") as raw:
            fp = io.BufferedReader(raw, buffer_size=16 * 1024)
            fp.seek(132)
            meta = _Walker(fp, size, implicit=False, little=True)
            syntax = ""
            while True:  # the file meta group, explicit VR little endian
                start = fp.tell()
                tag, _vr, length = meta.element_header()
                if tag >> 16 != 0x0002:
                    fp.seek(start)
                    break
                if tag == _TRANSFER_SYNTAX_TAG:
                    syntax = meta.read(length).decode("ascii", "replace").strip(" \x00")
                else:
                    meta.skip(length)
            encoding = _encoding_of(syntax)
            if encoding == "deflated":
                return True
            if not isinstance(encoding, tuple):
                return False
            implicit, little = encoding
            _Walker(fp, size, implicit=implicit, little=little).walk()
            return True
    except (_Incomplete, InvalidDicomError, OSError, struct.error, ValueError):
        return False
