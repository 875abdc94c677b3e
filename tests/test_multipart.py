"""Tests for kheops_async.multipart: the incremental multipart/related parser."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kheops_async.errors import MultipartError, TruncatedBodyError
from kheops_async.multipart import (
    MAX_BOUNDARY_LENGTH,
    MAX_HEADER_BYTES,
    MAX_TRANSPORT_PADDING,
    VIEW_MAX_OVERHEAD,
    Event,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    parse_content_type,
)

BOUNDARY = b"kheops-boundary-2f8e1c"
DELIMITER = b"\r\n--" + BOUNDARY

Headers = list[tuple[str, str]]
Part = tuple[Headers, bytes]


def encode(
    parts: list[Part],
    boundary: bytes = BOUNDARY,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"\r\n",
    padding: bytes = b"",
) -> bytes:
    """Build a multipart body; ``preamble`` must end in CRLF if it is not empty."""
    out = [preamble]
    for headers, body in parts:
        out.append(b"--" + boundary + padding + b"\r\n")
        out.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
        out.append(b"\r\n" + body + b"\r\n")
    out.append(b"--" + boundary + b"--" + epilogue)
    return b"".join(out)


def collect(events: Iterable[Event]) -> list[Part]:
    """Turn events into parts, checking the event grammar and that no data is empty."""
    parts: list[Part] = []
    current: tuple[Headers, list[bytes]] | None = None
    for event in events:
        if isinstance(event, PartStart):
            assert current is None, "PartStart inside a part"
            current = (event.headers, [])
        elif isinstance(event, PartData):
            assert current is not None, "PartData outside a part"
            assert len(event.data) > 0, "empty PartData"
            current[1].append(bytes(event.data))
        else:
            assert isinstance(event, PartEnd)
            assert current is not None, "PartEnd outside a part"
            parts.append((current[0], b"".join(current[1])))
            current = None
    assert current is None, "unfinished part"
    return parts


def parse(chunks: Iterable[bytes], boundary: bytes = BOUNDARY) -> list[Part]:
    parser = MultipartParser(boundary)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    assert parser.finished
    result = collect(events)
    assert parser.parts_completed == len(result)
    return result


def blocks(body: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Split ``body`` into consecutive blocks of the given sizes, cycling through them."""
    out: list[bytes] = []
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(body):
            return out
        out.append(body[pos : pos + size])
        pos += size
    raise AssertionError("unreachable")


# A body that exercises the tricky cases: part bodies holding CRLF, "--", prefixes of the
# delimiter and the boundary without its CRLF; an empty part; a part without headers.
PARTS: list[Part] = [
    (
        [("Content-Type", "application/dicom"), ("Content-Length", "61"), ("X-Custom", "a b")],
        b"DICM\r\n--\r\n--" + BOUNDARY[:-1] + b"\r\nxx--" + BOUNDARY + b"\r\n\r\n-" + b"\r",
    ),
    ([("Content-Type", "application/dicom"), ("Content-Length", "0")], b""),
    ([], b"\r\n"),
    (
        [("content-type", "application/octet-stream")],
        b"--" + BOUNDARY[:5] + b"\r\n--" + BOUNDARY[:3],
    ),
]
BODY = encode(PARTS)


def test_reference_body_in_one_chunk() -> None:
    assert parse([BODY]) == PARTS


def test_every_single_split_point() -> None:
    for i in range(len(BODY) + 1):
        assert parse([BODY[:i], BODY[i:]]) == PARTS, i


def test_one_byte_at_a_time() -> None:
    assert parse(BODY[i : i + 1] for i in range(len(BODY))) == PARTS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=20))
def test_random_block_sizes(sizes: list[int]) -> None:
    assert parse(blocks(BODY, sizes)) == PARTS


_PIECES = [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"x", b"\x00", b"\xff", b" "]
_SHORT_BOUNDARY = b"b0"
_body_bytes = st.lists(
    st.sampled_from([*_PIECES, _SHORT_BOUNDARY[:1], _SHORT_BOUNDARY]), max_size=30
).map(b"".join)
_header = st.tuples(
    st.text("ABCXYZ-abc", min_size=1, max_size=8),
    st.text("abc ;=/\"'", max_size=10).map(lambda v: v.strip(" \t")),
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(st.lists(_header, max_size=3), _body_bytes), min_size=1, max_size=4),
    preamble=st.sampled_from([b"", b"\r\n", b"preamble --b0 \r\n", b"\r\n-\r\n--b\r\n"]),
    padding=st.sampled_from([b"", b" ", b"\t \t"]),
    sizes=st.lists(st.integers(1, 16), min_size=1, max_size=8),
)
def test_generated_bodies_in_random_blocks(
    parts: list[Part], preamble: bytes, padding: bytes, sizes: list[int]
) -> None:
    delimiter = b"\r\n--" + _SHORT_BOUNDARY
    for _, body in parts:
        # A part body may not contain the delimiter, nor end with a start of it.
        assume((body + delimiter).find(delimiter) == len(body))
    body = encode(parts, _SHORT_BOUNDARY, preamble=preamble, padding=padding)
    assert parse(blocks(body, sizes), _SHORT_BOUNDARY) == parts
    assert parse([body], _SHORT_BOUNDARY) == parts


def test_boundary_split_across_two_chunks() -> None:
    body = encode([([("A", "1")], b"first"), ([("A", "2")], b"second")])
    start = body.index(DELIMITER)  # the delimiter that ends the first part
    for offset in range(1, len(DELIMITER)):
        cut = start + offset
        parser = MultipartParser(BOUNDARY)
        events = parser.feed(body[:cut])
        # The first part's data is out; only the partial delimiter is held back.
        assert b"".join(e.data for e in events if isinstance(e, PartData)) == b"first"
        assert parser.buffered_bytes == offset
        events += parser.feed(body[cut:]) + parser.close()
        assert collect(events) == [([("A", "1")], b"first"), ([("A", "2")], b"second")]


def test_part_bytes_are_views_of_the_fed_chunk_not_copies() -> None:
    """A part that is a slice of a chunk comes out as a memoryview of that chunk.

    Copying the slices copied each body once more (11 % of the command's instructions
    on one series of 525 KB parts); a part that is a whole chunk comes out as it is.
    """
    body = encode([([("A", "1")], b"first" * 1000), ([("A", "2")], b"second" * 1000)])
    parser = MultipartParser(BOUNDARY)
    data = [e.data for e in parser.feed(body) + parser.close() if isinstance(e, PartData)]
    assert [bytes(d) for d in data] == [b"first" * 1000, b"second" * 1000]
    assert all(isinstance(d, memoryview) and d.obj is body for d in data)
    whole = b"x" * 5000
    parser = MultipartParser(BOUNDARY)
    parser.feed(body[: body.index(b"first")])
    (event,) = parser.feed(whole)
    assert isinstance(event, PartData)
    assert event.data is whole


def test_a_small_slice_of_a_large_chunk_is_copied_not_kept_alive() -> None:
    """A view keeps its whole chunk: one under a quarter of the chunk is copied instead."""
    small, large = b"s" * 100, b"L" * 100_000
    body = encode([([("A", "1")], small), ([("A", "2")], large)])
    parser = MultipartParser(BOUNDARY)
    data = [e.data for e in parser.feed(body) + parser.close() if isinstance(e, PartData)]
    assert [bytes(d) for d in data] == [small, large]
    assert type(data[0]) is bytes
    assert isinstance(data[1], memoryview) and data[1].obj is body
    assert len(body) <= VIEW_MAX_OVERHEAD * len(data[1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "multipart/related; type=application/dicom; boundary=abc123",
            ("multipart/related", {"type": "application/dicom", "boundary": "abc123"}),
        ),
        (
            'Multipart/Related; Type="application/dicom"; BOUNDARY="a b;c=d"',
            ("multipart/related", {"type": "application/dicom", "boundary": "a b;c=d"}),
        ),
        (
            r'multipart/related;boundary="q\"uo\\te";type=x',
            ("multipart/related", {"boundary": 'q"uo\\te', "type": "x"}),
        ),
        (
            "  multipart/related ; boundary = xyz ; flag ; type=a ; type=b",
            ("multipart/related", {"boundary": "xyz", "type": "a"}),
        ),
        ("application/dicom", ("application/dicom", {})),
        ('text/plain; name="unterminated', ("text/plain", {"name": "unterminated"})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@pytest.mark.parametrize(
    ("value", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc-123', b"abc-123"),
        ('multipart/related; type="application/dicom"; boundary="abc:123 x"', b"abc:123 x"),
        ("MULTIPART/MIXED; BOUNDARY=Zz", b"Zz"),
        ("multipart/related; boundary=" + "b" * MAX_BOUNDARY_LENGTH, b"b" * MAX_BOUNDARY_LENGTH),
    ],
)
def test_boundary_from_content_type(value: str, boundary: bytes) -> None:
    assert boundary_from_content_type(value) == boundary


@pytest.mark.parametrize(
    "value",
    [
        "application/dicom; boundary=abc",
        "multipart/related; type=application/dicom",
        'multipart/related; boundary=""',
        "multipart/related; boundary=",
        "multipart/related; boundary=" + "b" * (MAX_BOUNDARY_LENGTH + 1),
        'multipart/related; boundary="tab\there"',
        "multipart/related; boundary=caf\u00e9",
    ],
)
def test_boundary_from_content_type_rejects(value: str) -> None:
    with pytest.raises(MultipartError):
        boundary_from_content_type(value)


@pytest.mark.parametrize("boundary", [b"", b"x" * (MAX_BOUNDARY_LENGTH + 1), b"a\rb", "caf\u00e9"])
def test_parser_rejects_bad_boundary(boundary: bytes | str) -> None:
    with pytest.raises(MultipartError):
        MultipartParser(boundary)


def test_str_boundary_and_bytes_like_input() -> None:
    parser = MultipartParser(BOUNDARY.decode())
    events = parser.feed(bytearray(BODY[:50])) + parser.feed(memoryview(BODY)[50:])
    events += parser.close()
    assert collect(events) == PARTS


@pytest.mark.parametrize(
    "preamble",
    [
        b"\r\n",
        b"This is a preamble.\r\n",
        b"--" + BOUNDARY[:-1] + b"\r\n-- " + BOUNDARY + b"\r\nx--" + BOUNDARY + b"\r\n",
        b"\r\n--" + BOUNDARY[:-1] + b"\r\n",
    ],
)
def test_preamble_is_discarded(preamble: bytes) -> None:
    body = encode(PARTS, preamble=preamble)
    assert parse([body]) == PARTS
    assert parse(body[i : i + 1] for i in range(len(body))) == PARTS


def test_epilogue_is_ignored_and_not_buffered() -> None:
    parser = MultipartParser(BOUNDARY)
    events = parser.feed(encode(PARTS, epilogue=b"\r\nepilogue, with --" + BOUNDARY + b"--\r\n"))
    assert parser.finished
    for _ in range(100):
        assert parser.feed(b"\r\n--" + BOUNDARY + b"\r\n" + b"e" * 10_000) == []
        assert parser.buffered_bytes == 0
    assert collect(events + parser.close()) == PARTS


def test_body_may_start_directly_with_boundary_or_with_crlf() -> None:
    assert BODY.startswith(b"--" + BOUNDARY)
    assert parse([b"\r\n" + BODY]) == PARTS


@pytest.mark.parametrize("padding", [b" ", b"\t", b" \t  \t", b" " * MAX_TRANSPORT_PADDING])
def test_transport_padding_after_delimiter(padding: bytes) -> None:
    body = encode(PARTS, padding=padding)
    assert parse([body]) == PARTS
    assert parse(blocks(body, [3, 1, 7])) == PARTS


def test_transport_padding_is_bounded() -> None:
    body = encode(PARTS, padding=b" " * (MAX_TRANSPORT_PADDING + 1))
    with pytest.raises(MultipartError, match="MAX_TRANSPORT_PADDING"):
        parse([body])
    with pytest.raises(MultipartError, match="MAX_TRANSPORT_PADDING"):
        parse(blocks(body, [1]))


def test_close_delimiter_with_padding_and_no_final_crlf() -> None:
    assert parse([encode(PARTS, epilogue=b"  \r\n")]) == PARTS
    assert parse([encode(PARTS, epilogue=b"")]) == PARTS


def test_body_without_parts() -> None:
    parser = MultipartParser(BOUNDARY)
    assert parser.feed(b"--" + BOUNDARY + b"--\r\n") == []
    assert parser.close() == []
    assert parser.finished
    assert parser.parts_completed == 0


def test_truncated_at_every_point() -> None:
    full = encode(PARTS, epilogue=b"")  # ends with the closing "--"
    assert parse([full]) == PARTS
    for i in range(len(full)):
        for chunks in ([full[:i]], blocks(full[:i], [5, 1, 2])):
            parser = MultipartParser(BOUNDARY)
            for chunk in chunks:
                parser.feed(chunk)
            assert not parser.finished
            with pytest.raises(TruncatedBodyError, match="closing delimiter"):
                parser.close()


@pytest.mark.parametrize(
    ("end", "where"),
    [
        (b"", "in the preamble"),
        (b"--" + BOUNDARY[:4], "in the preamble"),
        (b"--" + BOUNDARY, "right after the delimiter that opens the body"),
        (b"Content-Length: 0", "inside the headers of part 2"),
        (b"DICM\r\n-", "inside the body of part 1, 7 bytes into it"),
        (BOUNDARY[:5] + b"\r\n--" + BOUNDARY[:3], "inside the body of part 4, 14 bytes into it"),
        (BOUNDARY[:3] + DELIMITER, "right after the delimiter that ended part 4"),
        (BOUNDARY[:3] + DELIMITER + b"-", "right after the delimiter that ended part 4"),
    ],
)
def test_truncation_message_says_where(end: bytes, where: str) -> None:
    body = encode(PARTS, epilogue=b"")
    parser = MultipartParser(BOUNDARY)
    parser.feed(body[: body.index(end) + len(end)])
    with pytest.raises(TruncatedBodyError) as excinfo:
        parser.close()
    assert where in str(excinfo.value)


def test_header_block_limit() -> None:
    def body_with_header_block(size: int) -> bytes:
        line_bytes = size - 2  # the empty line's CRLF ends the block
        value = "v" * (line_bytes - len("X-Big: ") - 2)
        return encode([([("X-Big", value)], b"data")])

    exact = body_with_header_block(MAX_HEADER_BYTES)
    assert parse([exact])[0][0] == [("X-Big", "v" * (MAX_HEADER_BYTES - 11))]
    assert parse(blocks(exact, [1000]))[0][1] == b"data"
    too_big = body_with_header_block(MAX_HEADER_BYTES + 1)
    with pytest.raises(MultipartError, match="MAX_HEADER_BYTES") as excinfo:
        parse(blocks(too_big, [1000]))
    assert not isinstance(excinfo.value, TruncatedBodyError)


def test_endless_header_block_fails_without_buffering_more() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY + b"\r\n")
    with pytest.raises(MultipartError, match="exceeds"):  # noqa: PT012
        for _ in range(100):
            parser.feed(b"X-Header: value\r\n" * 100)
            assert parser.buffered_bytes <= MAX_HEADER_BYTES + 2
    with pytest.raises(MultipartError, match="already failed"):
        parser.feed(b"more")
    with pytest.raises(MultipartError, match="already failed"):
        parser.close()


def test_part_headers_preserved() -> None:
    headers = [
        ("Content-Type", 'application/dicom; transfer-syntax="1.2.840.10008.1.2.4.90"'),
        ("Content-Length", "4"),
        ("MIME-Version", "1.0"),
        ("X-Custom-Header", "value with  inner   spaces"),
        ("content-location", "/studies/1.2.3"),
    ]
    body = encode([(headers, b"DICM")]).replace(b"X-Custom-Header: ", b"X-Custom-Header:\t  ")
    parser = MultipartParser(BOUNDARY)
    start = parser.feed(body)[0]
    assert isinstance(start, PartStart)
    assert start.headers == headers
    assert start.get("content-type") == headers[0][1]
    assert start.get("CONTENT-LENGTH") == "4"
    assert start.get("Content-Location") == "/studies/1.2.3"
    assert start.get("x-custom-header") == "value with  inner   spaces"
    assert start.get("Missing") is None
    assert start.get("Missing", "default") == "default"


def test_folded_header_is_unfolded() -> None:
    body = b"--" + BOUNDARY + b"\r\nX-Long: first\r\n  second\r\n\tthird\r\nA: b\r\n\r\nz\r\n"
    body += b"--" + BOUNDARY + b"--"
    assert parse([body]) == [([("X-Long", "first second third"), ("A", "b")], b"z")]


@pytest.mark.parametrize(
    "head",
    [
        b"no colon here\r\n",
        b": no name\r\n",
        b"  continuation first\r\n",
        b"A: lf only\nB: c\r\n",
        b"A: bare cr\rB: c\r\n",
    ],
)
def test_malformed_header_lines(head: bytes) -> None:
    body = b"--" + BOUNDARY + b"\r\n" + head + b"\r\nbody\r\n--" + BOUNDARY + b"--"
    with pytest.raises(MultipartError, match="header"):
        parse([body])


@pytest.mark.parametrize("after", [b"x", b"-x", b" x", b"\rx", b" \r\r\n"])
def test_garbage_after_delimiter(after: bytes) -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(encode(PARTS[:1], epilogue=b"")[: -len(b"\r\n--" + BOUNDARY + b"--")])
    with pytest.raises(MultipartError, match="after the delimiter that ended part 1"):
        parser.feed(DELIMITER + after)


def test_feed_after_close_is_an_error() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(BODY)
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        parser.feed(b"x")


def test_progress_properties() -> None:
    parser = MultipartParser(BOUNDARY)
    cut = BODY.index(DELIMITER) + len(DELIMITER)  # the delimiter that ends part 1
    parser.feed(BODY[: cut - 1])
    assert parser.parts_completed == 0
    parser.feed(BODY[cut - 1 : cut])
    assert parser.parts_completed == 1
    assert not parser.finished
    parser.feed(BODY[cut:])
    assert parser.parts_completed == len(PARTS)
    assert parser.finished


def test_chunk_inside_a_part_is_emitted_without_copy() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(b"--" + BOUNDARY + b"\r\n\r\n")
    chunk = bytes(range(256)).replace(b"\r", b"") * 256
    (event,) = parser.feed(chunk)
    assert isinstance(event, PartData)
    assert event.data is chunk
    # A CR near the end that cannot begin the delimiter is not held back either.
    chunk = b"a" * 1000 + b"\rzz"
    (event,) = parser.feed(chunk)
    assert isinstance(event, PartData)
    assert event.data is chunk
    assert parser.buffered_bytes == 0


def test_repr_of_data_event_does_not_dump_bytes() -> None:
    assert repr(PartData(b"x" * 100_000)) == "PartData(<100000 bytes>)"


@pytest.mark.timeout(20)
def test_200_mb_part_streamed_with_bounded_memory() -> None:
    # Every 64 KiB block ends with a partial delimiter, so each chunk boundary carries.
    block = random.Random(1).randbytes(64 * 1024 - 10) + DELIMITER[:10]
    repeats = 3200  # 200 MiB
    expected = hashlib.sha256()
    for _ in range(repeats):
        expected.update(block)

    parser = MultipartParser(BOUNDARY)
    digest = hashlib.sha256()
    total = 0
    ends = 0

    def consume(events: list[Event]) -> None:
        nonlocal total, ends
        for event in events:
            if isinstance(event, PartData):
                digest.update(event.data)
                total += len(event.data)
            elif isinstance(event, PartEnd):
                ends += 1

    consume(parser.feed(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"))
    for _ in range(repeats):
        consume(parser.feed(block))
        assert parser.buffered_bytes <= len(DELIMITER) - 1
    consume(parser.feed(DELIMITER + b"--\r\n"))
    consume(parser.close())
    assert ends == 1
    assert total == len(block) * repeats
    assert digest.hexdigest() == expected.hexdigest()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "content",
    [
        b"\r\n" * 1_000_000,
        (b"\r\n--" + BOUNDARY[:-1]) * 50_000,
        (b"\r" + b"\r\n--" + BOUNDARY[:-1] + b"\n") * 50_000,
    ],
    ids=["crlf", "near-boundary", "near-boundary-cr"],
)
def test_worst_case_bodies(content: bytes) -> None:
    parts: list[Part] = [([("Content-Type", "application/dicom")], content), ([], b"end")]
    body = encode(parts)
    assert parse([body]) == parts
    assert parse(blocks(body, [64 * 1024])) == parts
    assert parse(blocks(body, [8 * 1024 + 3, 1, 999])) == parts
