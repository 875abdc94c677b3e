"""Taking a finished run's output away without changing what the next run measures.

Deleting a run's output between runs is not neutral here, and not equally so for every
tool. Two effects, both measured on the 2-core VM of ``RESULTS.md`` (``perf record`` of a
plain create loop, ``benchmarks/bench_files.py``):

* **Freed inodes are skipped for minutes.** This VM's ext4 has no journal
  (``/sys/fs/ext4/<dev>/journal_task`` reads ``<none>``). Without a journal, ext4's inode
  allocator does not reuse an inode deleted less than 60 s ago (300 s while its inode
  table block is dirty): ``find_inode_bit`` calls ``recently_deleted`` on each free bit
  and steps over it. After 4,000 files are deleted in a directory tree, every new file
  created in that tree walks past them, so creation becomes quadratic: 0.4-0.6 ms of
  kernel CPU per ``open(O_CREAT)`` (60 % of the samples in ``recently_deleted`` and
  ``find_get_block_common``), against 27 us when nothing was deleted. A tool that
  creates 4,000 files (one per instance) pays it 20 times more than one that creates
  200 (one per series), and which runs pay it depends on what ran just before.
* **New page-cache pages are slow to touch.** Keeping the outputs instead makes the page
  cache grow into memory the guest has not touched yet, and copying a file's bytes into
  it then costs 3-10x more (``copy_folio_from_iter_atomic``): 2.7 s against 0.2 s for
  the same 4,000 files of 76 KB.

So an output is *set aside*: written back (``sync``), its pages dropped from the page
cache (``POSIX_FADV_DONTNEED`` on each file, which frees exactly those pages for the next
run to reuse), then renamed into a graveyard, so that no inode is freed while runs are
being timed. The graveyard is deleted at the end. A tree of a few files (the 1 GB
series) is deleted at once: a few freed inodes cost nothing measurable. When the disk
runs short, the graveyard is emptied and the next run waits until ext4 reuses the freed
inodes again (65 s after the write-back), so that no timed run meets them.

With the output on tmpfs (``--tmp /dev/shm``) none of this applies and it is harmless.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

__all__ = ["Graveyard", "creation_cost_us", "settled_creation_cost_us"]

FEW_FILES = 64
"""A tree with at most this many files is deleted at once: too few inodes to matter."""

FREE_SPACE_FLOOR = 4 * 1024**3
"""Below this much free disk space the graveyard is emptied (bytes)."""

INODE_REUSE_WAIT_S = 65.0
"""How long after a write-back ext4 without a journal skips a freed inode (60 s) + margin."""
SETTLED_CREATION_US = 60.0
"""Creation cost (us per empty file) below which the file system counts as settled: 19-27
us were measured here with nothing deleted lately, 160-190 us at the start of full runs
that followed the test suite (which deletes its temporary trees)."""
SETTLE_PATIENCE_S = 330.0
"""Longest wait for the file system to settle: ext4 skips a freed inode for 300 s while
its inode-table block is dirty, 60 s once written back (see the module docstring)."""


class Graveyard:
    """Holds the outputs of finished runs until the benchmark ends (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = 0

    def set_aside(self, path: Path) -> None:
        """Take ``path`` away: deleted if small, otherwise evicted and moved here."""
        if not path.exists():
            return
        files = _files_below(path)
        if len(files) <= FEW_FILES:
            shutil.rmtree(path, ignore_errors=True)
            return
        os.sync()
        for name in files:
            _drop_cached_pages(name)
        self.root.mkdir(parents=True, exist_ok=True)
        self._count += 1
        os.replace(path, self.root / f"{os.getpid()}-{self._count:05d}")
        if shutil.disk_usage(self.root).free < FREE_SPACE_FLOOR:
            self.empty(wait=True)

    def empty(self, *, wait: bool = False) -> None:
        """Delete everything set aside; with ``wait``, until ext4 reuses the inodes again."""
        shutil.rmtree(self.root, ignore_errors=True)
        if wait:
            os.sync()
            print(
                f"  (disk short: graveyard emptied; waiting {INODE_REUSE_WAIT_S:.0f} s "
                "for ext4 to reuse the freed inodes)",
                flush=True,
            )
            time.sleep(INODE_REUSE_WAIT_S)


def creation_cost_us(directory: Path, graveyard: Graveyard, files: int = 2000) -> float:
    """A probe: wall microseconds per empty-file creation in ``directory`` now.

    Run at the start of a benchmark, it tells in which state the file system is (27 us
    when nothing was deleted there lately, 400+ us after a mass deletion): a figure for
    the report, next to the machine's description.
    """
    probe = directory / f"creation-probe-{time.monotonic_ns()}"
    probe.mkdir(parents=True)
    started = time.perf_counter()
    for number in range(files):
        os.close(os.open(f"{probe}/{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    cost = (time.perf_counter() - started) / files * 1e6
    graveyard.set_aside(probe)
    return cost


def _files_below(path: Path) -> list[str]:
    return [os.path.join(top, name) for top, _, names in os.walk(path) for name in names]


def _drop_cached_pages(name: str) -> None:
    try:
        descriptor = os.open(name, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def settled_creation_cost_us(
    directory: Path, graveyard: Graveyard, *, pause_s: float = 30.0
) -> tuple[float, float]:
    """The creation cost once it is below :data:`SETTLED_CREATION_US`, and the seconds waited.

    A benchmark that starts while files deleted minutes ago still slow down every
    creation would charge that to the tools that write one file per instance (see the
    module docstring); it waits instead, probing every ``pause_s`` seconds, for at most
    :data:`SETTLE_PATIENCE_S` (then it goes on, and the report says the cost it found).
    """
    waited = 0.0
    os.sync()  # the deletions' inode-table blocks written back: the 60 s clock starts
    cost = creation_cost_us(directory, graveyard)
    while cost > SETTLED_CREATION_US and waited < SETTLE_PATIENCE_S:
        print(
            f"  file creation costs {cost:.0f} us per file: waiting {pause_s:.0f} s for the "
            "file system to settle",
            flush=True,
        )
        time.sleep(pause_s)
        waited += pause_s
        cost = creation_cost_us(directory, graveyard)
    return cost, waited
