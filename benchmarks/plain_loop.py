"""What plain Python reaches on this machine with the system calls a downloader must make.

Usage::

    python benchmarks/plain_loop.py LISTING -P N

``LISTING`` holds lines ``OUT URL`` (as ``curl xargs`` is given them): each series'
WADO-RS URL and where its instances go. At most ``N`` series are fetched at a time, by
one thread with non-blocking sockets and ``selectors``; each answer is split into its
parts as it arrives, and each part is written to a temporary file then renamed to
``OUT/<index>.dcm``: per instance the ``open`` / ``write`` / ``close`` / ``rename`` of
kheops-async's sink, with reads of up to 1 MiB, and nothing else. No HTTP library, no
event-loop framework, no header check, no journal, no retry: the floor of a Python
downloader that writes one file per instance, measured in the same run as the tools
(``run_all.py``'s "python loop -P N" rows). A failure (a status other than 200, a body
that is not multipart, chunked framing, a truncated answer) stops it with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
from urllib.parse import urlsplit

READ_SIZE = 1 << 20
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class Fetch:
    """One series: its connection, the answer's framing and the part being written."""

    def __init__(self, out: str, url: str) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: {ACCEPT}\r\n"
            "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
        ).encode()
        self.out = out
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(self.address)
        self.buffer = bytearray()
        self.in_headers = True
        self.remaining: int | None = None  # Content-Length left, when the server gave one
        self.delimiter = b""
        self.state = "preamble"  # preamble, part-headers, part-body, done
        self.fd: int | None = None
        self.parts = 0

    def answer_headers(self) -> bool:
        """Parse the status line and headers once they are in; False while incomplete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        if head[0].split()[1] != "200":
            raise SystemExit(f"{self.out}: {head[0]}")
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            raise SystemExit(f"{self.out}: chunked framing is not handled here")
        if "content-length" in fields:
            self.remaining = int(fields["content-length"]) - len(self.buffer)
        boundary = ""
        for item in fields.get("content-type", "").split(";"):
            key, _, value = item.strip().partition("=")
            if key.lower() == "boundary":
                boundary = value.strip('"')
        if not boundary:
            raise SystemExit(f"{self.out}: not a multipart answer")
        self.delimiter = b"\r\n--" + boundary.encode()
        self.buffer[:0] = b"\r\n"  # the first delimiter then looks like the others
        os.makedirs(self.out, exist_ok=True)
        self.in_headers = False
        return True

    def split(self, final: bool) -> None:
        """Write what the buffer holds of the parts; ``final``: the body has ended."""
        buffer, delimiter = self.buffer, self.delimiter
        while self.state != "done":
            if self.state == "part-body":
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter) + 1
                    if len(buffer) > keep:
                        self._write(len(buffer) - keep)
                    if final:
                        raise SystemExit(f"{self.out}: the answer ended inside a part")
                    return
                self._write(at)
                self._finish_part()
                self.state = "preamble"
            if self.state == "preamble":  # at a delimiter: then "--" (the end) or a line end
                at = buffer.find(delimiter)
                if at < 0 or len(buffer) < at + len(delimiter) + 2:
                    break
                after = at + len(delimiter)
                if buffer[after : after + 2] == b"--":
                    self.state = "done"
                    break
                line_end = buffer.find(b"\r\n", after)
                if line_end < 0:
                    break
                del buffer[: line_end + 2]
                self.state = "part-headers"
            if self.state == "part-headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                del buffer[: end + 4]
                self.fd = os.open(self._temp(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                self.state = "part-body"
        if final and self.state != "done":
            raise SystemExit(f"{self.out}: the answer ended before its closing delimiter")

    def _temp(self) -> str:
        return f"{self.out}/.{self.parts}.partial"

    def _write(self, count: int) -> None:
        assert self.fd is not None
        view = memoryview(self.buffer)[:count]
        while view:
            view = view[os.write(self.fd, view) :]
        view.release()
        del self.buffer[:count]

    def _finish_part(self) -> None:
        assert self.fd is not None
        os.close(self.fd)
        self.fd = None
        os.rename(self._temp(), f"{self.out}/{self.parts}.dcm")
        self.parts += 1


def run(listing: list[tuple[str, str]], concurrency: int) -> int:
    """Fetch every series of ``listing``, ``concurrency`` at a time; the parts written."""
    selector = selectors.DefaultSelector()
    pending = list(reversed(listing))
    written = 0

    def start() -> None:
        fetch = Fetch(*pending.pop())
        selector.register(fetch.sock, selectors.EVENT_WRITE, fetch)

    for _ in range(min(concurrency, len(pending))):
        start()
    while selector.get_map():
        ready = selector.select(timeout=60)
        if not ready:
            raise SystemExit("no progress in 60 s")
        for key, events in ready:
            fetch: Fetch = key.data
            if events & selectors.EVENT_WRITE:  # connected: send the request, then read
                error = fetch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise SystemExit(f"{fetch.out}: {os.strerror(error)}")
                fetch.sock.sendall(fetch.request)
                selector.modify(fetch.sock, selectors.EVENT_READ, fetch)
                continue
            data = fetch.sock.recv(READ_SIZE)
            if data:
                fetch.buffer += data
                if fetch.remaining is not None:
                    fetch.remaining -= len(data)
            if fetch.in_headers and not fetch.answer_headers():
                if not data:
                    raise SystemExit(f"{fetch.out}: no answer")
                continue
            ended = not data or fetch.remaining == 0
            fetch.split(final=ended)
            if fetch.state == "done" or ended:
                selector.unregister(fetch.sock)
                fetch.sock.close()
                written += fetch.parts
                if pending:
                    start()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listing", help="lines 'OUT URL', one per series")
    parser.add_argument("-P", type=int, default=8, dest="concurrency", help="series at a time")
    args = parser.parse_args()
    with open(args.listing) as lines:
        listing = [tuple(line.split(maxsplit=1)) for line in lines if line.strip()]
    written = run([(out, url.strip()) for out, url in listing], args.concurrency)
    print(f"{written} parts written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
