"""Planning: which series a run takes, from explicit studies, pairs and study queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeserver import FakeArchive, FakeDicomWebServer, make_tree_archive
from treecheck import assert_tree_holds

from kheops_async import DicomWebClient, Targets, download
from kheops_async.cli import ExitCode, main

TOKEN = "planning-token"
STUDIES = [f"1.2.40.0.33.{n}" for n in range(1, 4)]  # patients P0, P1, P2


@pytest.fixture(scope="module")
def archive() -> FakeArchive:
    return make_tree_archive(STUDIES, series_per_study=2, instances_per_series=2, size=1200)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(archive, token=TOKEN) as srv:
        yield srv


@pytest.mark.anyio
async def test_explicit_studies_are_checked_against_the_study_filters(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    targets = Targets(studies=STUDIES[:2], study_filters={"PatientID": "P1"})
    async with DicomWebClient(server.base_url, token=TOKEN) as client:
        report = await download(client, targets, tmp_path)
    assert report.ok and report.series_total == 2
    assert_tree_holds(tmp_path, archive.instances(STUDIES[1]))
    checks = [r for r in server.requests if r.path.endswith("/studies")]
    assert len(checks) == 2  # one study query per explicit study, no listing of them all


def test_the_command_line_leaves_the_study_check_to_the_engine(
    server: FakeDicomWebServer, archive: FakeArchive, tmp_path: Path
) -> None:
    args = ["download", "studies", "--url", server.base_url, "--out-dir", str(tmp_path)]
    for uid in STUDIES:
        args += ["--study-uid", uid]
    result = CliRunner().invoke(
        main, [*args, "--search-filter", "PatientID", "P2"], env={"KHEOPS_TOKEN": TOKEN}
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert_tree_holds(tmp_path, archive.instances(STUDIES[2]))
