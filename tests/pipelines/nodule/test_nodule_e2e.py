"""storescu -> radnode serve -> nodule-detection -> SEG, SR, key images and GSPS in Orthanc; bad
input recorded on the job.

The chest CT is a LIDC-IDRI scan sent as the archive holds it (JPEG-LS lossless): the node
receives it compressed, the pipeline decodes it, and the results validate. A second Orthanc plays
a PACS without SEG support whose destination asks for key images only, and gets only those."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGLSLossless,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from tests.support.harness import NodeProcess, node_config, wait_until
from tests.support.nodule_series import chest_files, rewrite_series
from tests.support.peers import Orthanc, conformance, send

#: 133 slices of 2.5 mm, JPEG-LS lossless, one 32 mm nodule contoured by four readers.
LIDC_SCAN = "ct-chest/lidc-idri-0001/ct"


@pytest.fixture
def viewer(tmp_path):
    """A second PACS, whose viewer shows no SEG: its destination asks for key images only."""
    pacs = Orthanc(tmp_path / "viewer", aet="VIEWER").start()
    yield pacs
    pacs.kill()


@pytest.fixture
def node(tmp_path, orthanc, viewer):
    config = node_config(
        tmp_path,
        destinations=[orthanc.destination(),
                      viewer.destination("viewer", formats=["key-images"])],
        routes=[{"name": "chest", "pipeline": "nodule-detection", "destinations": ["pacs", "viewer"],
                 "match": {"Modality": "CT"}}],
        # empty_seg: the SEG is written even when no nodule is reported, so this test checks the
        # transport and the objects whatever the weights find (detection has its own tests).
        pipelines={"nodule-detection": {"device": "cpu", "options": {"empty_seg": True}}},
    )
    process = NodeProcess(config, tmp_path).start()
    yield process
    process.stop()


def test_chest_ct_gives_seg_sr_key_images_and_gsps_in_the_pacs_and_only_key_images_to_the_viewer(
        node, orthanc, viewer, data_dir, tmp_path):
    files = sorted((data_dir / LIDC_SCAN).glob("*.dcm"))
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLSLossless
    tiny = rewrite_series(chest_files(data_dir, "B70f")[:4], tmp_path / "tiny")
    # storescu proposes JPEG-LS lossless only when told to (-xt, as tests/run/test_node_e2e.py does).
    for batch, propose in ((files, ("-xt",)), (tiny, ("--required",))):
        send(node.port, batch, propose=propose)
    index = node.index()
    jobs = wait_until(lambda: (j := [j for j in index.jobs() if j.state in ("done", "failed")])
                      and len(j) == 2 and j, 240, what="both jobs finished")
    tiny_uid = str(pydicom.dcmread(tiny[0], stop_before_pixels=True).SeriesInstanceUID)
    chest_job = next(j for j in jobs if tiny_uid not in j.inputs.values())
    tiny_job = next(j for j in jobs if tiny_uid in j.inputs.values())

    assert tiny_job.state == "done" and tiny_job.outcome.startswith("not applicable: the series covers 32 mm")
    assert not index.results(tiny_job.id)

    assert chest_job.state == "done", chest_job.outcome
    # kept as received: the spool holds the JPEG-LS bytes, decoded only by the pipeline
    spooled = index.instance(str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID))
    assert pydicom.dcmread(spooled.path, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLSLossless
    # the pipeline's summary is kept on the job and shown to whoever looks at it
    assert len(chest_job.summary.model_sha256) == 64 and chest_job.summary.seconds
    assert chest_job.summary.model_sha256 in node.cli("jobs", "--id", str(chest_job.id)).stdout
    results = index.results(chest_job.id)
    nodules = len(chest_job.summary.details["nodules"])
    assert nodules >= 1, "LIDC-0001's 32 mm nodule is not reported"
    # one SEG, one SR, one GSPS, the KOS over them, and the summary plus a key image per nodule
    assert sorted(r.sop_class for r in results) == sorted(
        [SegmentationStorage, Comprehensive3DSRStorage, GrayscaleSoftcopyPresentationStateStorage,
         KeyObjectSelectionDocumentStorage] + [SecondaryCaptureImageStorage] * (1 + nodules))
    for result in results:  # dciodvfy and Pixelmed's validators: every object of a nodule result
        report = conformance(result.path)
        assert not report.errors, report.errors
    # each kind its own series, all numbered after the CT's (3000566), so a viewer opens the CT first
    source_number = int(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesNumber)
    headers = [pydicom.dcmread(r.path, stop_before_pixels=True) for r in results]
    numbers = {str(ds.SeriesInstanceUID): int(ds.SeriesNumber) for ds in headers}
    assert len(set(numbers.values())) == len(numbers) == 5 and min(numbers.values()) > source_number, numbers

    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pictures = {r.sop_uid for r in results if r.sop_class == SecondaryCaptureImageStorage}

    def stored(pacs) -> list[str]:
        return [i["MainDicomTags"].get("SOPInstanceUID") for i in pacs.instances_of_study(study)]

    assert orthanc.wait_for(lambda pacs: {r.sop_uid for r in results} <= set(stored(pacs)), timeout=60)
    assert viewer.wait_for(lambda pacs: pictures <= set(stored(pacs)), timeout=60)
    # the viewer got nothing but the key images, each once
    assert sorted(stored(viewer)) == sorted(pictures)
