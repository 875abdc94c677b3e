"""The ``kheops-async`` command line (CliRunner), against the real Orthanc and the fake Kheops.

Orthanc (``orthanc_dataset``) proves the commands and their tables against known data;
the Basic-auth Orthanc proves the credential options; the fault-injecting Kheops-like
server (``fakeserver``) proves what Orthanc cannot: tokens and link URLs never leak,
truncated lists warn, 401/403/timeouts map to their exit statuses.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner, Result
from clienv import CLEAN_ENV
from fakeserver import Delay, FakeArchive, FakeDicomWebServer, Status, make_instance

from kheops_async import DEFAULT_CONCURRENCY, __version__
from kheops_async.auth import Redactor
from kheops_async.cli import ExitCode, main
from kheops_async.cli.exit_codes import exit_code_for, primary_error
from kheops_async.cli.logging_setup import configured_logging
from kheops_async.cli.runner import report_error
from kheops_async.cli.selection import split_filters
from kheops_async.demo import OrthancDataset, OrthancServer, SampleInstance
from kheops_async.errors import (
    AuthenticationError,
    ConfigurationError,
    IncompleteSeriesError,
    PermissionDeniedError,
    ProtocolError,
    TransportError,
)

TIMESTAMP = r"\d{8}-\d{6}(-\d+)?"
STUDY_COLUMNS = {
    "StudyInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "StudyDateTime",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
}
SERIES_COLUMNS = {
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "SeriesDateTime",
    "Modality",
    "RetrieveURL",
    "NumberOfSeriesRelatedInstances",
    "SeriesDescription",
}
DOWNLOAD_COLUMNS = {
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "SeriesDate",
    "SeriesTime",
    "Modality",
    "FileSize",
    "Path",
    "Status",
}

Run = Callable[..., Result]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def cli() -> Run:
    """Run the command line in-process; ``env`` adds variables to a clean environment."""

    def run(*args: str, env: Mapping[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env={**CLEAN_ENV, **(env or {})})

    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def only_table(directory: Path, stem: str) -> Path:
    """The one ``<stem>_<timestamp>.csv`` in ``directory``."""
    found = sorted(directory.glob(f"{stem}_*.csv"))
    assert len(found) == 1, found
    assert re.fullmatch(f"{stem}_{TIMESTAMP}\\.csv", found[0].name)
    return found[0]


def tables_of(directory: Path, stem: str) -> set[Path]:
    return set(directory.glob(f"{stem}_*.csv"))


def new_table(directory: Path, stem: str, before: set[Path]) -> Path:
    """The one table written since ``before`` was taken."""
    (path,) = tables_of(directory, stem) - before
    return path


def assert_one_error_line(result: Result, code: ExitCode, *fragments: str) -> str:
    """Exit status ``code``; stderr is one ``error:`` line (no traceback) with ``fragments``."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def header(instance: SampleInstance) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(instance.data), stop_before_pixels=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def dataset(orthanc_dataset: OrthancDataset) -> OrthancDataset:
    return orthanc_dataset


@pytest.fixture(scope="module")
def url(orthanc_dataset: OrthancDataset) -> str:
    return orthanc_dataset.server.dicomweb_url


def study_with_series(dataset: OrthancDataset, minimum: int = 2) -> str:
    """A generated (CT + MR) study with at least ``minimum`` series."""
    return next(
        s
        for s in sorted(dataset.studies())
        if len(dataset.series_of(s)) >= minimum
        and {i.modality for i in dataset.instances_of(s)} == {"CT", "MR"}
    )


def series_by_modality(dataset: OrthancDataset, modality: str) -> set[str]:
    return {i.series_uid for i in dataset.instances if i.modality == modality}


# --------------------------------------------------------------------------- basics


def test_version(cli: Run) -> None:
    for flag in ("--version", "-V"):
        result = cli(flag)
        assert result.exit_code == 0
        assert result.stdout.strip() == f"kheops-async, version {__version__}"


def test_help_documents_every_command_option_and_exit_status(cli: Run) -> None:
    root = cli("--help")
    assert root.exit_code == 0
    assert "list" in root.stdout and "download" in root.stdout
    assert "130 interrupted" in root.stdout and "ACCESS_TOKEN" in root.stdout
    listing = cli("list", "studies", "--help").stdout
    download = cli("download", "series", "--help").stdout
    shared = (
        "--url",
        "--token",
        "--out-dir",
        "--study-uid",
        "--series-uid",
        "--search-filter",
        "--fuzzy",
        "--limit",
        "--offset",
        "--in-file",
        "--dry-run",
        "--verbosity",
        "--quiet",
        "--concurrency",
        "--album",
        "--inbox",
        "--timeout",
        "--retries",
        "--user",
        "--password",
        "--basic-token",
        "--ca-bundle",
        "--insecure",
        "--page-size",
        "KHEOPS_TOKEN",
        "KHEOPS_PASSWORD",
        "KHEOPS_URL",
    )
    for option in shared:
        assert option in listing, option
        assert option in download, option
    assert "--format" in listing
    for option in (
        "--forced",
        "--meta-only",
        "--meta-only-per-instance",
        "--layout",
        "--kheops-client-layout",
        "--transfer-syntax",
        "--fsync",
    ):
        assert option in download, option
    flat = " ".join(download.split())
    assert f"[default: {DEFAULT_CONCURRENCY};" in flat
    assert "visible to other users in 'ps'" in flat


def test_python_dash_m_entry_point_exists() -> None:
    import kheops_async.__main__  # noqa: F401  (importing must not run the command line)


def test_no_subcommand_shows_help(cli: Run) -> None:
    result = cli("list")
    assert "studies" in result.output and "series" in result.output
    assert result.exit_code == 2


# --------------------------------------------------------------------------- list (README)


def test_list_studies_prints_and_saves_the_studies(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``list studies --url --token --out-dir``."""
    result = cli("list", "studies", "--url", url, "--out-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for study in dataset.studies():
        assert study in result.stdout
    assert f"{len(dataset.studies())} studies" in result.stdout
    table = only_table(tmp_path, "available_studies")
    assert str(table) in result.stderr
    rows = read_csv(table)
    assert set(rows[0]) >= STUDY_COLUMNS
    assert [r["StudyInstanceUID"] for r in rows].count(rows[0]["StudyInstanceUID"]) == 1
    assert {r["StudyInstanceUID"] for r in rows} == dataset.studies()
    for row in rows:
        instances = dataset.instances_of(row["StudyInstanceUID"])
        first = header(instances[0])
        assert row["PatientID"] == instances[0].patient_id
        assert row["StudyDate"] == first.StudyDate
        assert row["StudyTime"] == first.StudyTime
        date, time = first.StudyDate, first.StudyTime
        expected = f"{date[:4]}-{date[4:6]}-{date[6:]} {time[:2]}:{time[2:4]}:{time[4:6]}"
        assert row["StudyDateTime"] == expected
        assert int(row["NumberOfStudyRelatedInstances"]) == len(instances)
        assert int(row["NumberOfStudyRelatedSeries"]) == len(
            dataset.series_of(row["StudyInstanceUID"])
        )
        assert set(row["ModalitiesInStudy"].split("\\")) == {i.modality for i in instances}
    assert [r["StudyDateTime"] for r in rows] == sorted(r["StudyDateTime"] for r in rows)


def test_list_series_lists_every_series_of_every_study(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``list series`` without a study: the series of all studies."""
    result = cli("list", "series", "--url", url, "--out-dir", str(tmp_path), "-j", "3")
    assert result.exit_code == 0, result.output
    rows = read_csv(only_table(tmp_path, "available_series"))
    assert set(rows[0]) >= SERIES_COLUMNS
    assert {r["SeriesInstanceUID"] for r in rows} == {i.series_uid for i in dataset.instances}
    assert len(rows) == len({i.series_uid for i in dataset.instances})
    for row in rows:
        instances = dataset.instances_of(row["StudyInstanceUID"], row["SeriesInstanceUID"])
        assert instances, row
        assert row["PatientID"] == instances[0].patient_id
        assert row["Modality"] == instances[0].modality
        assert int(row["NumberOfSeriesRelatedInstances"]) == len(instances)
        assert row["SeriesDate"] == header(instances[0]).get("SeriesDate", "")
        assert row["RetrieveURL"] == (
            f"{url}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
        )
        assert row["SeriesInstanceUID"] in result.stdout


def test_list_series_of_one_study(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``list series --study-uid``."""
    study = study_with_series(dataset)
    result = cli("list", "series", "--url", url, "-o", str(tmp_path), "--study-uid", study)
    assert result.exit_code == 0, result.output
    rows = read_csv(only_table(tmp_path, "available_series"))
    assert {r["SeriesInstanceUID"] for r in rows} == dataset.series_of(study)
    assert {r["StudyInstanceUID"] for r in rows} == {study}


def test_list_series_with_a_modality_filter(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``--search-filter Modality CT``: only CT series, all of them."""
    result = cli(
        "list", "series", "--url", url, "-o", str(tmp_path), "--search-filter", "Modality", "CT"
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(only_table(tmp_path, "available_series"))
    assert {r["Modality"] for r in rows} == {"CT"}
    assert {r["SeriesInstanceUID"] for r in rows} == series_by_modality(dataset, "CT")


def test_list_series_with_combined_filters(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``--search-filter Modality CT --search-filter PatientID ...`` (AND)."""
    patient = sorted({i.patient_id for i in dataset.instances if i.modality == "CT"})[0]
    result = cli(
        "list",
        "series",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--search-filter",
        "Modality",
        "CT",
        "--search-filter",
        "PatientID",
        patient,
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(only_table(tmp_path, "available_series"))
    expected = {
        i.series_uid for i in dataset.instances if i.modality == "CT" and i.patient_id == patient
    }
    assert expected and {r["SeriesInstanceUID"] for r in rows} == expected


def test_list_studies_with_modality_uses_modalities_in_study(
    cli: Run, dataset: OrthancDataset, url: str
) -> None:
    """Orthanc matches nothing for Modality at study level: the library sends ModalitiesInStudy."""
    result = cli(
        "list",
        "studies",
        "--url",
        url,
        "-d",
        "--format",
        "json",
        "--search-filter",
        "Modality",
        "NM",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = {i.study_uid for i in dataset.instances if i.modality == "NM"}
    assert expected and {r["StudyInstanceUID"] for r in rows} == expected


def test_list_studies_limit_and_offset_page_the_study_query(
    cli: Run, dataset: OrthancDataset, url: str
) -> None:
    """README: ``--limit 5 --offset 10`` style paging; pages are disjoint and complete."""

    def page(*paging: str) -> list[str]:
        result = cli("list", "studies", "--url", url, "-d", "--format", "json", *paging)
        assert result.exit_code == 0, result.output
        return [r["StudyInstanceUID"] for r in json.loads(result.stdout)]

    first, second, rest = (
        page("--limit", "2"),
        page("--limit", "2", "--offset", "2"),
        page("--offset", "4"),
    )
    assert len(first) == len(second) == 2
    assert len(rest) == len(dataset.studies()) - 4
    assert set(first) | set(second) | set(rest) == dataset.studies()
    assert not set(first) & set(second)


def test_list_series_limit_and_offset_page_the_studies(
    cli: Run, dataset: OrthancDataset, url: str
) -> None:
    """Without --study-uid the paging applies to the study query (as kheops-client)."""
    result = cli(
        "list", "series", "--url", url, "-d", "--format", "json", "--limit", "2", "--offset", "1"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    studies = {r["StudyInstanceUID"] for r in rows}
    assert len(studies) == 2
    assert len(rows) == sum(len(dataset.series_of(s)) for s in studies)


def test_list_series_paging_with_a_study_uid_pages_its_series(
    cli: Run, dataset: OrthancDataset, url: str
) -> None:
    study = max(dataset.studies(), key=lambda s: len(dataset.series_of(s)))
    result = cli(
        "list",
        "series",
        "--url",
        url,
        "-d",
        "--format",
        "json",
        "--study-uid",
        study,
        "--limit",
        "3",
        "--offset",
        "1",
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and {r["SeriesInstanceUID"] for r in rows} < dataset.series_of(study)


def test_list_instances_of_a_series_and_of_a_study(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    study = study_with_series(dataset)
    series = sorted(dataset.series_of(study))[0]
    result = cli(
        "list",
        "instances",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--study-uid",
        study,
        "--series-uid",
        series,
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(only_table(tmp_path, "available_instances"))
    expected = dataset.instances_of(study, series)
    assert [r["SOPInstanceUID"] for r in rows] == [i.sop_uid for i in expected]
    assert {r["PatientID"] for r in rows} == {expected[0].patient_id}
    assert {r["Modality"] for r in rows} == {expected[0].modality}
    assert {r["SeriesInstanceUID"] for r in rows} == {series}
    whole = cli("list", "instances", "--url", url, "-d", "--format", "json", "-x", study)
    assert {r["SOPInstanceUID"] for r in json.loads(whole.stdout)} == {
        i.sop_uid for i in dataset.instances_of(study)
    }


def test_list_formats_csv_and_json_match_the_saved_table(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    as_csv = cli("list", "series", "--url", url, "-o", str(tmp_path / "a"), "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    saved = read_csv(only_table(tmp_path / "a", "available_series"))
    assert list(csv.DictReader(io.StringIO(as_csv.stdout))) == saved
    as_json = cli("list", "studies", "--url", url, "-d", "--format", "json")
    rows = json.loads(as_json.stdout)
    assert {r["StudyInstanceUID"] for r in rows} == dataset.studies()
    assert all(isinstance(r["ModalitiesInStudy"], list) for r in rows)
    assert all(isinstance(r["NumberOfStudyRelatedInstances"], int) for r in rows)


def test_list_tables_are_stable_and_never_overwritten(cli: Run, url: str, tmp_path: Path) -> None:
    for _ in range(2):
        assert cli("list", "studies", "--url", url, "-o", str(tmp_path), "-q").exit_code == 0
    tables = sorted(tmp_path.glob("available_studies_*.csv"))
    assert len(tables) == 2
    assert tables[0].read_text() == tables[1].read_text()


def test_list_dry_run_writes_nothing(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    result = cli("list", "series", "--url", url, "--out-dir", str(out), "--dry-run")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    assert next(iter(dataset.studies())) in result.stdout


def test_list_quiet_prints_the_table_only(cli: Run, url: str, tmp_path: Path) -> None:
    result = cli("list", "studies", "--url", url, "-o", str(tmp_path), "--quiet")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "StudyInstanceUID" in result.stdout


def test_list_an_unknown_study_warns(cli: Run, url: str) -> None:
    result = cli("list", "series", "--url", url, "-d", "--study-uid", "1.2.3.4.5.6")
    assert result.exit_code == 0
    assert "warning: study 1.2.3.4.5.6 not found" in result.stderr
    assert "0 series" in result.stdout


def test_url_comes_from_the_environment(cli: Run, url: str) -> None:
    result = cli("list", "studies", "-d", env={"KHEOPS_URL": url})
    assert result.exit_code == 0, result.output


def test_verbosity_counts_at_every_level(cli: Run, url: str) -> None:
    quiet = cli("list", "studies", "--url", url, "-d")
    assert "info:" not in quiet.stderr
    info = cli("-v", "list", "studies", "--url", url, "-d")
    assert "info: listing studies" in info.stderr
    debug = cli("-v", "list", "studies", "--verbosity", "--url", url, "-d")
    assert "kheops_async debug:" in debug.stderr
    assert "httpx" not in debug.stderr
    http = cli("list", "studies", "-vvv", "--url", url, "-d")
    assert "httpx info: HTTP Request: GET" in http.stderr


# --------------------------------------------------------------------------- list errors


def test_bad_filter_key_is_one_clear_line(cli: Run, url: str) -> None:
    result = cli("list", "series", "--url", url, "-d", "--search-filter", "Modalty", "CT")
    assert_one_error_line(result, ExitCode.USAGE, "--search-filter", "unknown DICOM attribute")


def test_filter_key_given_twice_is_refused(cli: Run, url: str) -> None:
    result = cli(
        "list",
        "series",
        "--url",
        url,
        "-d",
        "--search-filter",
        "Modality",
        "CT",
        "--search-filter",
        "00080060",
        "MR",
    )
    assert_one_error_line(result, ExitCode.USAGE, "given twice")


def test_series_level_filter_for_studies_is_refused(cli: Run, url: str) -> None:
    result = cli("list", "studies", "--url", url, "-d", "--search-filter", "SeriesDescription", "x")
    assert_one_error_line(result, ExitCode.USAGE, "series-level")


def test_series_uid_for_studies_is_refused(cli: Run, url: str) -> None:
    result = cli("download", "studies", "--url", url, "-d", "--series-uid", "1.2.3")
    assert_one_error_line(result, ExitCode.USAGE, "--series-uid")


def test_malformed_uid_is_one_clear_line(cli: Run, url: str) -> None:
    result = cli("list", "series", "--url", url, "-d", "--study-uid", "1.2.3/../4")
    assert_one_error_line(result, ExitCode.USAGE, "malformed StudyInstanceUID")


def test_bad_url_is_one_clear_line(cli: Run) -> None:
    result = cli("list", "studies", "--url", "demo.kheops.online/api", "-d")
    assert_one_error_line(result, ExitCode.USAGE, "invalid server URL")


def test_missing_url_is_one_clear_line(cli: Run) -> None:
    result = cli("list", "studies", "-d")
    assert_one_error_line(result, ExitCode.USAGE, "--url")


def test_unreachable_server_is_one_clear_line(cli: Run) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = cli("list", "studies", "--url", url, "-d", "--retries", "0")
    assert_one_error_line(result, ExitCode.SERVER, "connection to", "is the server running")


def test_wrong_base_path_hints_at_the_url(cli: Run, orthanc: OrthancServer) -> None:
    result = cli("list", "studies", "--url", f"{orthanc.url}/no-dicomweb-here", "-d")
    assert_one_error_line(result, ExitCode.SERVER, "404", "--url")


@pytest.mark.parametrize("command", ["list", "download"])
def test_unwritable_output_directory_is_one_clear_line(
    cli: Run, url: str, tmp_path: Path, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli(command, "studies", "--url", url, "--out-dir", str(blocker / "out"))
    assert_one_error_line(result, ExitCode.USAGE, "output directory", str(blocker))


def test_traceback_only_at_vvv(cli: Run) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = cli("list", "studies", "--url", url, "-d", "--retries", "0", "-vvv")
    assert result.exit_code == ExitCode.SERVER
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: connection to")


# --------------------------------------------------------------------------- download (README)


def assert_tree_matches(out: Path, instances: Sequence[SampleInstance], layout: str) -> None:
    for instance in instances:
        path = out / layout.format(
            StudyInstanceUID=instance.study_uid,
            SeriesInstanceUID=instance.series_uid,
            SOPInstanceUID=instance.sop_uid,
        )
        assert path.read_bytes() == instance.data, path


DEFAULT_LAYOUT = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


def test_download_one_series_forced(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``download series --study-uid --series-uid --forced``, twice."""
    study = study_with_series(dataset)
    series = sorted(dataset.series_of(study))[0]
    expected = dataset.instances_of(study, series)
    args = (
        "download",
        "series",
        "--url",
        url,
        "--out-dir",
        str(tmp_path),
        "--study-uid",
        study,
        "--series-uid",
        series,
        "--forced",
    )
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert_tree_matches(tmp_path, expected, DEFAULT_LAYOUT)
    assert len(list(tmp_path.rglob("*.dcm"))) == len(expected)
    rows = read_csv(only_table(tmp_path, "downloaded_series_instances"))
    assert set(rows[0]) >= DOWNLOAD_COLUMNS
    assert sorted(r["SOPInstanceUID"] for r in rows) == sorted(i.sop_uid for i in expected)
    for row in rows:
        instance = dataset.by_sop[row["SOPInstanceUID"]]
        assert row["Status"] == "written"
        assert int(row["FileSize"]) == len(instance.data) == (tmp_path / row["Path"]).stat().st_size
        assert row["PatientID"] == instance.patient_id
        assert row["Modality"] == instance.modality
        assert row["SeriesDate"] == header(instance).SeriesDate
        assert row["SeriesTime"] == header(instance).SeriesTime
    assert "done: 1/1 series" in first.stderr
    before = tables_of(tmp_path, "downloaded_series_instances")
    second = cli(*args)  # --forced: written again, not skipped
    assert second.exit_code == 0, second.output
    latest = new_table(tmp_path, "downloaded_series_instances", before)
    assert {r["Status"] for r in read_csv(latest)} == {"written"}


def test_download_series_of_a_whole_study(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``download series --study-uid`` (no --series-uid): every series of it."""
    study = study_with_series(dataset)
    result = cli("download", "series", "--url", url, "-o", str(tmp_path), "--study-uid", study)
    assert result.exit_code == 0, result.output
    assert_tree_matches(tmp_path, dataset.instances_of(study), DEFAULT_LAYOUT)
    rows = read_csv(only_table(tmp_path, "downloaded_series_instances"))
    assert {r["SeriesInstanceUID"] for r in rows} == dataset.series_of(study)


def test_download_studies_then_resume(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """README: ``download studies --study-uid``; a second run skips everything."""
    studies = sorted(dataset.studies())[:2]
    args = ["download", "studies", "--url", url, "-o", str(tmp_path), "-j", "2"]
    for study in studies:
        args += ["--study-uid", study]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    expected = [i for s in studies for i in dataset.instances_of(s)]
    assert_tree_matches(tmp_path, expected, DEFAULT_LAYOUT)
    rows = read_csv(only_table(tmp_path, "downloaded_study_instances"))
    assert len(rows) == len(expected)
    before = tables_of(tmp_path, "downloaded_study_instances")
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert f"0 written, {len(expected)} skipped" in again.stderr
    latest = new_table(tmp_path, "downloaded_study_instances", before)
    assert {r["Status"] for r in read_csv(latest)} == {"skipped"}


def test_download_everything_with_filters(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    patient = sorted({i.patient_id for i in dataset.instances if i.modality == "CT"})[-1]
    result = cli(
        "download",
        "series",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--search-filter",
        "Modality",
        "CT",
        "--search-filter",
        "PatientID",
        patient,
    )
    assert result.exit_code == 0, result.output
    expected = [i for i in dataset.instances if i.modality == "CT" and i.patient_id == patient]
    assert_tree_matches(tmp_path, expected, DEFAULT_LAYOUT)
    assert len(list(tmp_path.rglob("*.dcm"))) == len(expected)


def test_unknown_option_is_one_clear_line(cli: Run, url: str) -> None:
    result = cli("download", "studies", "--url", url, "-d", "--format", "json")
    assert_one_error_line(result, ExitCode.USAGE, "--format", "download studies --help")


def test_download_studies_with_modality_takes_whole_studies(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    plan = cli(
        "download",
        "studies",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "-d",
        "--search-filter",
        "Modality",
        "NM",
    )
    assert plan.exit_code == 0, plan.output
    study = next(i.study_uid for i in dataset.instances if i.modality == "NM")
    for series in dataset.series_of(study):  # every series of the study, not only NM
        assert series in plan.stdout


def test_download_series_uid_without_study_searches_the_studies(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    instance = dataset.instances[-1]
    result = cli(
        "download", "series", "--url", url, "-o", str(tmp_path), "--series-uid", instance.series_uid
    )
    assert result.exit_code == 0, result.output
    assert_tree_matches(
        tmp_path, dataset.instances_of(instance.study_uid, instance.series_uid), DEFAULT_LAYOUT
    )
    assert len(list(tmp_path.rglob("*.dcm"))) == len(
        dataset.instances_of(instance.study_uid, instance.series_uid)
    )


def test_download_from_a_uid_table(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    """--in-file: a whole study and one series of another, as kheops-client's tables."""
    whole, other = sorted(dataset.studies())[:2]
    series = sorted(dataset.series_of(other))[0]
    table = tmp_path / "uids.csv"
    table.write_text(f"StudyInstanceUID,SeriesInstanceUID\n{whole},\n{other},{series}\n")
    out = tmp_path / "out"
    result = cli("download", "series", "--url", url, "-o", str(out), "--in-file", str(table))
    assert result.exit_code == 0, result.output
    expected = [*dataset.instances_of(whole), *dataset.instances_of(other, series)]
    assert_tree_matches(out, expected, DEFAULT_LAYOUT)
    assert len(list(out.rglob("*.dcm"))) == len(expected)
    listed = cli("list", "series", "--url", url, "-d", "--format", "json", "--in-file", str(table))
    assert {r["SeriesInstanceUID"] for r in json.loads(listed.stdout)} == {
        *dataset.series_of(whole),
        series,
    }
    mixed = cli("list", "series", "--url", url, "-d", "--in-file", str(table), "-x", whole)
    assert_one_error_line(mixed, ExitCode.USAGE, "--in-file")


def test_download_dry_run_plans_and_writes_nothing(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    study = study_with_series(dataset)
    out = tmp_path / "never"
    result = cli("download", "studies", "--url", url, "-o", str(out), "-x", study, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    for series in dataset.series_of(study):
        line = next(line for line in result.stdout.splitlines() if series in line)
        planned = len(dataset.instances_of(study, series))
        assert re.search(rf"\s{planned}\s+0\s+0$", line), line
    assert "nothing was written" in result.stderr


def test_download_dry_run_counts_existing_files_as_skipped(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    study = study_with_series(dataset)
    series = sorted(dataset.series_of(study))[0]
    assert (
        cli(
            "download", "series", "--url", url, "-o", str(tmp_path), "-x", study, "-y", series, "-q"
        ).exit_code
        == 0
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    plan = cli("download", "studies", "--url", url, "-o", str(tmp_path), "-x", study, "-d")
    assert plan.exit_code == 0, plan.output
    count = len(dataset.instances_of(study, series))
    line = next(line for line in plan.stdout.splitlines() if series in line)
    assert re.search(rf"\s0\s+{count}\s+0$", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_download_meta_only_per_series_and_per_instance(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    study = study_with_series(dataset)
    series = sorted(dataset.series_of(study))[0]
    instances = dataset.instances_of(study, series)
    per_series = tmp_path / "series"
    result = cli(
        "download",
        "series",
        "--url",
        url,
        "-o",
        str(per_series),
        "-x",
        study,
        "-y",
        series,
        "--meta-only",
    )
    assert result.exit_code == 0, result.output
    assert not list(per_series.rglob("*.dcm"))
    (metadata,) = per_series.rglob("series_metadata.json")
    assert metadata.parent == per_series / study / series
    items = json.loads(metadata.read_text())
    assert sorted(i["00080018"]["Value"][0] for i in items) == sorted(i.sop_uid for i in instances)
    per_instance = tmp_path / "instance"
    result = cli(
        "download",
        "series",
        "--url",
        url,
        "-o",
        str(per_instance),
        "-x",
        study,
        "-y",
        series,
        "--meta-only-per-instance",
    )
    assert result.exit_code == 0, result.output
    assert not list(per_instance.rglob("*.dcm"))
    files = sorted(per_instance.rglob("*.json"))
    assert sorted(p.stem for p in files) == sorted(i.sop_uid for i in instances)
    rows = read_csv(only_table(per_instance, "downloaded_series_instances"))
    assert {r["Status"] for r in rows} == {"metadata"}


def test_download_layouts(cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path) -> None:
    study = study_with_series(dataset)
    series = sorted(dataset.series_of(study))[0]
    expected = dataset.instances_of(study, series)
    base = ("download", "series", "--url", url, "-x", study, "-y", series, "-q")
    legacy = cli(*base, "-o", str(tmp_path / "k"), "--kheops-client-layout")
    assert legacy.exit_code == 0, legacy.output
    assert_tree_matches(tmp_path / "k", expected, "{SeriesInstanceUID}/{SOPInstanceUID}.dcm")
    custom = cli(*base, "-o", str(tmp_path / "c"), "--layout", "{PatientID}/{SOPInstanceUID}.dcm")
    assert custom.exit_code == 0, custom.output
    for instance in expected:
        assert (tmp_path / "c" / instance.patient_id / f"{instance.sop_uid}.dcm").is_file()
    bad = cli(*base, "-o", str(tmp_path / "b"), "--layout", "{Nope}/{SOPInstanceUID}.dcm")
    assert_one_error_line(bad, ExitCode.USAGE, "--layout", "not a DICOM keyword")
    both = cli(
        *base,
        "-o",
        str(tmp_path / "b"),
        "--layout",
        "{SOPInstanceUID}.dcm",
        "--kheops-client-layout",
    )
    assert_one_error_line(both, ExitCode.USAGE, "not both")
    assert not (tmp_path / "b").exists()


def test_download_transport_options(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    compressed = next(i for i in dataset.instances if i.transfer_syntax.endswith(".4.90"))
    result = cli(
        "download",
        "series",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "-x",
        compressed.study_uid,
        "-y",
        compressed.series_uid,
        "--transfer-syntax",
        "*",
        "-j",
        "1",
        "--fsync",
        "--timeout",
        "30",
        "--retries",
        "1",
        "--insecure",
    )
    assert result.exit_code == 0, result.output
    assert_tree_matches(tmp_path, [compressed], DEFAULT_LAYOUT)  # as stored, byte for byte
    bad = cli("download", "series", "--url", url, "-o", str(tmp_path), "--transfer-syntax", "jpeg")
    assert_one_error_line(bad, ExitCode.USAGE, "--transfer-syntax")
    zero = cli("download", "series", "--url", url, "-o", str(tmp_path), "-j", "0")
    assert_one_error_line(zero, ExitCode.USAGE, "--concurrency")


def test_download_of_a_missing_study_is_incomplete(cli: Run, url: str, tmp_path: Path) -> None:
    result = cli("download", "studies", "--url", url, "-o", str(tmp_path), "-x", "1.2.3.4.5")
    assert result.exit_code == ExitCode.INCOMPLETE, result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert failures == ["failed: study 1.2.3.4.5: study not found on the server (no series)"]
    assert "error: the download is incomplete (1 failures, listed above)" in result.stderr
    rows = read_csv(only_table(tmp_path, "downloaded_study_instances"))
    assert [(r["StudyInstanceUID"], r["Status"]) for r in rows] == [("1.2.3.4.5", "failed")]


def test_download_progress_lines_when_not_a_terminal(
    cli: Run, dataset: OrthancDataset, url: str, tmp_path: Path
) -> None:
    result = cli("download", "studies", "--url", url, "-o", str(tmp_path), "-v")
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    series_count = len({i.series_uid for i in dataset.instances})
    assert len(progress) >= series_count  # -v: a line per finished series
    assert re.fullmatch(
        rf"progress: {series_count}/{series_count} series, {len(dataset.instances)}/"
        rf"{len(dataset.instances)} instances, [\d.]+ MB, [\d.]+ MB/s, ETA \S+",
        progress[-1],
    ), progress[-1]
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    quiet = cli("download", "studies", "--url", url, "-o", str(tmp_path), "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


# --------------------------------------------------------------------------- Basic auth


def test_basic_auth_user_and_password(
    cli: Run, orthanc_basic_auth: OrthancServer, tmp_path: Path
) -> None:
    url = orthanc_basic_auth.dicomweb_url
    ok = cli("list", "studies", "--url", url, "-d", "--user", "alice", "--password", "s3cret")
    assert ok.exit_code == 0, ok.output
    from_env = cli(
        "list", "studies", "--url", url, "-d", "--user", "alice", env={"KHEOPS_PASSWORD": "s3cret"}
    )
    assert from_env.exit_code == 0, from_env.output
    token_as_password = cli(
        "list",
        "studies",
        "--url",
        url,
        "-d",
        "--user",
        "alice",
        "--basic-token",
        env={"KHEOPS_TOKEN": "s3cret"},
    )
    assert token_as_password.exit_code == 0, token_as_password.output


def test_basic_auth_wrong_password_exits_3_with_a_token_hint(
    cli: Run, orthanc_basic_auth: OrthancServer, tmp_path: Path
) -> None:
    url = orthanc_basic_auth.dicomweb_url
    wrong = cli(
        "list",
        "studies",
        "--url",
        url,
        "-d",
        "--user",
        "alice",
        "--password",
        "not-the-password-42",
    )
    assert_one_error_line(wrong, ExitCode.AUTH, "401", "token")
    assert "not-the-password-42" not in wrong.output
    loud = cli(
        "download",
        "studies",
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--user",
        "alice",
        "-vvv",
        env={"KHEOPS_PASSWORD": "not-the-password-42"},
    )
    assert loud.exit_code == ExitCode.AUTH
    assert "not-the-password-42" not in loud.output
    nothing = cli("list", "studies", "--url", url, "-d")
    assert_one_error_line(nothing, ExitCode.AUTH, "401")


def test_contradictory_credentials_are_usage_errors(cli: Run, url: str) -> None:
    env_token = cli(
        "list",
        "studies",
        "--url",
        url,
        "-d",
        "--user",
        "a",
        "--password",
        "b",
        env={"ACCESS_TOKEN": "t"},
    )
    assert_one_error_line(env_token, ExitCode.USAGE, "ACCESS_TOKEN")
    half = cli("list", "studies", "--url", url, "-d", "--user", "a")
    assert_one_error_line(half, ExitCode.USAGE, "user name and a password")


def test_ca_bundle_and_insecure(cli: Run, url: str, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    bad = cli("list", "studies", "--url", url, "-d", "--ca-bundle", str(not_pem))
    assert_one_error_line(bad, ExitCode.USAGE, "CA bundle")
    both = cli("list", "studies", "--url", url, "-d", "--ca-bundle", str(not_pem), "--insecure")
    assert_one_error_line(both, ExitCode.USAGE, "--insecure")
    missing = cli("list", "studies", "--url", url, "-d", "--ca-bundle", str(tmp_path / "none"))
    assert_one_error_line(missing, ExitCode.USAGE, "--ca-bundle")


# --------------------------------------------------------------------------- fake Kheops

TOKEN = "kheops-TOKEN-7f3a9c2b51e4d6"
FAKE_STUDIES = [f"1.2.40.7.{n}" for n in range(1, 4)]


def fake_archive() -> FakeArchive:
    archive = FakeArchive()
    for s, study in enumerate(FAKE_STUDIES):
        for r, modality in enumerate(("CT", "MR")):
            series = f"{study}.{r + 1}"
            for i in range(2):
                archive.add_part10(
                    make_instance(
                        study,
                        series,
                        f"{series}.{i + 1}",
                        patient_id=f"P{s}",
                        modality=modality,
                        seed=s * 10 + r,
                        size=600,
                    )
                )
    return archive


@pytest.fixture
def kheops() -> Iterator[FakeDicomWebServer]:
    with FakeDicomWebServer(fake_archive(), token=TOKEN, forbidden_albums={"other"}) as server:
        yield server


class LinkRetrieveUrlServer(FakeDicomWebServer):
    """Kheops in link mode: every RetrieveURL carries the token (here whatever the auth)."""

    def _url(self, base: str, study: str, series: str | None = None, sop: str | None = None) -> str:
        return super()._url(self.link_url(), study, series, sop)


def all_text(result: Result, *directories: Path) -> str:
    """Everything the user can see: stdout, stderr and every file written."""
    texts = [result.output]
    for directory in directories:
        texts += [p.read_text(errors="replace") for p in directory.rglob("*.csv")]
        texts += [p.read_text(errors="replace") for p in directory.rglob("*.json")]
    return "\n".join(texts)


def test_token_never_shown_at_vvv_nor_in_tables(
    cli: Run, kheops: FakeDicomWebServer, tmp_path: Path
) -> None:
    env = {"KHEOPS_TOKEN": TOKEN}
    listed = cli("list", "series", "--url", kheops.base_url, "-o", str(tmp_path), "-vvv", env=env)
    assert listed.exit_code == 0, listed.output
    downloaded = cli(
        "download",
        "series",
        "--url",
        kheops.base_url,
        "-o",
        str(tmp_path),
        "-vvv",
        "--meta-only-per-instance",
        env=env,
    )
    assert downloaded.exit_code == 0, downloaded.output
    assert "httpx info: HTTP Request" in downloaded.stderr
    for result in (listed, downloaded):
        assert TOKEN not in all_text(result, tmp_path)
    auth = {r.authorization for r in kheops.requests}
    assert auth == {f"Bearer {TOKEN}"}


def test_link_url_works_and_its_token_never_shows(
    cli: Run, kheops: FakeDicomWebServer, tmp_path: Path
) -> None:
    link = kheops.link_url() + "/"
    listed = cli("list", "series", "--url", link, "-o", str(tmp_path), "-vvv")
    assert listed.exit_code == 0, listed.output
    assert len(read_csv(only_table(tmp_path, "available_series"))) == 6
    downloaded = cli(
        "download", "studies", "--url", link, "-o", str(tmp_path), "-vvv", "-x", FAKE_STUDIES[0]
    )
    assert downloaded.exit_code == 0, downloaded.output
    for result in (listed, downloaded):
        assert TOKEN not in all_text(result, tmp_path)
    failed = cli("list", "studies", "--url", kheops.link_url("wrong-" + TOKEN), "-d", "-vvv")
    assert failed.exit_code == ExitCode.AUTH
    assert TOKEN not in failed.output


def test_retrieve_url_token_is_redacted(cli: Run, tmp_path: Path) -> None:
    with LinkRetrieveUrlServer(fake_archive(), token=TOKEN) as server:
        result = cli(
            "list", "series", "--url", server.link_url(), "-o", str(tmp_path), "--format", "json"
        )
        instances = cli(
            "list",
            "instances",
            "--url",
            server.link_url(),
            "-d",
            "--format",
            "csv",
            "-x",
            FAKE_STUDIES[0],
        )
    assert result.exit_code == 0, result.output
    urls = [r["RetrieveURL"] for r in json.loads(result.stdout)]
    assert urls and all("/link/***/studies/" in u for u in urls)
    assert all(
        "/link/***/studies/" in r["RetrieveURL"]
        for r in read_csv(only_table(tmp_path, "available_series"))
    )
    assert "/link/***/studies/" in instances.stdout
    assert TOKEN not in all_text(result, tmp_path) + instances.output


def test_truncated_list_warns_at_default_verbosity(cli: Run, tmp_path: Path) -> None:
    with FakeDicomWebServer(fake_archive(), max_results=2) as server:
        capped = cli(
            "list", "studies", "--url", server.base_url, "-o", str(tmp_path), "--page-size", "0"
        )
        paged = cli("list", "studies", "--url", server.base_url, "-d", "--page-size", "1")
        quiet = cli("list", "studies", "--url", server.base_url, "-d", "--page-size", "0", "-q")
        capped_download = cli(
            "download",
            "studies",
            "--url",
            server.base_url,
            "-o",
            str(tmp_path / "d"),
            "--page-size",
            "0",
        )
        server.ignore_offset = True
        broken = cli("list", "studies", "--url", server.base_url, "-d")
    assert capped.exit_code == ExitCode.INCOMPLETE, capped.output
    assert capped_download.exit_code == ExitCode.INCOMPLETE, capped_download.output
    assert "the study list is incomplete" in capped_download.stderr
    assert "holds back 1 more results" in capped.stderr
    assert "warning: the list is incomplete" in capped.stderr
    assert len(read_csv(only_table(tmp_path, "available_studies"))) == 2
    assert paged.exit_code == 0 and "warning" not in paged.stderr  # paging gets past the cap
    assert "3 studies" in paged.stdout
    assert "warning: the list is incomplete" in quiet.stderr
    assert_one_error_line(broken, ExitCode.SERVER, "ignores 'offset'")


def test_wrong_token_and_forbidden_album(cli: Run, kheops: FakeDicomWebServer) -> None:
    wrong = cli("list", "studies", "--url", kheops.base_url, "-d", "--token", "nope")
    assert_one_error_line(wrong, ExitCode.AUTH, "401", "--token")
    forbidden = cli(
        "list",
        "studies",
        "--url",
        kheops.base_url,
        "-d",
        "--album",
        "other",
        env={"ACCESS_TOKEN": TOKEN},
    )
    assert_one_error_line(forbidden, ExitCode.AUTH, "403", "token")
    download = cli(
        "download",
        "studies",
        "--url",
        kheops.base_url,
        "-d",
        "--album",
        "other",
        env={"KHEOPS_TOKEN": TOKEN},
    )
    assert_one_error_line(download, ExitCode.AUTH, "403")
    both = cli(
        "list",
        "studies",
        "--url",
        kheops.base_url,
        "-d",
        "--album",
        "a",
        "--inbox",
        env={"KHEOPS_TOKEN": TOKEN},
    )
    assert_one_error_line(both, ExitCode.USAGE, "album and inbox")


def test_query_options_reach_the_server(cli: Run, kheops: FakeDicomWebServer) -> None:
    env = {"KHEOPS_TOKEN": TOKEN}
    assert (
        cli(
            "list",
            "studies",
            "--url",
            kheops.base_url,
            "-d",
            "--album",
            "mine",
            "--fuzzy",
            "--search-filter",
            "PatientID",
            "P1",
            env=env,
        ).exit_code
        == 0
    )
    (query,) = kheops.requests_matching("/studies?")
    assert query.param("album") == "mine"
    assert query.param("fuzzymatching") == "true"
    assert query.param("PatientID") == "P1"
    kheops.reset_stats()
    assert (
        cli(
            "list", "studies", "--url", kheops.base_url, "-d", "--inbox", "--basic-token", env=env
        ).exit_code
        == 0
    )
    (query,) = kheops.requests_matching("/studies?")
    assert query.param("inbox") == "true"
    assert (query.authorization or "").startswith("Basic ")


def test_series_queries_are_concurrent_and_bounded(cli: Run) -> None:
    archive = FakeArchive()
    for n in range(8):
        archive.add_part10(make_instance(f"1.2.9.{n}", f"1.2.9.{n}.1", f"1.2.9.{n}.1.1"))
    with FakeDicomWebServer(archive) as server:
        for n in range(8):
            server.add_fault(f"/studies/1.2.9.{n}/series", Delay(0.15))
        result = cli("list", "series", "--url", server.base_url, "-d", "-j", "3")
        peak = server.max_in_flight
    assert result.exit_code == 0, result.output
    assert "8 series" in result.stdout
    assert peak == 3


def test_failed_series_are_listed_and_exit_1(
    cli: Run, kheops: FakeDicomWebServer, tmp_path: Path
) -> None:
    broken = f"{FAKE_STUDIES[1]}.2"
    kheops.add_fault(f"/series/{broken}", Status(404), times=50)
    result = cli(
        "download",
        "studies",
        "--url",
        kheops.base_url,
        "-o",
        str(tmp_path),
        "--retries",
        "0",
        env={"KHEOPS_TOKEN": TOKEN},
    )
    assert result.exit_code == ExitCode.INCOMPLETE, result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 1 and broken in failures[0] and "404" in failures[0]
    rows = read_csv(only_table(tmp_path, "downloaded_study_instances"))
    assert [r["SeriesInstanceUID"] for r in rows if r["Status"] == "failed"] == [broken]
    assert sum(r["Status"] == "written" for r in rows) == 10


def test_busy_server_is_retried_and_a_timeout_is_one_line(
    cli: Run, kheops: FakeDicomWebServer
) -> None:
    env = {"KHEOPS_TOKEN": TOKEN}
    kheops.add_fault("/studies?", Status(503, retry_after=0.05), times=1)
    retried = cli("list", "studies", "--url", kheops.base_url, "-d", "--retries", "2", env=env)
    assert retried.exit_code == 0, retried.output
    kheops.add_fault("/studies?", Status(503), times=1)
    busy = cli("list", "studies", "--url", kheops.base_url, "-d", "--retries", "0", env=env)
    assert_one_error_line(busy, ExitCode.SERVER, "503")
    kheops.add_fault("/studies?", Delay(2.0), times=1)
    slow = cli(
        "list",
        "studies",
        "--url",
        kheops.base_url,
        "-d",
        "--retries",
        "0",
        "--timeout",
        "0.3",
        env=env,
    )
    assert_one_error_line(slow, ExitCode.SERVER, "timed out")


# --------------------------------------------------------------------------- units


def test_filters_split_by_level() -> None:
    pairs = [("PatientID", "P1"), ("Modality", "CT"), ("SeriesDescription", "x*")]
    study, series = split_filters(pairs, series_level=True)
    assert study == {"PatientID": "P1", "Modality": "CT"}
    assert series == {"Modality": "CT", "SeriesDescription": "x*"}
    assert split_filters(pairs[:2], series_level=False) == (
        {"PatientID": "P1", "Modality": "CT"},
        {},
    )
    with pytest.raises(ConfigurationError, match="series-level"):
        split_filters(pairs, series_level=False)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("x"), ExitCode.USAGE),
        (AuthenticationError("x", status_code=401, url="u"), ExitCode.AUTH),
        (PermissionDeniedError("x", status_code=403, url="u"), ExitCode.AUTH),
        (TransportError("x"), ExitCode.SERVER),
        (ProtocolError("x"), ExitCode.SERVER),
        (IncompleteSeriesError("x"), ExitCode.INCOMPLETE),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (PermissionError(13, "Permission denied", "/x"), ExitCode.USAGE),
        (RuntimeError("bug"), ExitCode.SOFTWARE),
    ],
)
def test_exit_codes(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code


def test_exception_groups_report_the_most_telling_error() -> None:
    group_type = getattr(builtins, "ExceptionGroup", None)
    if group_type is None:
        pytest.skip("ExceptionGroup is built in from Python 3.11")
    auth = AuthenticationError("401", status_code=401, url="u")
    group = group_type("x", [TransportError("t"), group_type("y", [auth])])
    assert primary_error(group) is auth


def test_interrupt_and_internal_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    redactor = Redactor.for_secrets(["s3cret"])
    assert report_error(KeyboardInterrupt(), redactor=redactor, verbosity=0) == 130
    assert report_error(RuntimeError("s3cret bug"), redactor=redactor, verbosity=0) == 70
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: interrupted"
    assert lines[1].startswith("error: internal error: RuntimeError: *** bug")


def test_logging_redacts_every_record_and_restores_levels() -> None:
    stream = io.StringIO()
    httpx_logger = logging.getLogger("httpx")
    before = (httpx_logger.level, logging.getLogger("kheops_async").level)
    redactor = Redactor.for_secrets(["p4ss"])
    with configured_logging(3, quiet=False, redactor=redactor, stream=stream):
        httpx_logger.debug("GET %s", "http://h/api/link/TOKENX/studies?pw=p4ss")
        try:
            raise ValueError("p4ss")
        except ValueError:
            logging.getLogger("kheops_async").exception("failed with %s", "p4ss")
    text = stream.getvalue()
    assert "p4ss" not in text and "TOKENX" not in text
    assert "/link/***/studies" in text and "Traceback" in text
    assert (httpx_logger.level, logging.getLogger("kheops_async").level) == before
    assert not any(h for h in httpx_logger.handlers if h.stream is stream)  # type: ignore[attr-defined]
