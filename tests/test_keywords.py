"""The keyword table agrees with pydicom's dictionary, and unknown keywords still resolve."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword

from kheops_async.keywords import COMMON_TAGS, tag_for


@pytest.mark.parametrize("keyword", sorted(COMMON_TAGS))
def test_every_entry_is_pydicoms_tag(keyword: str) -> None:
    assert COMMON_TAGS[keyword] == tag_for_keyword(keyword)


def test_other_keywords_come_from_pydicom() -> None:
    assert tag_for("PerformingPhysicianName") == 0x00081050  # not in the table
    assert tag_for("NotADicomKeyword") is None
