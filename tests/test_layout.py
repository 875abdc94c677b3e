"""Layouts and sanitisation: a hostile value can never place a file outside the destination."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kheops_async import ConfigurationError, Layout
from kheops_async import layout as layout_module
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


def test_the_directory_is_rendered_once_per_series(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = layout_module.sanitize_component

    def counting(value: object) -> str:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(layout_module, "sanitize_component", counting)
    layout = Layout("{PatientID}/{SeriesInstanceUID}/{InstanceNumber}_{SOPInstanceUID}.dcm")
    paths = [
        layout.render(
            {
                "PatientID": "Doe^John",
                "SeriesInstanceUID": "1.2.3",
                "InstanceNumber": f"{n} ",
                "SOPInstanceUID": f"1.2.3.{n}",
            }
        )
        for n in range(50)
    ]
    assert paths[7] == "Doe_John/1.2.3/7_1.2.3.7.dcm"
    assert seen.count("Doe^John") == 1  # the directory: once
    assert len(seen) == 51  # and each InstanceNumber; plain UIDs are never re-sanitised
    other = layout.render(
        {"PatientID": "../x", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.1"}
    )
    assert other == "___x/1.2.3/unknown_1.2.3.1.dcm"  # other values, another directory


@pytest.mark.parametrize("value", [" 1.2.3", "1.2.3 ", ".1.2", "1..2", "1.2." + "3" * 70])
def test_values_that_only_look_like_uids_are_sanitised(value: str) -> None:
    path = Layout().render(
        {"StudyInstanceUID": value, "SeriesInstanceUID": value, "SOPInstanceUID": value}
    )
    safe = sanitize_component(value)
    assert path == f"{safe}/{safe}/{safe}.dcm"
