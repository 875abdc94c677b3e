"""Assertions about output trees, shared by every test that downloads.

A tree is what a user sees in ``--out-dir``: the instance files (and metadata JSON),
the tables (``*.csv``) and the engine's own ``.kheops-async/`` directory (journal,
lock, temporary files), which :func:`tree_files` leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from kheops_async.engine.state_dir import STATE_DIR_NAME

__all__ = [
    "Instance",
    "assert_no_temp_files",
    "assert_tree_holds",
    "assert_tree_is",
    "expected_tree",
    "temp_files",
    "tree_files",
]


class Instance(Protocol):
    """What the fake archive's and the Orthanc sample data's instances both have."""

    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...
    @property
    def data(self) -> bytes: ...


def expected_tree(dest: Path, instances: Iterable[Instance]) -> dict[Path, bytes]:
    """The default layout's files for ``instances``, with their bytes."""
    return {dest / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm": i.data for i in instances}


def assert_tree_holds(dest: Path, instances: Iterable[Instance]) -> None:
    """The tree is exactly ``instances`` in the default layout, byte for byte."""
    assert_tree_is(dest, expected_tree(dest, instances))


def temp_files(dest: Path) -> list[Path]:
    """Temporary files left under ``dest`` (none should outlive a run)."""
    tmp = dest / STATE_DIR_NAME / "tmp"
    return sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []


def assert_no_temp_files(dest: Path) -> None:
    """No temporary file and no temporary directory of a process remain."""
    assert temp_files(dest) == []
    tmp = dest / STATE_DIR_NAME / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def tree_files(dest: Path, *, suffixes: Iterable[str] = (".dcm", ".json")) -> dict[Path, bytes]:
    """The instance (and metadata) files of a tree with their bytes; tables excluded."""
    wanted = tuple(suffixes)
    return {
        p: p.read_bytes()
        for p in dest.rglob("*")
        if p.is_file() and STATE_DIR_NAME not in p.relative_to(dest).parts and p.suffix in wanted
    }


def assert_tree_is(dest: Path, expected: Mapping[Path, bytes]) -> None:
    """The tree holds exactly ``expected`` (paths and bytes), and no temporary file."""
    found = tree_files(dest)
    assert sorted(found) == sorted(expected)
    different = [p for p, data in expected.items() if found[p] != data]
    assert different == []
    assert_no_temp_files(dest)
