"""``kheops-async sync`` against the fault-injecting Kheops-like server, over real HTTP.

Each case mirrors an archive, changes it (or the tree) the way archives and disks
change, syncs again, and checks two things: the tree is exactly the archive, and the
server saw only the requests the change calls for (counted by the server itself).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from clienv import CLEAN_ENV
from fakeserver import FakeArchive, FakeDicomWebServer, Status, make_instance, make_tree_archive
from fakeserver.server import RequestRecord
from treecheck import assert_no_temp_files, assert_tree_holds

from kheops_async import DicomWebClient, Targets, download, sync
from kheops_async.cli import ExitCode, main

pytestmark = pytest.mark.anyio

TOKEN = "sync-token"
STUDIES = [f"1.2.40.0.55.{n}" for n in range(1, 7)]
ALBUM = "album-A"


@pytest.fixture
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=2, instances_per_series=4, size=600)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN, albums={ALBUM: STUDIES[:2]}) as srv:
        yield srv


def cli(server: FakeDicomWebServer, dest: Path, *args: str, env: Mapping[str, str] = {}) -> Result:
    """``kheops-async sync`` (or another command given first) into ``dest``."""
    command = list(args) if args and args[0] in ("download", "verify") else ["sync", *args]
    return CliRunner().invoke(
        main,
        [*command, "--url", server.base_url, "--out-dir", str(dest)],
        env={**CLEAN_ENV, "KHEOPS_TOKEN": TOKEN, **env},
    )


def wado(server: FakeDicomWebServer) -> list[RequestRecord]:
    """The WADO-RS retrieves the server answered (multipart requests)."""
    return [r for r in server.requests if (r.accept or "").startswith("multipart/related")]


def series_queries(server: FakeDicomWebServer) -> list[RequestRecord]:
    return [r for r in server.requests if r.path.endswith("/series")]


def study_queries(server: FakeDicomWebServer) -> list[RequestRecord]:
    return [r for r in server.requests if r.path.endswith("/studies")]


def instances_of(archive: FakeArchive, studies: list[str]) -> list[object]:
    return [i for i in archive.all_instances() if i.study_uid in studies]


def assert_ok(result: Result) -> None:
    assert result.exit_code == ExitCode.OK, result.output
    assert "Traceback" not in result.output


def test_a_partial_album_synced_against_the_archive_fetches_only_the_rest(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path, "--album", ALBUM))
    assert_tree_holds(tmp_path, instances_of(archive, STUDIES[:2]))
    server.reset_stats()

    result = cli(server, tmp_path)
    assert_ok(result)
    assert_tree_holds(tmp_path, archive.all_instances())
    fetched = {r.path.rsplit("/studies/", 1)[1].split("/")[0] for r in wado(server)}
    assert fetched == set(STUDIES[2:])  # the album's studies: not one retrieve
    asked = {r.path.split("/studies/")[1].split("/")[0] for r in series_queries(server)}
    assert asked == set(STUDIES[2:])  # nor one series query
    assert "studies: 4 new, 0 changed, 2 unchanged" in result.stderr
    assert "instances: 32 new, 0 repaired, 16 unchanged" in result.stderr
    assert_no_temp_files(tmp_path)


def test_a_sync_with_nothing_new_makes_no_wado_request_and_one_query_per_page(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path, "download", "studies"))  # download's tree syncs too
    server.reset_stats()
    result = cli(server, tmp_path, "--page-size", "4")
    assert_ok(result)
    assert wado(server) == []
    assert series_queries(server) == []
    assert [r.param("offset") or "0" for r in study_queries(server)] == ["0", "4"]
    assert len(server.requests) == 2
    assert "studies: 0 new, 0 changed, 6 unchanged" in result.stderr
    assert "instances: 0 new, 0 repaired, 48 unchanged" in result.stderr
    assert result.stderr.startswith("done: nothing new; 48 instances already in place")
    assert_tree_holds(tmp_path, archive.all_instances())


def test_a_new_study_on_the_server_is_the_only_thing_a_later_sync_fetches(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    new_study = "1.2.40.0.55.99"
    for i in range(3):
        archive.add_part10(
            make_instance(new_study, f"{new_study}.1", f"{new_study}.1.{i}", seed=900 + i)
        )
    server.reset_stats()
    result = cli(server, tmp_path)
    assert_ok(result)
    assert [r.path for r in wado(server)] == [f"/api/studies/{new_study}/series/{new_study}.1"]
    assert [r.path for r in series_queries(server)] == [f"/api/studies/{new_study}/series"]
    assert "studies: 1 new, 0 changed, 6 unchanged" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_a_series_that_grew_gets_only_its_new_instance(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    study, series = STUDIES[3], f"{STUDIES[3]}.2"
    added = archive.add_part10(make_instance(study, series, f"{series}.77", seed=77))
    server.reset_stats()
    result = cli(server, tmp_path)
    assert_ok(result)
    assert [r.path for r in wado(server)] == [
        f"/api/studies/{study}/series/{series}/instances/{added.sop_uid}"
    ]
    assert "studies: 0 new, 1 changed, 5 unchanged" in result.stderr
    assert "series: 0 new, 1 updated, 1 unchanged" in result.stderr
    assert "instances: 1 new, 0 repaired, 48 unchanged" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_file_deleted_or_shrunk_on_disk_is_fetched_again(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path, damage: str
) -> None:
    assert_ok(cli(server, tmp_path))
    victim = next(iter(instances_of(archive, [STUDIES[1]])))
    path = tmp_path / victim.study_uid / victim.series_uid / f"{victim.sop_uid}.dcm"  # type: ignore[attr-defined]
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    server.reset_stats()
    result = cli(server, tmp_path)
    assert_ok(result)
    assert [r.path.rsplit("/", 1)[1] for r in wado(server)] == [victim.sop_uid]  # type: ignore[attr-defined]
    assert "studies: 0 new, 1 changed, 5 unchanged" in result.stderr
    assert "instances: 0 new, 1 repaired" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_sync_with_series_filters_lists_series_but_fetches_nothing_already_there(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """A series filter makes the study count meaningless: series counts decide."""
    assert_ok(cli(server, tmp_path, "--search-filter", "Modality", "CT"))
    server.reset_stats()
    assert_ok(cli(server, tmp_path, "--search-filter", "Modality", "CT"))
    assert wado(server) == []
    assert len(series_queries(server)) == len(STUDIES)


def test_sync_refuses_metadata_only(server: FakeDicomWebServer, tmp_path: Path) -> None:
    result = cli(server, tmp_path, "--meta-only")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("error: sync mirrors instances")


def test_a_sync_dry_run_writes_nothing_and_plans_only_what_is_missing(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path, "--album", ALBUM))
    before = sorted(p for p in tmp_path.rglob("*") if ".kheops-async" not in p.parts)
    server.reset_stats()
    result = cli(server, tmp_path, "--dry-run")
    assert_ok(result)
    assert wado(server) == []
    assert "dry run: 32 instances of 8 series would be downloaded, 16 are already present" in (
        result.stderr
    )
    assert sorted(p for p in tmp_path.rglob("*") if ".kheops-async" not in p.parts) == before


async def test_the_library_sync_reports_what_changed(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    async with DicomWebClient(server.base_url, token=TOKEN) as client:
        first = await download(client, Targets(studies=STUDIES[:3]), tmp_path)
        assert first.ok and first.sync is None
        report = await sync(client, Targets(query={}), tmp_path)
    assert report.ok
    assert report.sync is not None
    assert (report.sync.studies_new, report.sync.studies_unchanged) == (3, 3)
    assert report.sync.instances_in_unchanged_studies == 24
    assert (report.written, report.skipped) == (24, 24)
    assert_tree_holds(tmp_path, archive.all_instances())
    assert os.listdir(tmp_path / ".kheops-async").count("journal.sqlite") == 1


# --------------------------------------------------------------------------- --delete


def test_delete_removes_only_what_the_server_no_longer_lists(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    gone_study = STUDIES[5]
    gone_series = f"{STUDIES[4]}.2"
    gone_instance = f"{STUDIES[0]}.1.3"
    archive.remove(gone_study)
    archive.remove(STUDIES[4], gone_series)
    archive.remove(STUDIES[0], f"{STUDIES[0]}.1", gone_instance)

    preview = cli(server, tmp_path, "--delete", "--dry-run")
    assert_ok(preview)
    would = sorted(
        line.split(" ")[2] for line in preview.stdout.splitlines() if "would delete" in line
    )
    assert len(would) == 8 + 4 + 1
    assert "13 would be deleted; nothing was written" in preview.stderr
    assert (tmp_path / gone_study).is_dir()  # the dry run removed nothing

    server.reset_stats()
    result = cli(server, tmp_path, "--delete")
    assert_ok(result)
    assert wado(server) == []
    assert ", 13 deleted" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())
    assert not (tmp_path / gone_study).exists()  # emptied directories go too
    assert not (tmp_path / STUDIES[4] / gone_series).exists()
    # Two tables (the first sync's, then this one's; the dry run writes none), named by
    # the second they started in, with "-2" only when both started in the same second.
    tables = sorted(tmp_path.glob("synced_instances_*.csv"), key=lambda p: p.stat().st_mtime_ns)
    assert len(tables) == 2
    assert tables[-1].read_text().count(",deleted,") == 13
    verified = cli(server, tmp_path, "verify", "--url", server.base_url)
    assert verified.exit_code == ExitCode.OK, verified.output


def test_delete_does_nothing_after_an_incomplete_listing(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    archive.remove(STUDIES[5])
    server.add_fault("offset=4", Status(500), times=100)  # the study list's second page
    result = cli(server, tmp_path, "--delete", "--retries", "0", "--page-size", "4")
    assert result.exit_code == ExitCode.SERVER  # the list broke off: the run stops
    assert (tmp_path / STUDIES[5]).is_dir()
    server.clear_faults()

    assert_ok(cli(server, tmp_path))  # and a failed series is enough to keep everything
    archive.add_part10(make_instance(STUDIES[2], f"{STUDIES[2]}.1", f"{STUDIES[2]}.1.8"))
    server.add_fault(f"/series/{STUDIES[2]}.1", Status(404), times=100)
    failed = cli(server, tmp_path, "--delete", "--retries", "0")
    assert failed.exit_code == ExitCode.INCOMPLETE
    assert "--delete: nothing deleted, because the run had 1 failure" in failed.stderr
    assert (tmp_path / STUDIES[5]).is_dir()


def test_delete_does_nothing_when_the_server_lists_no_study(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    result = cli(server, tmp_path, "--delete", "--search-filter", "PatientID", "nobody")
    assert_ok(result)
    assert "the server listed no study" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_delete_within_a_query_keeps_to_the_query(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """The destination mirrors the query: a study outside it is removed (as rclone)."""
    assert_ok(cli(server, tmp_path))
    result = cli(server, tmp_path, "--delete", "--album", ALBUM)
    assert_ok(result)
    assert_tree_holds(tmp_path, instances_of(archive, STUDIES[:2]))


@pytest.mark.parametrize(
    "args",
    [
        ("--study-uid", STUDIES[0]),
        ("--search-filter", "Modality", "CT"),
        ("--limit", "2"),
    ],
)
def test_delete_refuses_what_is_not_a_whole_study_list(
    server: FakeDicomWebServer, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = cli(server, tmp_path, "--delete", *args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith("error: --delete")
    assert len(result.stderr.strip().splitlines()) == 1


def test_delete_by_a_shard_leaves_other_shards_studies_alone(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    from kheops_async.shards import shard_of

    assert_ok(cli(server, tmp_path))  # unsharded: journal.sqlite holds everything
    for study in STUDIES:
        archive.remove(study)
    archive.add_part10(make_instance("1.2.40.0.55.70", "1.2.40.0.55.70.1", "1.2.40.0.55.70.1.1"))
    result = cli(server, tmp_path, "--delete", "--shard", "1/2")
    assert_ok(result)
    for study in STUDIES:
        assert (tmp_path / study).is_dir() == (shard_of(study, 2) != 1), study


def test_a_damaged_journal_of_another_shard_is_left_out_with_a_warning(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    assert_ok(cli(server, tmp_path))
    (tmp_path / ".kheops-async" / "journal.shard-1-of-2.sqlite").write_bytes(b"not SQLite" * 100)
    server.reset_stats()
    result = cli(server, tmp_path)
    assert_ok(result)
    assert "journal.shard-1-of-2.sqlite" in result.stderr
    assert "checked as untracked files" in result.stderr
    assert wado(server) == []  # its own journal still knows everything


# --------------------------------------------------------------------------- review fixes


def test_a_listed_study_without_a_uid_fails_the_run_and_deletes_nothing(
    server: FakeDicomWebServer,
    archive: FakeArchive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fakeserver import server as fake

    assert_ok(cli(server, tmp_path))
    original = fake.FakeDicomWebServer._study_json

    def without_uid(self: FakeDicomWebServer, ctx: object, row: object) -> dict[str, object]:
        record = original(self, ctx, row)  # type: ignore[arg-type]
        if record["0020000D"]["Value"] == [STUDIES[1]]:  # type: ignore[index]
            record["0020000D"] = {"vr": "UI"}
        return record

    monkeypatch.setattr(fake.FakeDicomWebServer, "_study_json", without_uid)
    result = cli(server, tmp_path, "--delete")
    assert result.exit_code == ExitCode.INCOMPLETE
    assert "the server listed a study without a StudyInstanceUID" in result.stderr
    assert "--delete: nothing deleted" in result.stderr
    assert_tree_holds(tmp_path, archive.all_instances())


def test_delete_sees_every_journal_even_when_its_own_has_the_count(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """An instance recorded only by another journal is counted (and deleted) too."""
    import time

    from kheops_async.shards import shard_of

    study = STUDIES[0]
    index = shard_of(study, 2)
    assert_ok(cli(server, tmp_path))  # journal.sqlite records all 8 instances of it
    gone = f"{study}.1.4"
    archive.remove(study, f"{study}.1", gone)
    for instance in instances_of(archive, [study])[:7]:  # touched: adopted by the shard
        path = tmp_path / study / instance.series_uid / f"{instance.sop_uid}.dcm"  # type: ignore[attr-defined]
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert_ok(cli(server, tmp_path, "--shard", f"{index}/2"))
    result = cli(server, tmp_path, "--delete", "--shard", f"{index}/2")
    assert_ok(result)
    assert not (tmp_path / study / f"{study}.1" / f"{gone}.dcm").exists()
    verified = cli(server, tmp_path, "verify", "--url", server.base_url)
    assert verified.exit_code == ExitCode.OK, verified.output


def test_dry_runs_read_the_other_journals_when_there_is_none_of_their_own(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    result = cli(server, empty, "--delete", "--dry-run")
    assert_ok(result)  # no journal at all: nothing to delete, no crash
    sharded = tmp_path / "sharded"
    for index in range(2):
        assert_ok(cli(server, sharded, "--shard", f"{index}/2"))
    server.reset_stats()
    planned = cli(server, sharded, "--dry-run", "--delete")
    assert_ok(planned)
    assert series_queries(server) == []  # every study known from the shards' journals
    assert "0 instances of 0 series would be downloaded" in planned.stderr


def test_a_truncated_instance_list_is_a_failure_not_a_count(tmp_path: Path) -> None:
    study = "1.2.40.0.55.500"
    archive = make_tree_archive([study], series_per_study=1, instances_per_series=8, size=300)
    with FakeDicomWebServer(archive, token=TOKEN, max_results=5) as srv:
        assert_ok(cli(srv, tmp_path))
        (tmp_path / study / f"{study}.1" / f"{study}.1.8.dcm").unlink()
        result = cli(srv, tmp_path, "--page-size", "0")  # one request: the cap cuts it
    assert result.exit_code == ExitCode.INCOMPLETE
    assert f"the instance list of series {study}.1 is incomplete" in result.stderr


def test_an_instance_replaced_with_the_count_unchanged_needs_deep(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    """The fast path trusts counts (documented); --deep compares instance by instance."""
    assert_ok(cli(server, tmp_path))
    study, series = STUDIES[2], f"{STUDIES[2]}.1"
    archive.remove(study, series, f"{series}.3")
    added = archive.add_part10(make_instance(study, series, f"{series}.9", seed=99))
    server.reset_stats()
    plain = cli(server, tmp_path, "--delete")
    assert_ok(plain)
    assert wado(server) == [] and "0 changed, 6 unchanged" in plain.stderr  # unseen

    server.reset_stats()
    deep = cli(server, tmp_path, "--deep", "--delete")
    assert_ok(deep)
    assert [r.path.rsplit("/", 1)[1] for r in wado(server)] == [added.sop_uid]
    assert ", 1 deleted" in deep.stderr
    assert_tree_holds(tmp_path, archive.all_instances())
    assert len(series_queries(server)) == len(STUDIES)  # every study looked into
