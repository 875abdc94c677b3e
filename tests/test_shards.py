"""Shards: ``--shard I/N`` processes sharing one destination, with no coordinator.

The unit half checks the hash and the batch systems' variables. The other half runs
real ``kheops-async`` processes side by side against the fault-injecting server, and
checks that together they mirror the archive with every series fetched once, each
writing its own journal, and that a shard killed mid-run completes its part alone.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_no_temp_files, assert_tree_holds, tree_files

from kheops_async import Shard
from kheops_async.errors import ConfigurationError
from kheops_async.shards import shard_of

TOKEN = "shard-token"
STUDIES = [f"1.2.40.0.66.{n}" for n in range(1, 13)]
SHARDS = 3


# --------------------------------------------------------------------------- the hash


def test_the_hash_is_sha256_and_the_same_in_every_process() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    expected = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") % 8
    assert shard_of(uid, 8) == expected
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from kheops_async.shards import shard_of; print(shard_of({uid!r}, 8))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert int(other.stdout) == expected


def test_every_study_is_in_exactly_one_shard() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(2000)]
    for count in (1, 2, 3, 7):
        owners = [[i for i in range(count) if Shard(i, count).contains(u)] for u in uids]
        assert all(len(o) == 1 for o in owners)
        sizes = Counter(o[0] for o in owners)
        assert min(sizes.values()) > 2000 / count * 0.8  # and roughly even


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("2/5", {}, Shard(2, 5)),
        (" 0 / 1 ", {}, Shard(0, 1)),
        ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4)),
        (
            "auto",
            {
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            Shard(3, 4),
        ),
        ("auto", {"JOB_COMPLETION_INDEX": "0", "KHEOPS_SHARD_COUNT": "6"}, Shard(0, 6)),
        ("AUTO", {"KHEOPS_SHARD_INDEX": "5", "KHEOPS_SHARD_COUNT": "6"}, Shard(5, 6)),
    ],
)
def test_shard_specs(text: str, environ: dict[str, str], expected: Shard) -> None:
    assert Shard.parse(text, environ) == expected


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("3/3", {}, "index must be 0 to 2"),
        ("0/0", {}, "count must be 1"),
        ("1-3", {}, "takes I/N"),
        ("auto", {}, "found no shard in the environment"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "KHEOPS_SHARD_COUNT is not set"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not a number"),
        ("auto", {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"}, "index must be"),
    ],
)
def test_bad_shard_specs_say_why(text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Shard.parse(text, environ)


# --------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=3, instances_per_series=4, size=800)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


def start(
    server: FakeDicomWebServer, dest: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kheops_async",
            "sync",
            "--url",
            server.base_url,
            "--out-dir",
            str(dest),
            "-j",
            "2",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KHEOPS_TOKEN": TOKEN, **(env or {})},
    )


def finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    return output


def retrieved_series(server: FakeDicomWebServer) -> Counter[str]:
    return Counter(
        r.path.rsplit("/series/", 1)[1]
        for r in server.requests
        if (r.accept or "").startswith("multipart/related")
    )


def in_shard(archive: FakeArchive, index: int) -> list[object]:
    return [i for i in archive.all_instances() if shard_of(i.study_uid, SHARDS) == index]


def test_three_shards_together_mirror_the_archive_each_series_fetched_once(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    processes = [start(server, tmp_path, "--shard", f"{i}/{SHARDS}") for i in range(SHARDS)]
    for process in processes:
        finish(process)
    assert_tree_holds(tmp_path, archive.all_instances())
    assert_no_temp_files(tmp_path)
    every_series = {i.series_uid for i in archive.all_instances()}
    assert retrieved_series(server) == Counter(every_series)  # once each, no more
    journals = sorted(p.name for p in (tmp_path / ".kheops-async").glob("*.sqlite"))
    assert journals == [f"journal.shard-{i}-of-3.sqlite" for i in range(SHARDS)]
    # siblings never open each other: each closed journal is one plain file again
    assert list((tmp_path / ".kheops-async").glob("*-wal")) == []
    for index in range(SHARDS):
        db = sqlite3.connect(tmp_path / ".kheops-async" / journals[index])
        studies = {row[0] for row in db.execute("SELECT DISTINCT study_uid FROM instances")}
        db.close()
        assert studies == {u for u in STUDIES if shard_of(u, SHARDS) == index}
    tables = sorted(p.name.rsplit("_", 1)[1] for p in tmp_path.glob("synced_instances_*.csv"))
    assert tables == [f"shard-{i}-of-3.csv" for i in range(SHARDS)]

    server.reset_stats()  # an unsharded sync reads every shard's journal: nothing to do
    output = finish(start(server, tmp_path))
    assert retrieved_series(server) == Counter()
    assert f"0 new, 0 changed, {len(STUDIES)} unchanged" in output


def test_a_killed_shard_rerun_alone_completes_its_part(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    shard = 2
    server.add_fault("/series/", Delay(0.3), times=1000)  # slow retrieves: room to kill
    process = start(
        server,
        tmp_path,
        "--shard",
        "auto",
        env={"SLURM_ARRAY_TASK_ID": str(shard), "SLURM_ARRAY_TASK_COUNT": str(SHARDS)},
    )
    deadline = time.monotonic() + 60
    while not tree_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tree_files(tmp_path), "the shard wrote nothing in 60 s"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    partial = len(tree_files(tmp_path))
    assert 0 < partial < len(in_shard(archive, shard))
    server.clear_faults()

    finish(start(server, tmp_path, "--shard", f"{shard}/{SHARDS}"))
    assert_tree_holds(tmp_path, in_shard(archive, shard))  # its part, nothing else
    assert_no_temp_files(tmp_path)


def test_a_bad_shard_is_one_usage_error_line(server: FakeDicomWebServer, tmp_path: Path) -> None:
    process = start(server, tmp_path, "--shard", "auto")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert output.startswith("error: Invalid value for '--shard': --shard auto found no shard")
    assert len(output.strip().splitlines()) == 1
