"""The benchmark data: generate it, load it into our own Orthanc, describe what to fetch.

Scenarios share an Orthanc when they use the same data (S2 and S3; A and A40; S4's series
and its single instance), so each :class:`DataGroup` is loaded once and kept for every
run of its scenarios.

===========  ==========================================================================
scenario     data
===========  ==========================================================================
S1           one series of 200 instances with 512 KiB of pixels (about 525 KB each)
S2           50 studies x 4 series x 20 instances of 50-100 KB (one size per study)
S3           S2's data, through the latency proxy (40 ms round trip)
S4a          one 1 GB series: four instances of 250 MB
S4b          one instance of 200 MB (a study of its own)
A            the 560-instance archive: 6 studies x 3 series x 20 instances of
             50-100 KB, plus one study with one series of 200 instances of 512 KiB
A40          A's data, through the latency proxy (40 ms round trip)
T            50,000 tiny instances (about 1.4 KB): 50 studies x 10 series x 100
===========  ==========================================================================

Every part of the data is a :class:`Batch`: one study, the arguments of one seeded
``iter_dataset`` call (a different seed for every study, so no two share a UID). Batches
of small instances are generated and uploaded by a pool of worker processes, each batch
as one ZIP that Orthanc unpacks itself (``POST /instances`` takes ZIP archives). Storing
costs Orthanc about 1.1 ms of CPU per instance and generating (pydicom) 1.3-1.6 ms, so
T's 50,000 instances take 75-110 s on 2 cores, against 134 s with one HTTP request per
instance from a single process (``upload_instances``). Batches of large instances (S4)
are streamed one instance at a time with ``upload_instances``, so a 1 GB series never
sits in memory.

``--quick`` shrinks every scenario (same shapes, far fewer bytes) for a smoke run.
"""

from __future__ import annotations

import io
import multiprocessing
import time
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import httpx

from kheops_async.demo import OrthancServer, SampleInstance, iter_dataset, upload_instances

__all__ = [
    "SCENARIOS",
    "Batch",
    "Case",
    "DataGroup",
    "LoadedGroup",
    "SeriesInfo",
    "groups_for",
    "load_group",
]

SCENARIOS = ("S1", "S2", "S3", "S4", "A", "A40", "T")
"""Scenario names accepted by ``run_all.py --scenarios``."""

UPLOAD_WORKERS = 3
"""Worker processes that generate and upload ZIP batches, so that generating overlaps
Orthanc's storing (T on 2 cores: 1 worker 158 s; 2, 3 or 4 workers 77-108 s, noisy)."""
STREAM_PIXEL_BYTES = 64 * 1024 * 1024
"""Batches of instances larger than this are streamed one instance at a time, not zipped."""
TINY_SIDE = 8
"""Rows and columns of T's instances (16-bit pixels: 128 bytes, files of about 1.4 KB)."""


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
    a_studies: int  # A: small studies of S2's sizes ...
    a_series: int
    a_instances: int
    a_large_instances: int  # ... and one series of S1's instances
    t_studies: int
    t_series: int
    t_instances: int


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
    a_studies=6,
    a_series=3,
    a_instances=20,
    a_large_instances=200,
    t_studies=50,
    t_series=10,
    t_instances=100,
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
    a_studies=2,
    a_series=3,
    a_instances=5,
    a_large_instances=40,
    t_studies=5,
    t_series=10,
    t_instances=20,
)


@dataclass(frozen=True)
class Batch:
    """One generated study: the arguments of one ``iter_dataset`` call (picklable).

    ``pixel_bytes`` None means tiny images of :data:`TINY_SIDE` x :data:`TINY_SIDE`.
    """

    seed: int
    series: int
    instances: int
    pixel_bytes: int | None = None

    @property
    def streamed(self) -> bool:
        """Too large to zip in memory: uploaded one instance at a time instead."""
        return (self.pixel_bytes or 0) > STREAM_PIXEL_BYTES

    def generate(self) -> Iterator[SampleInstance]:
        """The batch's instances, one at a time (the same bytes on every call)."""
        return iter_dataset(
            seed=self.seed,
            patients=1,
            studies_per_patient=1,
            series_per_study=self.series,
            instances_per_series=self.instances,
            rows=TINY_SIDE,
            columns=TINY_SIDE,
            pixel_bytes=self.pixel_bytes,
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
    per_instance_cpu: bool = False  # T: CPU per instance is the figure; no dicomweb-client

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


def _studies_of_sizes(
    seed: int, studies: int, series: int, instances: int, smallest: int, largest: int
) -> list[Batch]:
    """Studies whose instance sizes step evenly from ``smallest`` to ``largest`` pixels."""
    span = largest - smallest
    return [
        Batch(seed + k, series, instances, smallest + span * k // max(1, studies - 1))
        for k in range(studies)
    ]


@dataclass
class DataGroup:
    """Data loaded into one Orthanc, and the cases that measure it."""

    name: str
    cases: list[str]
    shape: Shape

    def sources(self) -> list[tuple[str, list[Batch]]]:
        """``(source name, batches)`` for each part of the group's data."""
        shape = self.shape
        sizes = (shape.s2_min_pixel_bytes, shape.s2_max_pixel_bytes)
        if self.name == "S1":
            return [("S1", [Batch(101, 1, shape.s1_instances, shape.s1_pixel_bytes)])]
        if self.name == "S2":
            s2 = (shape.s2_studies, shape.s2_series, shape.s2_instances)
            return [("S2", _studies_of_sizes(2000, *s2, *sizes))]
        if self.name == "S4":
            return [
                ("S4a", [Batch(401, 1, shape.s4_instances, shape.s4_pixel_bytes)]),
                ("S4b", [Batch(402, 1, 1, shape.s4_single_pixel_bytes)]),
            ]
        if self.name == "A":
            large = Batch(301, 1, shape.a_large_instances, shape.s1_pixel_bytes)
            small = (shape.a_studies, shape.a_series, shape.a_instances)
            return [("A", [large, *_studies_of_sizes(3000, *small, *sizes)])]
        if self.name == "T":
            tiny = [
                Batch(5000 + k, shape.t_series, shape.t_instances) for k in range(shape.t_studies)
            ]
            return [("T", tiny)]
        raise ValueError(f"unknown data group {self.name!r}")


def groups_for(scenarios: Iterable[str], *, quick: bool) -> list[DataGroup]:
    """The data groups needed by ``scenarios``, each listing the cases it serves."""
    shape = QUICK if quick else FULL
    wanted = set(scenarios)
    unknown = wanted - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    served = {"S1": ["S1"], "S2": ["S2", "S3"], "S4": ["S4"], "A": ["A", "A40"], "T": ["T"]}
    groups: list[DataGroup] = []
    for group, scenarios_of_group in served.items():
        cases = [c for c in scenarios_of_group if c in wanted]
        if cases:
            groups.append(DataGroup(group, ["S4a", "S4b"] if group == "S4" else cases, shape))
    return groups


def _archive_description(shape: Shape) -> str:
    return (
        f"{shape.s2_studies} studies x {shape.s2_series} series x {shape.s2_instances} "
        f"instances of {shape.s2_min_pixel_bytes // 1000}-{shape.s2_max_pixel_bytes // 1000} KB"
    )


@dataclass
class LoadedGroup:
    """A data group stored in a running Orthanc."""

    group: DataGroup
    series_by_source: dict[str, list[SeriesInfo]] = field(default_factory=dict)
    upload_seconds: float = 0.0

    @property
    def instances(self) -> int:
        return sum(s.instances for series in self.series_by_source.values() for s in series)

    def case(self, name: str) -> Case:
        """The measured case ``name`` (one of the group's ``cases``)."""
        shape = self.group.shape
        delayed = ", 40 ms round trip"
        if name == "S1":
            series = tuple(self.series_by_source["S1"])
            description = (
                f"one series of {series[0].instances} instances of "
                f"{shape.s1_pixel_bytes // 1024} KiB pixels"
            )
            return Case(name, description, series)
        if name in ("S2", "S3"):
            series = tuple(self.series_by_source["S2"])
            description = _archive_description(shape) + (delayed if name == "S3" else "")
            return Case(name, description, series, latency=name == "S3", whole_archive=True)
        if name == "S4a":
            series = tuple(self.series_by_source["S4a"])
            description = (
                f"one series of {series[0].instances} instances of "
                f"{shape.s4_pixel_bytes / 1e6:.0f} MB"
            )
            return Case(name, description, series)
        if name == "S4b":
            series = tuple(self.series_by_source["S4b"])
            description = f"one instance of {shape.s4_single_pixel_bytes / 1e6:.0f} MB"
            return Case(name, description, series)
        if name in ("A", "A40"):
            series = tuple(self.series_by_source["A"])
            description = (
                f"archive of {shape.a_studies} studies x {shape.a_series} series x "
                f"{shape.a_instances} instances of {shape.s2_min_pixel_bytes // 1000}-"
                f"{shape.s2_max_pixel_bytes // 1000} KB plus one series of "
                f"{shape.a_large_instances} instances of {shape.s1_pixel_bytes // 1024} KiB"
            ) + (delayed if name == "A40" else "")
            return Case(name, description, series, latency=name == "A40", whole_archive=True)
        if name == "T":
            series = tuple(self.series_by_source["T"])
            mean = sum(s.payload_bytes for s in series) / sum(s.instances for s in series)
            description = (
                f"{shape.t_studies} studies x {shape.t_series} series x {shape.t_instances} "
                f"tiny instances of {mean / 1000:.1f} KB"
            )
            return Case(name, description, series, whole_archive=True, per_instance_cpu=True)
        raise ValueError(f"unknown case {name!r}")


Tally = dict[tuple[str, str], list[int]]
"""Instances and bytes per ``(study UID, series UID)``, in the order generated."""


def _count(tally: Tally, instance: SampleInstance) -> bytes:
    """Add ``instance`` to ``tally``; return its bytes."""
    counts = tally.setdefault((instance.study_uid, instance.series_uid), [0, 0])
    counts[0] += 1
    counts[1] += len(instance.data)
    return instance.data


def _stream_batch(server: OrthancServer, batch: Batch) -> Tally:
    """Upload a batch of large instances one at a time, from this process."""
    tally: Tally = {}
    files = (_count(tally, instance) for instance in batch.generate())
    stored = upload_instances(server, files, concurrency=2)
    _check_stored(batch, stored, tally)
    return tally


def _zip_batch(url: str, auth: tuple[str, str] | None, batch: Batch) -> Tally:
    """Generate a batch, POST it to Orthanc as one ZIP (run in a worker process)."""
    tally: Tally = {}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
        for number, instance in enumerate(batch.generate()):
            bundle.writestr(f"{number}.dcm", _count(tally, instance))
    timeout = httpx.Timeout(10.0, read=600.0, write=600.0)
    response = httpx.post(
        f"{url}/instances",
        content=archive.getvalue(),
        headers={"Content-Type": "application/zip"},
        auth=auth,
        timeout=timeout,
    )
    if response.is_error:  # httpx's own error cannot cross back from a worker process
        raise RuntimeError(
            f"Orthanc refused the study of seed {batch.seed} ({batch.series} series x "
            f"{batch.instances} instances): HTTP "
            f"{response.status_code} {response.text[:300]!r}"
        )
    answers = response.json()
    stored = sum(a.get("Status") in ("Success", "AlreadyStored") for a in answers)
    _check_stored(batch, stored, tally)
    return tally


def _check_stored(batch: Batch, stored: int, tally: Tally) -> None:
    expected = sum(count for count, _ in tally.values())
    if stored != expected:
        raise RuntimeError(f"batch {batch}: Orthanc stored {stored} of {expected} instances")


def _series(tallies: Iterable[Tally]) -> list[SeriesInfo]:
    return [
        SeriesInfo(study, series, count, size)
        for tally in tallies
        for (study, series), (count, size) in tally.items()
    ]


def load_group(server: OrthancServer, group: DataGroup) -> LoadedGroup:
    """Generate the group's data and upload it to ``server`` (see the module's notes)."""
    loaded = LoadedGroup(group)
    started = time.monotonic()
    sources = group.sources()
    zipped = [(name, b) for name, batches in sources for b in batches if not b.streamed]
    tallies: dict[str, list[Tally]] = {name: [] for name, _ in sources}
    if zipped:
        # spawn, not fork: a forked worker would inherit this process's Orthanc handles.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(UPLOAD_WORKERS, mp_context=context) as pool:
            futures = [
                (name, pool.submit(_zip_batch, server.url, server.auth, b)) for name, b in zipped
            ]
            for name, future in futures:
                tallies[name].append(future.result())
    for name, batches in sources:
        tallies[name] += [_stream_batch(server, b) for b in batches if b.streamed]
        loaded.series_by_source[name] = _series(tallies[name])
    loaded.upload_seconds = time.monotonic() - started
    return loaded
