"""The fast path of header reading: explicit VR little endian bytes, scanned with struct.

Nearly every part a DICOMweb server sends is explicit VR little endian (the default
syntax and every compressed one). For those, :func:`scan_explicit_le` finds the raw
values of the wanted tags by walking element headers in the buffer with
``struct.unpack_from``: no stream, no element objects, no value conversion. Measured
on 1 KB instances, pydicom's element generator spent about 57 % of the sink's
time here (``benchmarks/RESULTS.md``).

It answers only when it is sure: anything else (implicit VR, big endian, deflate, an
unknown transfer syntax, a wanted value with a binary VR, a malformed or cut-off
header) returns ``None``, and :func:`kheops_async.dicomfile.read_header_values` reads
the header with pydicom as before. Text is decoded by the caller, with pydicom's
character-set handling for non-ASCII values.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

__all__ = ["RawValue", "scan_explicit_le"]

RawValue = tuple[str, bytes]
"""An element's VR and its raw value bytes."""

_ELEMENT = struct.Struct("<HH2sH")  # tag, VR, and a short VR's length (reserved for a long VR)
_LONG_LENGTH = struct.Struct("<L")
_TAG_AND_LENGTH = struct.Struct("<HHL")

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip
_KNOWN_VRS = _LONG_VRS | {
    vr.encode()
    for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN",
               "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US")
}  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_TRANSFER_SYNTAX = 0x00020010
_META_WANTED = frozenset({_TRANSFER_SYNTAX})
_META_LAST = 0x0002FFFF
"""The file meta group: every element of group 0002, read for its transfer syntax."""
_NOT_EXPLICIT_LE = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)  # implicit VR little endian, explicit big endian, deflated
_STANDARD_PREFIX = "1.2.840.10008.1.2."


class _Unsure(Exception):
    """The scan cannot answer for certain: the caller takes pydicom's path."""


def scan_explicit_le(data: bytes, wanted: Collection[int], last: int) -> dict[int, RawValue] | None:
    """The raw values of ``wanted`` tags (ints) of a Part-10 buffer, or ``None`` if unsure.

    ``last`` is the largest wanted tag: the scan stops at the first element past it.
    Only standard explicit VR little endian transfer syntaxes are scanned.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        meta, position = _scan_data_set(data, 132, _META_WANTED, _META_LAST)
        raw_syntax = meta.get(_TRANSFER_SYNTAX, ("UI", b""))[1]
        syntax = raw_syntax.decode("ascii", "replace").strip(" \x00")
        if syntax in _NOT_EXPLICIT_LE or not syntax.startswith(_STANDARD_PREFIX):
            return None
        return _scan_data_set(data, position, wanted, last)[0]
    except (_Unsure, struct.error):
        return None


def _element_header(data: bytes, position: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value position) of the element at ``position``."""
    group, element, vr, length = _ELEMENT.unpack_from(data, position)
    if vr in _LONG_VRS:
        (length,) = _LONG_LENGTH.unpack_from(data, position + 8)
        return (group << 16) | element, vr, length, position + 12
    if vr in _KNOWN_VRS:
        return (group << 16) | element, vr, length, position + 8
    raise _Unsure  # an unknown VR, or not explicit VR at all


def _scan_data_set(
    data: bytes, position: int, wanted: Collection[int], last: int
) -> tuple[dict[int, RawValue], int]:
    """The wanted elements from ``position`` to the first tag past ``last``, and where
    that element starts (the file meta group is scanned so too, up to the data set)."""
    found: dict[int, RawValue] = {}
    size = len(data)
    unpack_element = _ELEMENT.unpack_from  # _element_header, inlined: the hot loop
    while position + 8 <= size:
        group, element, vr, length = unpack_element(data, position)
        if vr in _LONG_VRS:
            (length,) = _LONG_LENGTH.unpack_from(data, position + 8)
            start = position + 12
        elif vr in _KNOWN_VRS:
            start = position + 8
        else:
            raise _Unsure
        tag = (group << 16) | element
        if tag > last:
            return found, position
        if length == _UNDEFINED:
            if tag in wanted:
                raise _Unsure
            position = _skip_items(data, start, 1)
            continue
        end = start + length
        if end > size:
            raise _Unsure  # the buffer ends inside a value we may need
        if tag in wanted:
            text_vr = vr.decode("ascii")
            if text_vr not in _TEXT_VRS:
                raise _Unsure  # a binary value: pydicom converts it
            found[tag] = (text_vr, data[start:end])
        position = end
    raise _Unsure  # the buffer ended before the last wanted tag


def _skip_items(data: bytes, position: int, depth: int) -> int:
    """Skip the items of an undefined-length sequence; return the position after it."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    while True:
        group, element, length = _TAG_AND_LENGTH.unpack_from(data, position)
        tag = (group << 16) | element
        position += 8
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise _Unsure
        if length != _UNDEFINED:
            position += length
            continue
        while True:  # an undefined-length item: its elements, up to the item delimiter
            group, element = struct.unpack_from("<HH", data, position)
            if (group << 16) | element == _ITEM_END:
                position += 8
                break
            _tag, _vr, length, start = _element_header(data, position)
            position = (
                _skip_items(data, start, depth + 1) if length == _UNDEFINED else start + length
            )
        if position > len(data):
            raise _Unsure
