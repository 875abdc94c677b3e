"""``kheops-async verify``: a tree checked against its journals, and against the server.

Trees are made by real downloads from the fault-injecting server (and, in
tests/test_sync_orthanc.py, from Orthanc), then damaged on disk or changed on the
server; verify must name each problem on one line and exit 1, and a ``sync``
afterwards must leave a tree that verifies clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from clienv import CLEAN_ENV
from fakeserver import FakeArchive, FakeDicomWebServer, Status, make_instance, make_tree_archive

from kheops_async.cli import ExitCode, main
from kheops_async.engine.verify import VerifyReport

TOKEN = "verify-token"
STUDIES = [f"1.2.40.0.88.{n}" for n in range(1, 5)]


@pytest.fixture
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=2, instances_per_series=3, size=700)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


def run(dest: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, [*args, "--out-dir", str(dest)], env={**CLEAN_ENV, "KHEOPS_TOKEN": TOKEN}
    )


def mirror(server: FakeDicomWebServer, dest: Path, *args: str) -> None:
    result = run(dest, "sync", "--url", server.base_url, *args)
    assert result.exit_code == 0, result.output


def file_of(dest: Path, archive: FakeArchive, n: int = 0) -> tuple[Path, str]:
    instance = archive.all_instances()[n]
    return (
        dest / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm",
        instance.sop_uid,
    )


def problems(result: Result) -> list[str]:
    return result.stdout.splitlines()


def test_a_clean_tree_verifies_with_exit_0(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    mirror(server, tmp_path, "--checksum")
    result = run(tmp_path, "verify", "--checksum", "--url", server.base_url)
    assert result.exit_code == ExitCode.OK, result.output
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "verify: 24 instances and 8 series in 1 journal, 24 sha256 compared, "
        "4 studies compared with the server: no problem"
    )


def test_a_deleted_file_is_named_by_verify_and_repaired_by_sync(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    mirror(server, tmp_path)
    path, sop_uid = file_of(tmp_path, archive, 5)
    path.unlink()
    result = run(tmp_path, "verify")
    assert result.exit_code == ExitCode.INCOMPLETE
    relative = path.relative_to(tmp_path).as_posix()
    assert problems(result) == [f"missing: {relative} (SOPInstanceUID {sop_uid}): not on disk"]
    assert "1 problem (1 missing)" in result.stderr
    assert "Traceback" not in result.output

    mirror(server, tmp_path)
    assert path.read_bytes() == archive.all_instances()[5].data
    again = run(tmp_path, "verify")
    assert again.exit_code == ExitCode.OK, again.output


def test_sizes_always_and_sha256_with_checksum(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    mirror(server, tmp_path, "--checksum")
    shrunk, shrunk_sop = file_of(tmp_path, archive, 0)
    shrunk.write_bytes(shrunk.read_bytes()[:300])
    flipped, flipped_sop = file_of(tmp_path, archive, 7)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # same size, one pixel byte changed
    flipped.write_bytes(bytes(data))

    plain = run(tmp_path, "verify")
    assert plain.exit_code == ExitCode.INCOMPLETE
    assert [line.split(" ")[0] for line in problems(plain)] == ["size:"]
    assert f"(SOPInstanceUID {shrunk_sop}): 300 bytes, " in plain.stdout

    thorough = run(tmp_path, "verify", "--checksum")
    assert sorted(line.split(" ")[0] for line in problems(thorough)) == ["checksum:", "size:"]
    assert f"(SOPInstanceUID {flipped_sop}): its sha256 differs" in thorough.stdout
    assert "2 problems (1 checksum, 1 size)" in thorough.stderr

    mirror(server, tmp_path, "--checksum")
    assert run(tmp_path, "verify", "--checksum").exit_code == ExitCode.OK


def test_an_incomplete_series_is_a_problem(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    series = f"{STUDIES[2]}.1"
    server.add_fault(f"/series/{series}", Status(404), times=100)
    result = run(tmp_path, "sync", "--url", server.base_url, "--retries", "0")
    assert result.exit_code == ExitCode.INCOMPLETE
    verified = run(tmp_path, "verify")
    assert verified.exit_code == ExitCode.INCOMPLETE
    assert problems(verified) == [
        f"incomplete: study {STUDIES[2]} series {series}: 0 of 3 instances when it was last "
        "downloaded"
    ]


def test_the_server_comparison_finds_new_grown_and_vanished_studies(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    mirror(server, tmp_path)
    archive.add_part10(make_instance("1.2.40.0.88.50", "1.2.40.0.88.50.1", "1.2.40.0.88.50.1.1"))
    archive.add_part10(make_instance(STUDIES[1], f"{STUDIES[1]}.1", f"{STUDIES[1]}.1.9", seed=9))
    archive.remove(STUDIES[3])
    result = run(tmp_path, "verify", "--url", server.base_url)
    assert result.exit_code == ExitCode.INCOMPLETE
    assert sorted(problems(result)) == sorted(
        [
            "absent: study 1.2.40.0.88.50: listed by the server, not in the tree",
            f"count: study {STUDIES[1]}: the server counts 7 instances, the tree holds 6",
            f"extra: study {STUDIES[3]}: in the tree, no longer listed by the server",
        ]
    )
    assert run(tmp_path, "verify").exit_code == ExitCode.OK  # the files themselves are fine


def test_verify_reads_every_shard_journal(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    for index in range(3):
        mirror(server, tmp_path, "--shard", f"{index}/3")
    clean = run(tmp_path, "verify", "--url", server.base_url)
    assert clean.exit_code == ExitCode.OK, clean.output
    assert "24 instances and 8 series in 3 journals" in clean.stderr
    path, sop_uid = file_of(tmp_path, archive, 20)
    path.unlink()
    broken = run(tmp_path, "verify")
    assert problems(broken) == [
        f"missing: {path.relative_to(tmp_path).as_posix()} (SOPInstanceUID {sop_uid}): not on disk"
    ]


def test_a_file_rewritten_by_a_later_run_is_judged_by_its_newest_record(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """download (journal.sqlite) then a shard's --forced download of the same study."""
    mirror(server, tmp_path)
    result = run(
        tmp_path, "download", "studies", "--url", server.base_url, "--forced", "--shard", "0/1"
    )
    assert result.exit_code == 0, result.output
    for index in range(2):
        forced = run(
            tmp_path,
            "download",
            "studies",
            "--url",
            server.base_url,
            "--forced",
            "--shard",
            f"{index}/2",
        )
        assert forced.exit_code == 0, forced.output
    verified = run(tmp_path, "verify")
    assert verified.exit_code == ExitCode.OK, verified.output
    assert "24 instances and 8 series in 3 journals" in verified.stderr


def test_no_journal_is_one_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path, "verify")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("error: ")
    assert "has no kheops-async journal" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_filter_needs_a_server(tmp_path: Path) -> None:
    result = run(tmp_path, "verify", "--search-filter", "PatientID", "P1")
    assert result.exit_code == ExitCode.USAGE
    assert "give --url too" in result.stderr


def test_the_report_keeps_counters_and_a_bounded_list() -> None:
    from kheops_async.engine.verify import MAX_KEPT_PROBLEMS, Problem

    report = VerifyReport(journals=1)
    for n in range(MAX_KEPT_PROBLEMS + 50):
        report.add(Problem("missing", "not on disk", f"a/{n}.dcm", str(n)))
    assert report.problem_count == MAX_KEPT_PROBLEMS + 50
    assert len(report.problems) == MAX_KEPT_PROBLEMS
    assert not report.ok
