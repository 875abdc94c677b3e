"""SIGKILL a real download subprocess at random moments; the tree never holds a partial file.

The download runs in its own process against the fault-injecting server (slowed so
that kills land mid-run) and is killed at 24 moments drawn with a fixed seed. After
every kill: every file under a final name is byte-identical to its instance. At the
end a plain rerun completes every tree, byte-identical, with no temporary file left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_tree_holds, tree_files

pytestmark = pytest.mark.slow

TOKEN = "kill-token"
KILLS = 24
SEED = 20261201

DOWNLOAD = textwrap.dedent(
    """
    import os, sys, anyio
    from kheops_async import DicomWebClient, Targets, download

    def show(progress):
        print(progress.instances_done, flush=True)

    async def main():
        async with DicomWebClient(sys.argv[1], token=os.environ["TOKEN"], concurrency=2) as c:
            report = await download(c, Targets(query={}), sys.argv[2], progress=show)
        print("done" if report.ok else "incomplete", flush=True)

    anyio.run(main)
    """
)


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    studies = [f"1.2.40.0.66.{n}" for n in range(1, 7)]
    return make_tree_archive(
        studies, series_per_study=2, instances_per_series=8, size=30_000, size_step=700
    )


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN, chunk_size=8192) as srv:
        srv.add_fault("/series/", Delay(0.04), times=1_000_000)
        yield srv


def _start(server: FakeDicomWebServer, dest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DOWNLOAD, server.base_url, str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TOKEN": TOKEN},
    )


def _assert_no_partial_final_file(dest: Path, by_name: dict[str, bytes]) -> None:
    for path, data in tree_files(dest).items():
        assert data == by_name[path.name], f"{path} is not the whole instance"


def test_sigkill_at_random_moments_never_leaves_a_partial_file(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    chance = random.Random(SEED)
    by_name = {f"{i.sop_uid}.dcm": i.data for i in archive.all_instances()}
    trees = [tmp_path / "tree-0"]
    kills = 0
    deadline = time.monotonic() + 240
    while kills < KILLS:
        assert time.monotonic() < deadline, "the kill loop took too long"
        process = _start(server, trees[-1])
        assert process.stdout is not None
        first = process.stdout.readline()  # the first progress line: the run is under way
        if first.strip().isdigit():
            time.sleep(chance.uniform(0.0, 0.35))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        finished = "done" in (first + process.stdout.read())
        process.stdout.close()
        _assert_no_partial_final_file(trees[-1], by_name)
        if finished:  # the run ended before the kill: carry on in a fresh tree
            trees.append(tmp_path / f"tree-{len(trees)}")
    for tree in trees:
        rerun = _start(server, tree)
        output, _ = rerun.communicate(timeout=120)
        assert rerun.returncode == 0 and "done" in output, output
        assert_tree_holds(tree, archive.all_instances())
