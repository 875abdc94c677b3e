"""The command line when a run is stopped: one error line, the right status, nothing lost."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fakeserver import FakeDicomWebServer, ResetAfter, Status, make_tree_archive
from treecheck import assert_no_temp_files

from kheops_async.cli import ExitCode, main
from kheops_async.engine.state_dir import DestinationLock, state_dir

TOKEN = "cli-failure-token"
STUDIES = [f"1.2.40.0.55.{n}" for n in range(1, 4)]


@pytest.fixture
def server() -> Iterator[FakeDicomWebServer]:
    archive = make_tree_archive(STUDIES, series_per_study=2, instances_per_series=5, size=2000)
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


def download(server: FakeDicomWebServer, out_dir: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        main,
        ["download", "studies", "--url", server.base_url, "--out-dir", str(out_dir), *extra],
        env={"KHEOPS_TOKEN": TOKEN, "KHEOPS_URL": None, "ACCESS_TOKEN": None},
    )


def written_rows(out_dir: Path) -> list[dict[str, str]]:
    (table,) = out_dir.glob("downloaded_study_instances_*.csv")
    with table.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["Status"] == "written"]


def test_a_401_mid_run_exits_3_and_keeps_the_table(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    server.add_fault(f"/series/{STUDIES[2]}.1", Status(401), times=100)
    result = download(server, tmp_path, "-j", "1", "--retries", "1")
    assert result.exit_code == ExitCode.AUTH, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: HTTP 401")
    assert "Traceback" not in result.output
    assert "stopped:" in result.stderr and "saved the list of instances" in result.stderr
    rows = written_rows(tmp_path)
    assert len(rows) >= 20  # the two studies before the refusal
    assert all((tmp_path / row["Path"]).stat().st_size == int(row["FileSize"]) for row in rows)
    assert TOKEN not in result.output
    assert_no_temp_files(tmp_path)


def test_an_outage_exits_4_quickly(tmp_path: Path) -> None:
    studies = [f"1.2.40.0.56.{n}" for n in range(1, 16)]
    archive = make_tree_archive(studies, series_per_study=2, instances_per_series=3, size=3000)
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        srv.add_fault("/series/", ResetAfter(1500), times=100_000)
        result = download(srv, tmp_path, "--retries", "2")
    assert result.exit_code == ExitCode.SERVER, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the server keeps failing"), last
    assert_no_temp_files(tmp_path)


def test_a_second_run_into_a_busy_destination_exits_2(
    server: FakeDicomWebServer, tmp_path: Path
) -> None:
    lock = DestinationLock(state_dir(tmp_path.resolve()) / "journal.lock")
    lock.acquire()
    try:
        result = download(server, tmp_path)
    finally:
        lock.release()
    assert result.exit_code == ExitCode.USAGE, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: another kheops-async run (pid ")
    assert list(tmp_path.rglob("*.dcm")) == []
    assert download(server, tmp_path).exit_code == ExitCode.OK
