"""The benchmark data: generate it, load it into our own Orthanc, describe what to fetch.

Scenarios share an Orthanc when they use the same data (S2 and S3; S4's series and its
single instance), so each :class:`DataGroup` is loaded once and kept for every run of its
scenarios. Instances are generated and uploaded one at a time (``upload_instances`` takes
an iterator), so a 1 GB series never sits in memory.

===========  ==========================================================================
scenario     data
===========  ==========================================================================
S1           one series of 200 instances with 512 KiB of pixels (about 525 KB each)
S2           50 studies x 4 series x 20 instances of 50-100 KB (one size per study)
S3           S2's data, through the latency proxy (40 ms round trip)
S4a          one 1 GB series: four instances of 250 MB
S4b          one instance of 200 MB (a study of its own)
===========  ==========================================================================

``--quick`` shrinks every scenario (same shapes, far fewer bytes) for a smoke run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kheops_async.demo import (
    OrthancServer,
    SampleInstance,
    generate_large_series,
    iter_dataset,
    upload_instances,
)

__all__ = [
    "SCENARIOS",
    "Case",
    "DataGroup",
    "LoadedGroup",
    "SeriesInfo",
    "groups_for",
    "load_group",
]

SCENARIOS = ("S1", "S2", "S3", "S4")
"""Scenario names accepted by ``run_all.py --scenarios``."""


@dataclass(frozen=True)
class Shape:
    """Sizes of one generated data set (full or quick)."""

    s1_instances: int
    s1_pixel_bytes: int
    s2_studies: int
    s2_series: int
    s2_instances: int
    s2_min_pixel_bytes: int
    s2_max_pixel_bytes: int
    s4_instances: int
    s4_pixel_bytes: int
    s4_single_pixel_bytes: int


FULL = Shape(
    s1_instances=200,
    s1_pixel_bytes=512 * 1024,
    s2_studies=50,
    s2_series=4,
    s2_instances=20,
    s2_min_pixel_bytes=50_000,
    s2_max_pixel_bytes=100_000,
    s4_instances=4,
    s4_pixel_bytes=250_000_000,
    s4_single_pixel_bytes=200_000_000,
)
QUICK = Shape(
    s1_instances=40,
    s1_pixel_bytes=512 * 1024,
    s2_studies=6,
    s2_series=4,
    s2_instances=5,
    s2_min_pixel_bytes=50_000,
    s2_max_pixel_bytes=100_000,
    s4_instances=4,
    s4_pixel_bytes=25_000_000,
    s4_single_pixel_bytes=20_000_000,
)


@dataclass(frozen=True)
class SeriesInfo:
    """One stored series: its UIDs, instance count and total Part-10 bytes."""

    study_uid: str
    series_uid: str
    instances: int
    payload_bytes: int


@dataclass(frozen=True)
class Case:
    """One measured scenario: which series to fetch, and whether through the proxy."""

    name: str
    description: str
    series: tuple[SeriesInfo, ...]
    latency: bool = False
    whole_archive: bool = False  # every study on the server: tools list the studies

    @property
    def studies(self) -> list[str]:
        """Study UIDs, in order, without repeats."""
        return list(dict.fromkeys(s.study_uid for s in self.series))

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    @property
    def payload_bytes(self) -> int:
        """Bytes of DICOM (the Part-10 files) the case downloads: the MB/s numerator."""
        return sum(s.payload_bytes for s in self.series)


@dataclass
class DataGroup:
    """Data loaded into one Orthanc, and the cases that measure it."""

    name: str
    cases: list[str]
    shape: Shape

    def sources(self) -> list[tuple[str, Iterable[SampleInstance]]]:
        """``(case name, lazy instance iterator)`` for each part of the group's data."""
        shape = self.shape
        if self.name == "S1":
            return [
                (
                    "S1",
                    iter_dataset(
                        seed=101,
                        patients=1,
                        studies_per_patient=1,
                        series_per_study=1,
                        instances_per_series=shape.s1_instances,
                        pixel_bytes=shape.s1_pixel_bytes,
                    ),
                )
            ]
        if self.name == "S2":
            return [("S2", _archive(shape))]
        if self.name == "S4":
            return [
                (
                    "S4a",
                    generate_large_series(
                        seed=401, instances=shape.s4_instances, pixel_bytes=shape.s4_pixel_bytes
                    ),
                ),
                (
                    "S4b",
                    generate_large_series(
                        seed=402, instances=1, pixel_bytes=shape.s4_single_pixel_bytes
                    ),
                ),
            ]
        raise ValueError(f"unknown data group {self.name!r}")


def _archive(shape: Shape) -> Iterator[SampleInstance]:
    """S2: many small series; each study has its own instance size in the given range."""
    studies = shape.s2_studies
    span = shape.s2_max_pixel_bytes - shape.s2_min_pixel_bytes
    for study in range(studies):
        pixel_bytes = shape.s2_min_pixel_bytes + span * study // max(1, studies - 1)
        yield from iter_dataset(
            seed=2000 + study,
            patients=1,
            studies_per_patient=1,
            series_per_study=shape.s2_series,
            instances_per_series=shape.s2_instances,
            pixel_bytes=pixel_bytes,
        )


def groups_for(scenarios: Iterable[str], *, quick: bool) -> list[DataGroup]:
    """The data groups needed by ``scenarios``, each listing the cases it serves."""
    shape = QUICK if quick else FULL
    wanted = set(scenarios)
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    groups: list[DataGroup] = []
    if "S1" in wanted:
        groups.append(DataGroup("S1", ["S1"], shape))
    archive_cases = [c for c in ("S2", "S3") if c in wanted]
    if archive_cases:
        groups.append(DataGroup("S2", archive_cases, shape))
    if "S4" in wanted:
        groups.append(DataGroup("S4", ["S4a", "S4b"], shape))
    return groups


@dataclass
class LoadedGroup:
    """A data group stored in a running Orthanc."""

    group: DataGroup
    series_by_source: dict[str, list[SeriesInfo]] = field(default_factory=dict)
    upload_seconds: float = 0.0

    def case(self, name: str) -> Case:
        shape = self.group.shape
        if name == "S1":
            series = self.series_by_source["S1"]
            description = (
                f"one series of {series[0].instances} instances of "
                f"{shape.s1_pixel_bytes // 1024} KiB pixels"
            )
            return Case(name, description, tuple(series))
        if name in ("S2", "S3"):
            series = self.series_by_source["S2"]
            description = (
                f"{shape.s2_studies} studies x {shape.s2_series} series x "
                f"{shape.s2_instances} instances of {shape.s2_min_pixel_bytes // 1000}-"
                f"{shape.s2_max_pixel_bytes // 1000} KB"
            )
            if name == "S3":
                description += ", 40 ms round trip"
            return Case(name, description, tuple(series), latency=name == "S3", whole_archive=True)
        if name == "S4a":
            series = self.series_by_source["S4a"]
            description = (
                f"one series of {series[0].instances} instances of "
                f"{shape.s4_pixel_bytes / 1e6:.0f} MB"
            )
            return Case(name, description, tuple(series))
        if name == "S4b":
            series = self.series_by_source["S4b"]
            description = f"one instance of {shape.s4_single_pixel_bytes / 1e6:.0f} MB"
            return Case(name, description, tuple(series))
        raise ValueError(f"unknown case {name!r}")


def load_group(server: OrthancServer, group: DataGroup) -> LoadedGroup:
    """Generate the group's data and upload it to ``server``, one instance at a time."""
    loaded = LoadedGroup(group)
    started = time.monotonic()
    for source, instances in group.sources():
        tally: dict[tuple[str, str], list[int]] = {}

        def stream(
            items: Iterable[SampleInstance], tally: dict[tuple[str, str], list[int]] = tally
        ) -> Iterator[bytes]:
            for instance in items:
                counts = tally.setdefault((instance.study_uid, instance.series_uid), [0, 0])
                counts[0] += 1
                counts[1] += len(instance.data)
                yield instance.data

        large = group.name == "S4"
        stored = upload_instances(server, stream(instances), concurrency=2 if large else 4)
        expected = sum(count for count, _ in tally.values())
        if stored != expected:
            raise RuntimeError(f"{source}: stored {stored} of {expected} instances")
        loaded.series_by_source[source] = [
            SeriesInfo(study, series, count, size)
            for (study, series), (count, size) in tally.items()
        ]
    loaded.upload_seconds = time.monotonic() - started
    return loaded
