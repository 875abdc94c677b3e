"""A fault-injecting, Kheops-like DICOMweb server for tests Orthanc cannot cover.

The server speaks real HTTP/1.1 over a real TCP socket on ``127.0.0.1`` (never any
other interface), from background threads, so the same instance serves asyncio and
trio tests, plain ``httpx`` tests and CLI subprocesses alike::

    archive = FakeArchive([...])
    with FakeDicomWebServer(archive, token="secret") as srv:
        srv.add_fault("/series/1.2.3", Status(503, retry_after=0.1), times=2)
        ...  # talk to srv.base_url == "http://127.0.0.1:PORT/api"
        assert srv.max_in_flight <= 4

What it imitates, and where it departs from a real server:

- **Kheops** (the default): base path ``/api``; Bearer, Basic (token as password) and
  ``/api/link/<token>/...`` credentials; ``album``/``inbox`` narrowing with 400/403;
  QIDO at ``/studies``, ``/studies/{S}/series``, ``/studies/{S}/series/{R}/instances`` and
  ``/studies/{S}/instances`` only (root ``/series`` and ``/instances`` are 404);
  ``X-Total-Count`` on every QIDO answer; ``204`` for an empty page; ``limit >= 1`` and
  ``offset >= 0`` or 400; unknown study-level filter keys (``Modality``) silently ignored;
  the two spellings of the truncation ``Warning`` header; ``RetrieveURL`` carrying the
  link token in link mode; chunked WADO-RS answers (``framing="chunked"``).
- **Orthanc** WADO-RS framing on request: ``framing="eof"`` answers with
  ``Connection: close``, no ``Content-Length``, no chunking, body ended by EOF, and an
  unquoted 70-character boundary; ``keepalive_timeout=1.0`` mimics its idle-connection
  closing.
- **dcm4chee / Google / Azure** paging: ``max_results`` caps every QIDO answer and adds the
  ``Warning: 299`` header; ``ignore_offset`` imitates a broken server that always answers
  the first page; ``require_transfer_syntax_star`` imitates Azure's 406.

Everything a real server would validate is deliberately left unvalidated: QIDO and WADO
answer with whatever UIDs the archive holds (``../../evil`` included), and a part's bytes
are sent as stored even when they are not DICOM.

Faults (:class:`Status`, :class:`ResetAfter`, :class:`TruncateAfter`, :class:`CloseAfter`,
:class:`StallAfter`, :class:`Delay`, :class:`NotDicomPart`, :class:`OmitInstances`,
:class:`Framing`) are scripted with :meth:`FakeDicomWebServer.add_fault`; each request
consumes at most one fault. Every request is recorded (:attr:`FakeDicomWebServer.requests`)
and concurrency is measured (:attr:`FakeDicomWebServer.max_in_flight`).

Shutdown (``close()`` / leaving the ``with`` block) is bounded: delays and stalls wake up,
every open connection is shut down, every thread is joined and every socket is closed, so
tests running with ``-W error`` see no ``ResourceWarning``.

Modules (import from the package, ``from fakeserver import ...``; the modules are internal):

- :mod:`fakeserver.archive`: the test archive model and its builders (:class:`FakeInstance`,
  :class:`InstanceLike`, :func:`parse_part10`, :class:`FakeArchive`, :func:`make_instance`,
  :func:`make_tree_archive`).
- :mod:`fakeserver.faults`: :class:`Fault` and every fault class, with their argument checks.
- :mod:`fakeserver.wire`: the HTTP/1.1 plumbing (request reader, response, body writer,
  socket helpers, reason phrases).
- :mod:`fakeserver.matching`: QIDO matching (media ranges, wildcard matching, attribute
  values of studies, series and instances, study rows).
- :mod:`fakeserver.server`: :class:`FakeDicomWebServer` and :class:`RequestRecord`: threads,
  routing, authentication, QIDO and WADO-RS answers, fault application.
"""

from __future__ import annotations

from .archive import (
    FakeArchive,
    FakeInstance,
    InstanceLike,
    make_instance,
    make_tree_archive,
    parse_part10,
)
from .faults import (
    CloseAfter,
    Delay,
    Fault,
    Framing,
    NotDicomPart,
    OmitInstances,
    ResetAfter,
    StallAfter,
    Status,
    TruncateAfter,
)
from .server import FakeDicomWebServer, RequestRecord

__all__ = [
    "CloseAfter",
    "Delay",
    "FakeArchive",
    "FakeDicomWebServer",
    "FakeInstance",
    "Fault",
    "Framing",
    "InstanceLike",
    "NotDicomPart",
    "OmitInstances",
    "RequestRecord",
    "ResetAfter",
    "StallAfter",
    "Status",
    "TruncateAfter",
    "make_instance",
    "make_tree_archive",
    "parse_part10",
]
