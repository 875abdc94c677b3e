"""What the command line draws: the live download display, the tables, the end summary.

Each is rendered with a recording rich console at 80 and 140 columns (and narrower),
and its text is checked: the bar, the percentage, the counts, the rate, the ETA rule,
the series in flight, shortened UIDs, whole values with ``--wide``, plain text off a
terminal, and server text shown as data (never markup, never escape codes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from kheops_async.auth import Redactor
from kheops_async.cli.humanize import duration, printable, shorten_middle
from kheops_async.cli.live_view import DownloadView
from kheops_async.cli.logging_setup import configured_logging
from kheops_async.cli.progress import ProgressDisplay
from kheops_async.cli.snapshot import SeriesLine, Snapshot, describe
from kheops_async.cli.summary import MAX_FAILURES_SHOWN, failure_lines, summary_lines
from kheops_async.cli.table_view import fit_widths, print_table, table_view
from kheops_async.cli.tables import SERIES_COLUMNS, SERIES_VIEW, Table, render
from kheops_async.report import DownloadProgress, DownloadReport, InstanceRecord, SeriesFailure

BIG_SERIES = "1.2.826.0.1.3680043.8.498.10293847561029384756102938475610.2.1"
STUDY = "1.2.826.0.1.3680043.8.498.55512340000111122223333444455556666"


class TerminalBuffer(io.StringIO):
    """A text buffer that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def drawn(renderable: object, width: int) -> list[str]:
    """The lines a terminal of ``width`` columns shows for ``renderable``."""
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True)
    console.print(renderable)
    return console.export_text().splitlines()


def snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = {
        "series_done": 18,
        "series_total": 19,
        "instances_done": 408,
        "instances_expected": 560,
        "bytes_done": 28_800_000,
        "rate": 11_500_000.0,
        "elapsed": 2.4,
        "eta": 9.2,
        "failures": 0,
        "in_flight": (
            SeriesLine(BIG_SERIES, 48, 45_300_000, 200),
            SeriesLine("1.2.3.4", 3, 2_000),
        ),
    }
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- live view


@pytest.mark.parametrize("width", [80, 140])
def test_live_view_shows_bar_percentage_counts_rate_eta_and_series_in_flight(width: int) -> None:
    lines = drawn(DownloadView(snapshot(failures=1)), width)
    assert len(lines) == 4
    bar, numbers, big, small = lines
    assert bar.startswith("━") and bar.count("━") > 20
    assert bar.endswith(" 72%  408/560 instances  18/19 series")
    assert numbers == "28.8 MB  11.5 MB/s  ETA 0:09  elapsed 0:02  1 failed"
    assert big.endswith("  48/200 instances  45.3 MB") and big.startswith("  1.2.826.0.1.")
    assert (BIG_SERIES in big) == (width == 140)  # shortened in the middle at 80
    if width == 80:
        assert "…" in big and big.split("…")[1].split()[0] in BIG_SERIES[-30:]
    assert small == "  1.2.3.4  3 instances  0.0 MB"
    assert all(len(line) <= width for line in lines)


@pytest.mark.parametrize("width", [20, 40, 60])
def test_live_view_never_wider_than_a_narrow_terminal(width: int) -> None:
    lines = drawn(DownloadView(snapshot(failures=3)), width)
    assert len(lines) == 4  # no line wrapped
    assert all(len(line) <= width for line in lines)
    assert "72%" in lines[0]


def test_live_view_while_planning_and_without_an_estimate() -> None:
    lines = drawn(
        DownloadView(snapshot(series_total=None, instances_expected=None, eta=None, in_flight=())),
        80,
    )
    assert lines[0].endswith(" --%  408/? instances  18/? series")
    assert "ETA --" in lines[1]
    assert len(lines) == 2


def test_percentage_never_says_100_before_the_end() -> None:
    assert snapshot(instances_done=559).percent == "99%"
    assert snapshot(instances_done=600).percent == "99%"  # more than counted: still going
    assert snapshot(series_done=19, instances_done=555).percent == "100%"
    assert snapshot(instances_expected=None).percent == "--%"


def test_snapshot_of_a_progress_uses_the_byte_eta_and_the_concurrency() -> None:
    progress = DownloadProgress(series_total=3, planning_done=True, instances_expected=30)
    for series in ("1.2.1", "1.2.2", "1.2.3"):
        progress.count_instance(InstanceRecord("1.2", series, f"{series}.1", file_size=1_000))
    progress.bytes_done = 3_000
    shot = Snapshot.of(progress, rate=1_000.0, concurrency=2)
    assert [s.series_uid for s in shot.in_flight] == ["1.2.2", "1.2.3"]
    assert shot.eta == pytest.approx(27.0)  # 27 instances of 1 kB at 1 kB/s
    assert describe(shot) == "0/3 series, 3/30 instances, 0.0 MB, 0.0 MB/s, ETA 0:27"


# --------------------------------------------------------------------------- the display


def test_log_records_print_above_the_live_display_as_text() -> None:
    stream = TerminalBuffer()
    progress = DownloadProgress(series_total=4, series_done=1, planning_done=True)
    display = ProgressDisplay(progress, stream, live=True, width=80)

    async def run() -> None:
        with configured_logging(0, quiet=False, redactor=Redactor(), stream=stream) as handler:
            display.handler = handler
            async with anyio.create_task_group() as group:
                group.start_soon(display.run)
                await anyio.sleep(0.05)
                assert handler.live is not None
                logging.getLogger("kheops_async").warning("[bold]x\x1b[31m happened")
                await anyio.sleep(0.3)
                group.cancel_scope.cancel()
            assert handler.live is None

    anyio.run(run)
    text = stream.getvalue()
    assert "warning: [bold]x?[31m happened" in text  # literal, the ESC replaced
    assert "\x1b[31m happened" not in text
    before, after = text.split("warning: ")
    assert "1/4 series" in before and "1/4 series" in after  # drawn, then drawn again below
    assert "\x1b[?25h" in after  # the cursor is shown again when the display goes,
    assert text.endswith("\x1b[1A\x1b[2K")  # and the display is erased


@pytest.mark.anyio
async def test_progress_refreshes_four_times_a_second_and_logs_on_a_timer() -> None:
    live_stream, log_stream = TerminalBuffer(), io.StringIO()
    live = ProgressDisplay(DownloadProgress(), live_stream, live=True, width=80)
    plain = ProgressDisplay(DownloadProgress(), log_stream, live=False, interval=0.2)
    async with anyio.create_task_group() as group:
        group.start_soon(live.run)
        group.start_soon(plain.run)
        await anyio.sleep(0.9)
        group.cancel_scope.cancel()
    assert 3 <= live_stream.getvalue().count("0/? instances") <= 6
    logged = log_stream.getvalue()
    lines = logged.splitlines()
    assert 3 <= len(lines) <= 5
    assert all(line.startswith("progress: 0/? series, 0/? instances") for line in lines)
    assert "\x1b" not in logged and "\r" not in logged


# --------------------------------------------------------------------------- tables


def series_table(description: str = "Thorax [bold]x\x1b[2J") -> Table:
    rows: list[dict[str, str | int | list[str] | None]] = [
        {
            "StudyInstanceUID": STUDY,
            "SeriesInstanceUID": f"{STUDY}.{n}",
            "PatientID": "P1",
            "SeriesDateTime": "2024-01-02 10:15:00",
            "Modality": "CT",
            "SeriesNumber": n,
            "NumberOfSeriesRelatedInstances": 200 + n,
            "SeriesDescription": description if n == 1 else None,
        }
        for n in (1, 2)
    ]
    return Table("available_series", "series", SERIES_COLUMNS, rows, SERIES_VIEW)


@pytest.mark.parametrize("width", [80, 140])
def test_a_table_fits_the_terminal_with_uids_shortened_in_the_middle(width: int) -> None:
    lines = drawn(table_view(series_table(), width=width), width)
    assert all(len(line) <= width for line in lines), lines
    assert len(lines) == 3  # headings and two rows, none wrapped
    first = lines[1]
    assert first.startswith("P1  ") and " CT " in first and " 201 " in first
    assert STUDY not in first  # two 64-character UIDs cannot fit whole
    assert "…" in first
    assert f"{STUDY[-3:]}.1  " in first and first.rstrip().endswith(STUDY[-5:])
    # Server text is shown literally (never as markup), cut with an ellipsis when narrow.
    assert ("Thorax [bold]x?[2J" if width == 140 else "Thorax…") in first


def test_wide_and_piped_tables_show_whole_values_and_piped_ones_no_escape_codes() -> None:
    table = series_table()
    wide = TerminalBuffer()
    print_table(table, wide=True, stream=wide, width=80)
    assert f"{STUDY}.1" in wide.getvalue() and STUDY in wide.getvalue()
    piped = io.StringIO()
    print_table(table, stream=piped)
    text = piped.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0].split() == [
        "PatientID",
        "Date",
        "Modality",
        "No",
        "Instances",
        "Description",
        "SeriesInstanceUID",
        "StudyInstanceUID",
    ]
    assert f"{STUDY}.1" in lines[1] and f"{STUDY}.2" in lines[2]
    assert "Thorax [bold]x?[2J" in lines[1]
    assert lines[-1] == "2 series"
    assert all(line == line.rstrip() for line in lines)


def test_fitting_gives_way_uids_first_then_text_then_the_rest() -> None:
    kinds = ["short", "count", "text", "uid", "uid"]
    natural = [19, 9, 60, 64, 64]
    assert sum(fit_widths(natural, kinds, 400)) == 19 + 9 + 40 + 64 + 64  # text capped
    widths = fit_widths(natural, kinds, 140)
    assert widths == [19, 9, 40, 32, 32]  # the UIDs gave way, evenly
    widths = fit_widths(natural, kinds, 80)
    assert widths[0] == 19 and widths[1] == 9 and widths[2] == 8
    assert sum(widths) + 8 == 80 and min(widths[3:]) >= 12
    narrow = fit_widths(natural, kinds, 40)
    assert narrow == [10, 9, 8, 12, 12]  # as narrow as it gets; rich cuts the rest


def test_csv_and_json_output_are_unchanged() -> None:
    table = series_table(description="a, b")
    assert render(table, "csv") == (
        ",".join(SERIES_COLUMNS)
        + "\n"
        + f'{STUDY},{STUDY}.1,P1,,,2024-01-02 10:15:00,CT,1,201,"a, b",\n'
        + f"{STUDY},{STUDY}.2,P1,,,2024-01-02 10:15:00,CT,2,202,,\n"
    )
    rows = json.loads(render(table, "json"))
    assert rows[0]["SeriesNumber"] == 1 and rows[1]["SeriesDescription"] is None
    assert render(table, "json").startswith('[\n  {\n    "StudyInstanceUID": ')
    first = next(csv.DictReader(io.StringIO(render(table, "csv"))))
    assert first["SeriesDescription"] == "a, b"


# --------------------------------------------------------------------------- summary


def test_summary_counts_failures_in_one_line_each_and_says_where_things_are() -> None:
    report = DownloadReport(
        series_total=30,
        series_completed=5,
        written=120,
        skipped=7,
        bytes_written=48_000_000,
        seconds=4.0,
        table_path=Path("out/downloaded_study_instances_x.csv"),
        journal_path=Path("out/.kheops-async/journal.sqlite"),
    )
    for n in range(25):
        report.add_failure(SeriesFailure("1.2", f"1.2.{n}", f"HTTP 404\nnot [red]found{n}"))
    lines = failure_lines(report)
    assert len(lines) == MAX_FAILURES_SHOWN + 1
    assert lines[0] == "failed: study 1.2 series 1.2.0: HTTP 404 not [red]found0"
    assert lines[-1] == "failed: ... and 5 more (see the table)"
    (done, table, journal) = summary_lines(report)
    assert done.startswith("done: 5/30 series, 120 written, 7 skipped, 0 failed instances")
    assert "25 failed series, 48.0 MB in 4.0s (12.0 MB/s)" in done
    assert table == "saved the list of instances to out/downloaded_study_instances_x.csv"
    assert journal == "journal: out/.kheops-async/journal.sqlite"
    assert summary_lines(report, stopped=True)[0].startswith("stopped: ")


# --------------------------------------------------------------------------- humanize


def test_humanize() -> None:
    assert shorten_middle("1.2.826.0.1.3680043.8.498.1234", 16) == "1.2.826.…98.1234"
    assert shorten_middle("1.2.3", 16) == "1.2.3"
    assert len(shorten_middle(BIG_SERIES, 1)) == 1
    assert duration(None) == "--" and duration(75) == "1:15" and duration(3725) == "1:02:05"
    assert printable("a\x1b[2Jb\tc\r\n") == "a?[2Jb c??"
    assert printable("a\nb\x07", keep_newlines=True) == "a\nb?"
