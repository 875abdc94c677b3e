"""``--workers N``: N shard processes under one command, against the fault-injecting server.

Real ``kheops-async`` processes (the parent and its spawned workers): one summary and
one exit status for the whole run, every series fetched once, and Ctrl-C (to the
terminal's process group, or to the parent alone) ending every worker cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_no_temp_files, assert_tree_holds, temp_files, tree_files

from kheops_async.cli.workers import merge_reports
from kheops_async.report import DownloadReport, SeriesFailure, SyncTotals

TOKEN = "workers-token"
STUDIES = [f"1.2.40.0.99.{n}" for n in range(1, 10)]


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=2, instances_per_series=5, size=700)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


def command(server: FakeDicomWebServer, dest: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kheops_async",
        "sync",
        "--url",
        server.base_url,
        "--out-dir",
        str(dest),
        *args,
    ]


def run(
    server: FakeDicomWebServer, dest: Path, *args: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(server, dest, *args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KHEOPS_TOKEN": token},
        check=False,
    )


def retrieves(server: FakeDicomWebServer) -> Counter[str]:
    return Counter(
        r.path.rsplit("/series/", 1)[1]
        for r in server.requests
        if (r.accept or "").startswith("multipart/related")
    )


def workers_of(pid: int) -> list[int]:
    """The worker processes of a parent (multiprocessing's spawned children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_three_workers_mirror_the_archive_as_one_run(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    done = run(server, tmp_path, "--workers", "3", "-v", "--progress-interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert sum(line.startswith("done: ") for line in lines) == 1
    assert "done: 18/18 series, 90 written" in done.stderr
    assert "sync: studies: 9 new" in done.stderr
    assert "workers: 3 processes" in done.stderr
    assert any(line.startswith("progress: ") for line in lines)
    assert_tree_holds(tmp_path, archive.all_instances())
    assert_no_temp_files(tmp_path)
    assert retrieves(server) == Counter({i.series_uid for i in archive.all_instances()})
    journals = sorted(p.name for p in (tmp_path / ".kheops-async").glob("journal*.sqlite"))
    assert journals == [f"journal.shard-{i}-of-3.sqlite" for i in range(3)]

    server.reset_stats()
    again = run(server, tmp_path, "--workers", "2")  # another count: all journals are read
    assert again.returncode == 0, again.stderr
    assert retrieves(server) == Counter()
    assert "9 unchanged" in again.stderr


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_ends_every_worker_cleanly(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, target: str
) -> None:
    server.add_fault("/series/", Delay(1.0), times=1000)  # slow: no worker ends first
    process = subprocess.Popen(
        command(server, tmp_path, "--workers", "3", "-j", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KHEOPS_TOKEN": TOKEN},
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while len(tree_files(tmp_path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = workers_of(process.pid)
        assert len(workers) == 3
        if target == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr
    for worker in workers:  # every worker has ended (no zombie: the parent joined them)
        assert gone(worker)
    assert temp_files(tmp_path) == []
    by_name = {f"{i.sop_uid}.dcm": i.data for i in archive.all_instances()}
    for path, data in tree_files(tmp_path).items():
        assert data == by_name[path.name]  # nothing partial under a final name
    server.clear_faults()
    resumed = run(server, tmp_path, "--workers", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_a_fatal_error_in_the_workers_is_one_error_line(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    refused = run(server, tmp_path, "--workers", "3", token="wrong")
    assert refused.returncode == 3, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "401" in errors[0]
    assert "wrong" not in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "2", "--shard", "0/2"), "give --workers or --shard, not both"),
        (("--workers", "2", "--dry-run"), "--dry-run plans in one process"),
        (("--workers", "0"), "--workers"),
    ],
)
def test_worker_options_that_cannot_work_are_usage_errors(
    server: FakeDicomWebServer, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run(server, tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reports_merge_into_one() -> None:
    first = DownloadReport(series_total=3, series_completed=2, written=10, seconds=2.0)
    first.add_failure(SeriesFailure("1.2", "1.2.3", "broken"))
    first.sync = SyncTotals(studies_new=2, deleted=1)
    second = DownloadReport(series_total=4, series_completed=4, written=5, skipped=7, seconds=3.0)
    second.sync = SyncTotals(studies_unchanged=5, delete_skipped="the run had 1 failure")
    merged = merge_reports([first, second])
    assert (merged.series_total, merged.series_completed, merged.written) == (7, 6, 15)
    assert (merged.skipped, merged.series_failed, merged.seconds) == (7, 1, 3.0)
    assert merged.failures == first.failures
    assert merged.sync is not None
    assert (merged.sync.studies_new, merged.sync.studies_unchanged, merged.sync.deleted) == (
        2,
        5,
        1,
    )
    assert merged.sync.delete_skipped == "the run had 1 failure"


def test_a_worker_that_ended_between_two_polls_keeps_its_report() -> None:
    """Its last message is still in the pipe when the parent sees it dead."""
    import queue

    from kheops_async.cli.workers import _notice_dead, _WorkerState
    from kheops_async.report import DownloadProgress

    class Ended:
        exitcode = 0

        def is_alive(self) -> bool:
            return False

    channel: queue.Queue[object] = queue.Queue()
    report = DownloadReport(written=3)
    channel.put(("done", 0, report))
    states = [_WorkerState(Ended())]
    _notice_dead(channel, states, DownloadProgress())
    assert states[0].finished and states[0].error is None
    assert states[0].report is report
