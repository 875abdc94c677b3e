"""DicomWebClient against a real Orthanc with the DICOMweb plugin (QIDO, WADO, metadata)."""

from __future__ import annotations

import hashlib

import pytest

from kheops_async import (
    AuthenticationError,
    ConfigurationError,
    DicomWebClient,
)
from kheops_async.demo import OrthancDataset, OrthancServer

pytestmark = pytest.mark.anyio


def client_for(dataset: OrthancDataset, **kwargs: object) -> DicomWebClient:
    return DicomWebClient(dataset.server.dicomweb_url, **kwargs)  # type: ignore[arg-type]


async def test_search_studies_returns_exactly_the_dataset(orthanc_dataset: OrthancDataset) -> None:
    async with client_for(orthanc_dataset) as client:
        result = await client.search_studies()
    assert {r.study_uid for r in result.records} == orthanc_dataset.studies()
    assert len(result.records) == len(orthanc_dataset.studies())
    assert not result.truncated


async def test_paging_with_a_page_smaller_than_the_result(orthanc_dataset: OrthancDataset) -> None:
    async with client_for(orthanc_dataset, page_size=2) as client:
        pager = client.iter_studies()
        uids = [record.study_uid async for record in pager]
        instances = await client.search_instances(page_size=5)
    assert len(uids) == len(set(uids)) == len(orthanc_dataset.studies())
    assert set(uids) == orthanc_dataset.studies()
    assert not pager.result.truncated
    assert {r.sop_uid for r in instances.records} == set(orthanc_dataset.by_sop)


async def test_limit_and_offset_select_a_window_of_the_stable_order(
    orthanc_dataset: OrthancDataset,
) -> None:
    async with client_for(orthanc_dataset, page_size=2) as client:
        everything = [r.study_uid for r in (await client.search_studies()).records]
        window = await client.search_studies(limit=3, offset=2)
        single_request = await client.search_studies(limit=3, offset=2, page_size=None)
    assert [r.study_uid for r in window.records] == everything[2:5]
    assert [r.study_uid for r in single_request.records] == everything[2:5]
    assert not window.truncated


async def test_filters_by_keyword_and_tag(orthanc_dataset: OrthancDataset) -> None:
    patient = orthanc_dataset.instances[0].patient_id
    expected = {i.study_uid for i in orthanc_dataset.instances if i.patient_id == patient}
    async with client_for(orthanc_dataset) as client:
        by_keyword = await client.search_studies({"PatientID": patient})
        by_tag = await client.search_studies([("00100020", patient)])
    assert {r.study_uid for r in by_keyword.records} == expected
    assert {r.study_uid for r in by_tag.records} == expected


async def test_modality_at_study_level_means_modalities_in_study(
    orthanc_dataset: OrthancDataset,
) -> None:
    ct_studies = {i.study_uid for i in orthanc_dataset.instances if i.modality == "CT"}
    async with client_for(orthanc_dataset) as client:
        result = await client.search_studies({"Modality": "CT"})
    assert {r.study_uid for r in result.records} == ct_studies
    assert all("CT" in r.modalities_in_study for r in result.records)


async def test_includefield_and_typed_accessors(orthanc_dataset: OrthancDataset) -> None:
    first = orthanc_dataset.instances[0]
    async with client_for(orthanc_dataset) as client:
        studies = await client.search_studies(
            {"StudyInstanceUID": first.study_uid},
            includefield=["StudyDescription", "00201208"],
            fuzzymatching=False,
        )
        series = await client.search_series(study_uid=first.study_uid)
    (study,) = studies.records
    assert study.study_uid == first.study_uid
    assert study.patient_id == first.patient_id
    assert study.get_str("StudyDescription")
    assert study.number_of_study_related_instances == len(
        orthanc_dataset.instances_of(first.study_uid)
    )
    assert study.study_datetime is not None and study.study_date is not None
    assert {s.series_uid for s in series.records} == orthanc_dataset.series_of(first.study_uid)
    for record in series.records:
        assert record.number_of_series_related_instances == len(
            orthanc_dataset.instances_of(first.study_uid, record.series_uid)
        )
        assert record.modality in ("CT", "MR", "OT", "SC")


async def test_series_and_instances_at_every_level(orthanc_dataset: OrthancDataset) -> None:
    first = orthanc_dataset.instances[0]
    async with client_for(orthanc_dataset) as client:
        root_series = await client.search_series()
        study_instances = await client.search_instances(study_uid=first.study_uid)
        series_instances = await client.search_instances(
            study_uid=first.study_uid, series_uid=first.series_uid
        )
    all_series = {i.series_uid for i in orthanc_dataset.instances}
    assert {r.series_uid for r in root_series.records} == all_series
    assert {r.sop_uid for r in study_instances.records} == {
        i.sop_uid for i in orthanc_dataset.instances_of(first.study_uid)
    }
    assert {r.sop_uid for r in series_instances.records} == {
        i.sop_uid for i in orthanc_dataset.instances_of(first.study_uid, first.series_uid)
    }


async def test_every_series_retrieve_is_byte_identical(orthanc_dataset: OrthancDataset) -> None:
    """Parts equal the stored files, JPEG 2000 and RLE included, headers kept."""
    seen: dict[str, bytes] = {}
    async with client_for(orthanc_dataset) as client:
        for study_uid in sorted(orthanc_dataset.studies()):
            for series_uid in sorted(orthanc_dataset.series_of(study_uid)):
                async with client.retrieve_series(study_uid, series_uid) as parts:
                    async for part in parts:
                        assert part.content_type is not None
                        assert part.content_type.startswith("application/dicom")
                        body = await part.read()
                        assert part.content_length in (None, len(body))
                        sop = _sop_of(body, orthanc_dataset)
                        seen[sop] = body
    assert set(seen) == set(orthanc_dataset.by_sop)
    for sop, body in seen.items():
        assert body == orthanc_dataset.by_sop[sop].data
    syntaxes = {i.transfer_syntax for i in orthanc_dataset.instances}
    assert "1.2.840.10008.1.2.4.90" in syntaxes or "1.2.840.10008.1.2.4.91" in syntaxes
    assert "1.2.840.10008.1.2.5" in syntaxes


def _sop_of(body: bytes, dataset: OrthancDataset) -> str:
    digest = hashlib.sha256(body).hexdigest()
    for sop, instance in dataset.by_sop.items():
        if hashlib.sha256(instance.data).hexdigest() == digest:
            return sop
    raise AssertionError("a retrieved part matches no stored instance")


async def test_study_and_instance_retrieve(orthanc_dataset: OrthancDataset) -> None:
    first = orthanc_dataset.instances[0]
    async with client_for(orthanc_dataset) as client:
        async with client.retrieve_study(first.study_uid) as parts:
            study_bodies = [await part.read() async for part in parts]
        async with client.retrieve_instance(
            first.study_uid, first.series_uid, first.sop_uid
        ) as parts:
            instance_bodies = [await part.read() async for part in parts]
    assert sorted(study_bodies) == sorted(
        i.data for i in orthanc_dataset.instances_of(first.study_uid)
    )
    assert instance_bodies == [first.data]


async def test_unread_parts_are_skipped(orthanc_dataset: OrthancDataset) -> None:
    first = orthanc_dataset.instances[0]
    async with client_for(orthanc_dataset) as client:
        async with client.retrieve_series(first.study_uid, first.series_uid) as parts:
            count = sum([1 async for _ in parts])
    assert count == len(orthanc_dataset.instances_of(first.study_uid, first.series_uid))


async def test_metadata_at_each_level(orthanc_dataset: OrthancDataset) -> None:
    first = orthanc_dataset.instances[0]
    async with client_for(orthanc_dataset) as client:
        study = await client.retrieve_metadata(first.study_uid)
        series = await client.retrieve_metadata(first.study_uid, first.series_uid)
        instance = await client.retrieve_metadata(first.study_uid, first.series_uid, first.sop_uid)
    assert len(study) == len(orthanc_dataset.instances_of(first.study_uid))
    assert len(series) == len(orthanc_dataset.instances_of(first.study_uid, first.series_uid))
    assert [item["00080018"]["Value"][0] for item in instance] == [first.sop_uid]


async def test_malformed_uid_is_refused_before_any_request(orthanc: OrthancServer) -> None:
    async with DicomWebClient(orthanc.dicomweb_url) as client:
        with pytest.raises(ConfigurationError, match="malformed StudyInstanceUID"):
            await client.search_series(study_uid="1.2/../../3")
        with pytest.raises(ConfigurationError, match="unknown DICOM attribute"):
            await client.search_studies({"NotAKeyword": "x"})


async def test_basic_auth_against_orthanc(orthanc_basic_auth: OrthancServer) -> None:
    url = orthanc_basic_auth.dicomweb_url
    async with DicomWebClient(url) as anonymous:
        with pytest.raises(AuthenticationError) as caught:
            await anonymous.search_studies()
    assert caught.value.status_code == 401
    async with DicomWebClient(url, username="alice", password="wrong") as wrong:
        with pytest.raises(AuthenticationError) as caught_wrong:
            await wrong.search_studies()
    assert "wrong" not in str(caught_wrong.value)
    async with DicomWebClient(url, username="alice", password="s3cret") as alice:
        result = await alice.search_studies()
    assert result.records == []
    assert "s3cret" not in repr(alice)
