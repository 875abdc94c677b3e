"""The settings of one download, declared once for the library and the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kheops_async.defaults import DEFAULT_CONCURRENCY
from kheops_async.errors import ConfigurationError

if TYPE_CHECKING:
    from kheops_async.engine.deletion import Deleted
from kheops_async.layout import Layout
from kheops_async.records import FrozenPublicRecord
from kheops_async.report import InstanceRecord
from kheops_async.retry import RetryPolicy
from kheops_async.shards import Shard

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_OUTAGE_THRESHOLD",
    "DownloadSettings",
    "InstanceCallback",
    "MetadataMode",
]


DEFAULT_OUTAGE_THRESHOLD = 24
"""Failed attempts in a row, across every series, with no part committed anywhere in
between, after which the run stops (:class:`~kheops_async.errors.ServerUnavailableError`):
three per request slot at the default concurrency. A server that hangs until the read
timeout stops the run sooner: 8 such failures with nothing committed for 120 s (see
:mod:`~kheops_async.engine.breaker`). Measured at default settings, an outage of a
200-series archive (every answer cut after 1.5 KB) ends the run in about 5 s."""

MetadataMode = Literal["series", "instance"]
InstanceCallback = Callable[[InstanceRecord], None]


@dataclass(frozen=True, init=False, repr=False, eq=False)
class DownloadSettings(FrozenPublicRecord):
    """How a download runs. Every option of ``download()`` and ``kheops-async download``.

    - ``concurrency``: requests in flight at most (``None``: the client's setting).
    - ``layout``: path template of each file.
    - ``force``: rewrite every file, trusting neither the tree nor the journal.
    - ``fsync``: flush each file (and its directory) to stable storage before and
      after its rename.
    - ``sink_in_thread``: check and write every part from a worker thread, never on the
      event loop (by default small parts are written on the loop, about a millisecond
      per batch, which costs less CPU: see :mod:`~kheops_async.engine.placement`); for
      a service whose event loop must never wait for the disk.
    - ``checksum``: compute each file's sha256 while it streams, kept in the journal.
    - ``connections_ahead``: connections kept open ahead of the requests, for servers
      that close each connection after a retrieve, as Orthanc does (``None``: half the
      concurrency, at most 8; 0: none; see :mod:`~kheops_async.connect_ahead`).
    - ``dry_run``: plan and list only; nothing written, no bulk data retrieved.
    - ``metadata_only``: save WADO-RS metadata as DICOM JSON instead of instances.
    - ``table``: a CSV file the instance table is streamed to, row by row.
    - ``on_instance``: called with each instance's record as it is done.
    - ``outage_threshold``: see :data:`DEFAULT_OUTAGE_THRESHOLD` (0: never stop).
    - ``shard``: only the studies of this shard (:class:`~kheops_async.shards.Shard`),
      with a journal of its own.
    - ``incremental``: sync (:func:`~kheops_async.sync`): a listed study whose instance
      count and files match the journals is left alone, with no further request.
    - ``deep``: with ``incremental``, list the instances of every series and compare
      them one by one (one query per series): finds what the server replaced with the
      counts unchanged, at the cost of the fast path.
    - ``delete``: with ``incremental``, remove the local instances the server no longer
      lists, only after a run with no failure (see :mod:`~kheops_async.engine.deletion`);
      ``on_deleted`` is called with each (in a dry run: each that would go).
    """

    concurrency: int | None = None
    layout: Layout = field(default_factory=Layout)
    force: bool = False
    fsync: bool = False
    sink_in_thread: bool = False
    checksum: bool = False
    connections_ahead: int | None = None
    dry_run: bool = False
    metadata_only: MetadataMode | None = None
    transfer_syntax: str = "*"
    retry: RetryPolicy | None = None
    table: Path | None = None
    on_instance: InstanceCallback | None = None
    outage_threshold: int = DEFAULT_OUTAGE_THRESHOLD
    shard: Shard | None = None
    incremental: bool = False
    deep: bool = False
    delete: bool = False
    on_deleted: Callable[[Deleted], None] | None = None

    def __init__(
        self,
        concurrency: int | None = None,
        layout: Layout | None = None,
        force: bool = False,
        fsync: bool = False,
        sink_in_thread: bool = False,
        checksum: bool = False,
        connections_ahead: int | None = None,
        dry_run: bool = False,
        metadata_only: MetadataMode | None = None,
        transfer_syntax: str = "*",
        retry: RetryPolicy | None = None,
        table: Path | None = None,
        on_instance: InstanceCallback | None = None,
        outage_threshold: int = DEFAULT_OUTAGE_THRESHOLD,
        shard: Shard | None = None,
        incremental: bool = False,
        deep: bool = False,
        delete: bool = False,
        on_deleted: Callable[[Deleted], None] | None = None,
    ) -> None:
        object.__setattr__(self, "concurrency", concurrency)
        object.__setattr__(self, "layout", Layout() if layout is None else layout)
        object.__setattr__(self, "force", force)
        object.__setattr__(self, "fsync", fsync)
        object.__setattr__(self, "sink_in_thread", sink_in_thread)
        object.__setattr__(self, "checksum", checksum)
        object.__setattr__(self, "connections_ahead", connections_ahead)
        object.__setattr__(self, "dry_run", dry_run)
        object.__setattr__(self, "metadata_only", metadata_only)
        object.__setattr__(self, "transfer_syntax", transfer_syntax)
        object.__setattr__(self, "retry", retry)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "on_instance", on_instance)
        object.__setattr__(self, "outage_threshold", outage_threshold)
        object.__setattr__(self, "shard", shard)
        object.__setattr__(self, "incremental", incremental)
        object.__setattr__(self, "deep", deep)
        object.__setattr__(self, "delete", delete)
        object.__setattr__(self, "on_deleted", on_deleted)
        self.__post_init__()

    def __post_init__(self) -> None:
        if isinstance(self.layout, str):
            object.__setattr__(self, "layout", Layout(self.layout))
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if self.connections_ahead is not None and self.connections_ahead < 0:
            raise ConfigurationError("connections_ahead must be >= 0")
        if self.metadata_only not in (None, "series", "instance"):
            raise ConfigurationError("metadata_only must be 'series', 'instance' or None")
        if self.outage_threshold < 0:
            raise ConfigurationError("outage_threshold must be >= 0")
        if (self.delete or self.deep) and not self.incremental:
            raise ConfigurationError("delete and deep are sync options (incremental=True)")

    def with_options(self, **options: Any) -> DownloadSettings:
        """A copy with some options changed; unknown names raise ConfigurationError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(f"unknown download option(s): {', '.join(unknown)}")
        return replace(self, **options)  # __post_init__ turns a layout string into a Layout
