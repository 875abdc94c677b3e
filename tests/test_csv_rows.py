"""CSV rows: read back exactly whatever the values; plain rows as the csv module writes them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kheops_async.csv_rows import csv_line
from kheops_async.engine.recorder import TABLE_COLUMNS, InstanceTable
from kheops_async.report import InstanceRecord, InstanceStatus

_ODD_TEXT = st.text(alphabet=st.sampled_from('ab1.,"\r\n é-_/ '), max_size=12)
_PLAIN_TEXT = st.text(alphabet=st.sampled_from("ab1.é-_/ :"), max_size=12)


def _read_back(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(_ODD_TEXT, min_size=1, max_size=5), max_size=5))
def test_any_values_are_read_back_as_written(rows: list[list[str]]) -> None:
    """Commas, quotes, ``\\n`` and bare ``\\r`` included (a bare ``\\r`` broke a row)."""
    assert _read_back("".join(csv_line(row) for row in rows)) == rows


@settings(max_examples=200, deadline=None)
@given(row=st.lists(_PLAIN_TEXT, min_size=1, max_size=11))
def test_a_plain_row_is_what_the_csv_module_writes(row: list[str]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    assert csv_line(row) == out.getvalue()


@pytest.mark.parametrize("value", ["a\rb", "a\nb", 'say "hi"', "x,y", "\r"])
def test_an_odd_value_is_quoted(value: str) -> None:
    assert csv_line(["1", value]) == '1,"' + value.replace('"', '""') + '"\n'


def test_the_instance_table_keeps_hostile_values_in_their_row(tmp_path: Path) -> None:
    """A PatientID with a bare CR and an error with a comma stay in their cells."""
    table = InstanceTable(tmp_path / "instances.csv", tmp_path)
    table.open()
    record = InstanceRecord(
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid="1.2.3.4",
        patient_id="PAT\r1",
        file_size=12,
        path=f"{tmp_path}/a/b.dcm",
        status=InstanceStatus.FAILED,
        error='part 3: "bad", header',
    )
    table.write(record)
    table.write(InstanceRecord(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.5"))
    table.close()
    rows = _read_back(table.path.read_bytes().decode("utf-8"))
    assert rows[0] == list(TABLE_COLUMNS)
    assert rows[1] == [
        "1.2",
        "1.2.3",
        "1.2.3.4",
        "PAT\r1",
        "",
        "",
        "",
        "12",
        "a/b.dcm",
        "failed",
        'part 3: "bad", header',
    ]
    assert rows[2][2] == "1.2.3.5"
    assert len(rows) == 3
