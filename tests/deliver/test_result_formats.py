"""Each destination receives the kinds of result it asks for (``[[destinations]] formats``): a
viewer that shows only pictures gets the key images of a job that also wrote SEG, SR and a
presentation state, while the PACS gets them all."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from node.config import Config, load_config, parse_config
from node.deliver.dispatcher import Dispatcher
from node.index.states import DeliveryState
from node.index.store import Index, Job, JobSpec
from node.result_formats import FORMATS, format_of
from node.run.outcome import commit_result
from pipelines.base import JobResult, JobSummary
from pipelines.writers.output import WrittenObject
from tests.support.harness import REPO
from tests.support.peers import BitPreservingStorescp, free_port

STUDY = "1.2.826.0.1.3680043.8.498.4242"
#: a job's results of every kind but "images", as the shipped pipelines write them
SEG_SR_SC_GSPS = (uid.SegmentationStorage, uid.Comprehensive3DSRStorage, uid.SecondaryCaptureImageStorage,
                  uid.GrayscaleSoftcopyPresentationStateStorage)


@pytest.mark.parametrize(("sop_class", "kind"), [
    (uid.SegmentationStorage, "seg"),
    (uid.SurfaceSegmentationStorage, "seg"),
    (uid.ComprehensiveSRStorage, "sr"),
    (uid.Comprehensive3DSRStorage, "sr"),
    (uid.EnhancedSRStorage, "sr"),
    (uid.KeyObjectSelectionDocumentStorage, "sr"),
    (uid.SecondaryCaptureImageStorage, "key-images"),
    (uid.MultiFrameTrueColorSecondaryCaptureImageStorage, "key-images"),
    (uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "key-images"),
    (uid.GrayscaleSoftcopyPresentationStateStorage, "gsps"),
    (uid.ColorSoftcopyPresentationStateStorage, "gsps"),
    (uid.CTImageStorage, "images"),
    (uid.EnhancedCTImageStorage, "images"),
    (uid.MRImageStorage, "images"),
    (uid.SpatialRegistrationStorage, "images"),
    (uid.VLPhotographicImageStorage, "images"),
])
def test_each_real_sop_class_is_one_kind_of_result(sop_class, kind):
    assert format_of(sop_class) == kind


def test_a_destination_without_formats_takes_every_kind():
    (destination,) = parse_config({"destinations": [_destination("pacs", 104)]}).destinations
    assert destination.formats == FORMATS
    assert all(destination.takes(sop_class) for sop_class in (*SEG_SR_SC_GSPS, uid.CTImageStorage))


def test_the_shipped_config_loads_and_its_pacs_takes_every_format():
    pacs = load_config(REPO / "config.toml").destination("pacs")
    assert set(pacs.formats) == set(FORMATS)


def test_a_destination_that_takes_none_of_a_jobs_formats_gets_no_delivery_row(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    config = _config(tmp_path, _destination("pacs", 104), _destination("viewer", 105, ["key-images"]))
    job = _running_job(index, ["pacs", "viewer"])
    objects = _results(tmp_path / "results", uid.SegmentationStorage, uid.Comprehensive3DSRStorage)
    assert commit_result(job, index, JobResult.written(objects, JobSummary()), config)
    assert [d.destination for d in index.deliveries()] == ["pacs"]


def test_a_destination_no_longer_in_the_config_keeps_its_delivery(tmp_path):
    """The job was routed to it before a restart took it out of config.toml: its delivery stays
    and fails where people look, as before destinations had formats."""
    index = Index(tmp_path / "index.sqlite")
    job = _running_job(index, ["pacs", "retired"])
    objects = _results(tmp_path / "results", uid.SegmentationStorage)
    assert commit_result(job, index, JobResult.written(objects, JobSummary()),
                         _config(tmp_path, _destination("pacs", 104)))
    assert [d.destination for d in index.deliveries()] == ["pacs", "retired"]


def test_a_delivery_whose_destination_now_takes_none_of_its_files_is_settled_without_an_association(tmp_path):
    """formats changed between the job's end and its delivery: nothing is owed, and no C-STORE
    of nothing is tried (nothing listens on the destination's port)."""
    index = Index(tmp_path / "index.sqlite")
    job = _running_job(index, ["viewer"])
    objects = _results(tmp_path / "results", uid.SegmentationStorage)
    assert commit_result(job, index, JobResult.written(objects, JobSummary()),
                         _config(tmp_path, _destination("viewer", free_port())))
    narrowed = _config(tmp_path, _destination("viewer", free_port(), ["key-images"]))
    assert Dispatcher(narrowed, index).tick() == 1
    (delivery,) = index.deliveries()
    assert (delivery.state, delivery.attempts) == (DeliveryState.SENT, 1)


@pytest.mark.peers
def test_a_destination_that_asks_only_for_key_images_is_sent_only_the_secondary_captures(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    job = _running_job(index, ["archive", "viewer"])
    objects = _results(tmp_path / "results", *SEG_SR_SC_GSPS)
    with BitPreservingStorescp(tmp_path / "archive") as archive, BitPreservingStorescp(tmp_path / "viewer") as viewer:
        config = _config(tmp_path, _destination("archive", archive.port),
                         _destination("viewer", viewer.port, ["key-images"]))
        assert commit_result(job, index, JobResult.written(objects, JobSummary()), config)
        assert Dispatcher(config, index).tick() == 2
    assert {d.destination: d.state for d in index.deliveries()} == {"archive": DeliveryState.SENT,
                                                                   "viewer": DeliveryState.SENT}
    assert _received(tmp_path / "archive") == set(SEG_SR_SC_GSPS)
    assert _received(tmp_path / "viewer") == {uid.SecondaryCaptureImageStorage}


def _destination(name: str, port: int, formats: list[str] | None = None) -> dict[str, object]:
    table: dict[str, object] = {"name": name, "ae_title": "RADNODE", "host": "127.0.0.1", "port": port}
    return table if formats is None else {**table, "formats": formats}


def _config(tmp_path: Path, *destinations: dict[str, object]) -> Config:
    return parse_config({"node": {"spool": str(tmp_path / "spool")}, "destinations": list(destinations)})


def _running_job(index: Index, destinations: list[str]) -> Job:
    index.add_job(JobSpec(route="r", pipeline="hu-threshold", subject="1.2.3", study_uid=STUDY, generation=0,
                          inputs={}, destinations=destinations))
    job = index.claim_job(None, 60)
    assert job is not None
    return job


def _results(folder: Path, *sop_classes: str) -> list[WrittenObject]:
    """One small result file of each SOP class: a header is all a C-STORE and storescp need."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_result(folder, sop_class) for sop_class in sop_classes]


def _result(folder: Path, sop_class: str) -> WrittenObject:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.PatientID = "FORMATS"
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return WrittenObject.of(ds, path)


def _received(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) for path in folder.iterdir()}
