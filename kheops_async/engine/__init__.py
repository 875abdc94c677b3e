"""The download engine: targets in, a complete and verified output tree out.

``await download(client, targets, dest)`` expands the targets into series (QIDO),
completes the series concurrently through a bounded pool of workers, and returns
the totals of the run. Its parts, one job each:

- :mod:`~kheops_async.engine.settings`: the options of a run (library and CLI alike);
- :mod:`~kheops_async.engine.planning`: targets into series plans;
- :mod:`~kheops_async.engine.study_check`: sync's check of a listed study against the
  journals and the tree;
- :mod:`~kheops_async.engine.scheduling`: which planned series a free worker takes next;
- :mod:`~kheops_async.engine.series`: one series to completion (resume, whole series,
  then only what is missing);
- :mod:`~kheops_async.engine.receiving` and :mod:`~kheops_async.engine.sink`: a part
  from the network into its final file; :mod:`~kheops_async.engine.placement`: whether
  the sink runs on the event loop or in a worker thread;
- :mod:`~kheops_async.engine.recorder`: counters, progress and the instance table;
- :mod:`~kheops_async.engine.journal`: the SQLite record of what is done (one per
  shard; every run reads the others), :mod:`~kheops_async.engine.checksums` its sha256;
- :mod:`~kheops_async.engine.deletion`: ``sync --delete``, gathered then applied safely;
- :mod:`~kheops_async.engine.verify`: a tree checked against its journals and the server;
- :mod:`~kheops_async.engine.uid_set`: sets of UIDs on disk (listed studies);
- :mod:`~kheops_async.engine.state_dir`: the lock and the temporary files;
- :mod:`~kheops_async.engine.breaker`: the run-level stop during an outage;
- :mod:`~kheops_async.engine.run`: the run itself, from the lock to the last cleanup.

Every HTTP request of a run holds one slot of a :class:`anyio.CapacityLimiter`, so
``concurrency`` bounds the requests in flight. It runs under asyncio and trio and
can be cancelled at any point: temporary files are removed, finished files stay.
"""

from kheops_async.engine.run import download, journal_path, sync
from kheops_async.engine.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_OUTAGE_THRESHOLD,
    DownloadSettings,
    InstanceCallback,
    MetadataMode,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_OUTAGE_THRESHOLD",
    "DownloadSettings",
    "InstanceCallback",
    "MetadataMode",
    "download",
    "journal_path",
    "sync",
]
