"""Layouts and sanitisation: a hostile value can never place a file outside the destination."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kheops_async import ConfigurationError, Layout
from kheops_async.layout import KHEOPS_CLIENT_LAYOUT, sanitize_component


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3", "1.2.3"),
        ("../../etc/passwd", "___.._etc_passwd"),
        ("a/b", "a_b"),
        ("..", "__"),
        (".hidden", "_hidden"),
        ("", "unknown"),
        (None, "unknown"),
        ("CON", "_CON"),
        ("Doe^John", "Doe_John"),
        ("x\x00y", "x_y"),
    ],
)
def test_sanitize_component(value: object, expected: str) -> None:
    assert sanitize_component(value) == expected


@given(st.text(max_size=300))
def test_any_value_stays_inside(value: str) -> None:
    root = Path("/dest")
    layout = Layout("{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm")
    final = layout.resolve(
        root, {"PatientID": value, "StudyInstanceUID": value, "SOPInstanceUID": value}
    )
    assert root in final.parents
    assert all(part not in ("..", ".", "") for part in final.relative_to(root).parts)
    assert all(len(part) <= 132 for part in final.relative_to(root).parts)


@pytest.mark.parametrize(
    "template",
    [
        "/abs/{SOPInstanceUID}.dcm",
        "../{SOPInstanceUID}",
        "{StudyInstanceUID}",
        "{NotAKeyword}/{SOPInstanceUID}",
        "{SOPInstanceUID:>10}",
        "{SOPInstanceUID",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(ConfigurationError):
        Layout(template)


def test_known_layouts_render() -> None:
    values = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    assert str(Layout().render(values)) == "1.2/1.2.3/1.2.3.4.dcm"
    assert str(Layout(KHEOPS_CLIENT_LAYOUT).render(values)) == "1.2.3/1.2.3.4.dcm"
    assert Layout().with_suffix(".json").template.endswith("{SOPInstanceUID}.json")
