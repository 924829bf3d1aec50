"""Priors of a finding (a route's ``priors = true``): a follow-up chest CT's nodule gets the Tracking
UID of the same nodule in radnode's earlier SR, which the PACS (Orthanc, real C-FIND and C-GET)
holds, with its size change; a PACS that does not answer costs a bounded wait and the SR says
that no prior was compared."""

from __future__ import annotations

import datetime
import socket
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage, generate_uid

from node.config import Config, ConfigError, parse_config
from node.index.jobs import Job
from node.retrieve.priors import for_job, look_up
from pipelines.base import JobInput, PipelineSettings
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.pipeline import NoduleDetection
from pipelines.priors import PriorFinding, PriorReport, Priors, match, read_report, tracking_ids
from pipelines.writers.prior import INTERVAL, LONG_AXIS_CHANGE, VOLUME_CHANGE
from tests.support.cpu_share import CPU_THREADS
from tests.support.harness import NodeProcess, node_config, wait_until
from tests.support.nodule_series import rewrite_series
from tests.support.peers import Orthanc, dciodvfy, free_port, storescu
from training.nodule import synthesis

pytestmark = [pytest.mark.peers]

LIDC = Path("ct-chest") / "lidc-idri-0001" / "ct"
#: the slab of LIDC-IDRI-0001 sent as both studies (2.5 mm slices), around the inserted nodule
SLAB = 40
DIAMETER_MM = 15.0
GROWTH = 1.2
PRIOR_DATE, FOLLOW_UP_DATE = "20250310", "20250912"


def study(data_dir: Path, folder: Path, date: str, diameter_mm: float) -> list[Path]:
    """The middle slab of LIDC-IDRI-0001 as a new study of the same patient, dated ``date``, with a
    solid nodule of ``diameter_mm`` inserted at the same place (same seeds) in every study."""
    headers = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in (data_dir / LIDC).glob("*.dcm")),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    first = (len(headers) - SLAB) // 2
    sources = [pydicom.dcmread(h.filename) for h in headers[first:first + SLAB]]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in sources])
    spacing = (abs(float(sources[1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2])),
               *(float(v) for v in sources[0].PixelSpacing))
    spec = synthesis.NoduleSpec(diameter_mm=DIAMETER_MM, texture_hu=10.0)
    lungs = lung_mask(hu, slice_axis=0)
    lungs[:SLAB // 3], lungs[-SLAB // 3:] = False, False  # whole inside the slab
    centre = synthesis.pick_center(lungs, spacing, spec, np.random.default_rng(3))
    assert centre is not None
    synthesis.insert(hu, spacing, centre, synthesis.NoduleSpec(diameter_mm=diameter_mm, texture_hu=10.0),
                     np.random.default_rng(4))
    return rewrite_series([Path(h.filename) for h in headers[first:first + SLAB]], folder, hu,
                          StudyInstanceUID=generate_uid(), StudyDate=date)


@pytest.fixture(scope="module")
def pipeline() -> NoduleDetection:
    torch.set_num_threads(CPU_THREADS)
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu"))


@pytest.fixture
def pacs(tmp_path: Path):
    # the PACS answers only AE titles it knows (the node's, as for backfill)
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"radnode": ["RADNODE", "127.0.0.1", free_port()]}).start()
    yield orthanc
    orthanc.kill()


def config_for(tmp_path: Path, port: int) -> Config:
    config = node_config(tmp_path)
    config["sources"] = [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port}]
    return parse_config(config)


def results(pipeline: NoduleDetection, files: list[Path], out: Path, priors=None) -> dict[str, pydicom.Dataset]:
    """The job's SR and SEG: {modality: data set}."""
    pipeline.run(JobInput(series={"series": files}, output_dir=out, priors=priors))
    written = (pydicom.dcmread(p) for p in out.rglob("*.dcm"))
    return {ds.Modality: ds for ds in written if ds.Modality in ("SR", "SEG")}


def groups(sr: pydicom.Dataset) -> dict[str, tuple[dict[str, float], list[str]]]:
    """Each measurement group by its Tracking UID: its NUMs by concept code value, and its texts."""
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    out = {}
    for group in measurements.ContentSequence:
        items = group.ContentSequence
        uid = next((str(i.UID) for i in items if i.ValueType == "UIDREF"), "")
        values = {str(i.ConceptNameCodeSequence[0].CodeValue): float(i.MeasuredValueSequence[0].NumericValue)
                  for i in items if i.ValueType == "NUM" and i.get("MeasuredValueSequence")}
        out[uid] = (values, [str(i.TextValue) for i in items if i.ValueType == "TEXT"])
    return out


def texts(sr: pydicom.Dataset) -> list[str]:
    return [text for _, found in groups(sr).values() for text in found]


@pytest.fixture
def site(tmp_path: Path):
    """A node whose nodule route has ``priors = true`` and Orthanc as both its destination and the
    source of its priors (Orthanc knows the node's AE title); yields (node, Orthanc)."""
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"radnode": ["RADNODE", "127.0.0.1", node_port]}).start()
    peer = pacs.destination()
    config = node_config(tmp_path, destinations=[peer], routes=[
        {"name": "chest", "pipeline": "nodule-detection", "destinations": ["pacs"], "match": {"Modality": "CT"},
         "priors": True}], pipelines={"nodule-detection": {"device": "cpu"}})
    config["sources"] = [peer]
    config["node"]["port"] = node_port
    node = NodeProcess(config, tmp_path).start()
    yield node, pacs
    node.stop()
    pacs.kill()


def run_on_node(node: NodeProcess, files: list[Path], jobs: int) -> pydicom.Dataset:
    """Send a study; once its job (the ``jobs``-th) is done, its SR."""
    assert storescu(node.port, files).returncode == 0
    index = node.index()
    done = wait_until(lambda: (ended := [j for j in index.jobs() if j.state in ("done", "failed")])
                      and len(ended) == jobs and ended, 400, what=f"job {jobs} finished")
    job = max(done, key=lambda j: j.id)
    assert job.state == "done", job.outcome
    return next(pydicom.dcmread(r.path) for r in index.results(job.id) if r.sop_class == Comprehensive3DSRStorage)


@pytest.mark.slow
def test_a_follow_up_nodule_grown_20_percent_gets_the_priors_tracking_uid_and_its_growth(site, data_dir, tmp_path):
    node, pacs = site
    prior_sr = run_on_node(node, study(data_dir, tmp_path / "prior", PRIOR_DATE, DIAMETER_MM), 1)
    prior = read_report(prior_sr)
    # the inserted nodule, measured 15.5 mm (the other finding of the slab is LIDC-IDRI-0001's
    # own 102 mm mass)
    inserted = next(f for f in prior.findings if f.diameter_mm is not None and f.diameter_mm < 30)
    # the node delivered the prior's SR to the PACS, where the follow-up's job finds it
    pacs.wait_for(lambda p: any(i["MainDicomTags"].get("SOPInstanceUID") == prior_sr.SOPInstanceUID
                                for i in p.instances_of_study(str(prior_sr.StudyInstanceUID))), timeout=60)

    sr = run_on_node(node, study(data_dir, tmp_path / "follow-up", FOLLOW_UP_DATE, DIAMETER_MM * GROWTH), 2)
    by_uid = groups(sr)
    assert inserted.tracking_uid in by_uid, "the grown nodule keeps the prior's Tracking UID"
    values, said = by_uid[inserted.tracking_uid]
    # truth +20 % long axis, +72.8 % volume; measured +21.3 % (ratio 1.011) and +76.0 % (1.019)
    assert abs((1 + values[LONG_AXIS_CHANGE.value] / 100) / GROWTH - 1) <= 0.05, values
    assert abs((1 + values[VOLUME_CHANGE.value] / 100) / GROWTH**3 - 1) <= 0.05, values
    assert values[INTERVAL.value] == 186.0
    assert any(t.startswith(f"Prior: {inserted.tracking_id} of the report of 2025-03-10, 186 days earlier")
               for t in said), said
    follow_up_seg = next(pydicom.dcmread(r.path) for r in node.index().results(max(j.id for j in node.index().jobs()))
                         if r.sop_class == SegmentationStorage)
    assert inserted.tracking_uid in {str(s.TrackingUID) for s in follow_up_seg.SegmentSequence}
    names = [str(s.TrackingID) for s in follow_up_seg.SegmentSequence]
    assert len(names) == len(set(names)), names  # a new finding never takes a continued one's identifier
    path = tmp_path / "follow-up-sr.dcm"
    sr.save_as(path)
    report = dciodvfy(path)
    assert not report.errors, report.errors


@pytest.mark.slow
def test_a_pacs_that_does_not_answer_costs_a_bounded_wait_and_the_sr_says_no_prior_was_compared(
        pipeline, data_dir, tmp_path):
    silent = free_port()  # nothing listens: the association is refused at once
    files = study(data_dir, tmp_path / "study", FOLLOW_UP_DATE, DIAMETER_MM)
    started = time.monotonic()
    priors = look_up(config_for(tmp_path, silent), files, timeout=5.0)
    assert time.monotonic() - started < 6.0
    assert priors.report is None and "no association" in priors.reason, priors.reason
    sr = results(pipeline, files, tmp_path / "out", priors)["SR"]
    assert any(t.startswith("No prior compared") for t in texts(sr)), texts(sr)
    assert read_report(sr).findings  # the job ran and reported as always


def test_a_route_with_priors_needs_a_source():
    with pytest.raises(ConfigError, match=r"routes\[0\]\.priors"):
        parse_config({"routes": [{"name": "r", "pipeline": "nodule-detection", "deliver": False, "priors": True}]})


@pytest.mark.slow
def test_no_earlier_report_in_the_pacs_says_so(pacs, data_dir, tmp_path):
    earlier = study(data_dir, tmp_path / "earlier", PRIOR_DATE, DIAMETER_MM)
    assert storescu(pacs.dicom_port, earlier[:2]).returncode == 0  # the patient's earlier CT, no SR
    files = study(data_dir, tmp_path / "study", FOLLOW_UP_DATE, DIAMETER_MM)
    priors = look_up(config_for(tmp_path, pacs.dicom_port), files)
    assert priors.report is None and "no earlier radnode report" in priors.reason, priors.reason


def test_only_a_route_with_priors_asks_the_pacs_before_its_job_runs(data_dir, tmp_path):
    config = node_config(tmp_path, routes=[
        {"name": name, "pipeline": "nodule-detection", "deliver": False, "priors": name == "with"}
        for name in ("with", "without")])
    config["sources"] = [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": free_port()}]
    files = {"series": sorted((data_dir / LIDC).glob("*.dcm"))[:1]}

    def job(route: str) -> Job:
        return Job(route=route, pipeline="nodule-detection", subject="s", study_uid="1.2", generation=1,
                   inputs={"series": "1.2.3"}, destinations=[], id=1, attempts=1, created_at=0.0,
                   started_at=None, finished_at=None, deadline=None, worker_pid=None)

    assert for_job(parse_config(config), job("without"), files) is None
    asked = for_job(parse_config(config), job("with"), files)
    assert asked is not None and asked.report is None and "no association" in asked.reason, asked


@pytest.mark.slow
def test_a_pacs_that_takes_the_connection_and_never_answers_is_given_up_after_the_timeout(data_dir, tmp_path):
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()  # the connection is taken (by the kernel) and nothing is ever said on it
    try:
        files = sorted((data_dir / LIDC).glob("*.dcm"))[:1]
        started = time.monotonic()
        priors = look_up(config_for(tmp_path, hung.getsockname()[1]), files, timeout=3.0)
        waited = time.monotonic() - started
    finally:
        hung.close()
    assert waited < 4.0, waited  # measured 3.0 s
    assert priors.report is None and "did not answer within 3 s" in priors.reason, priors.reason


def test_a_nodule_continues_the_nearest_earlier_one_within_10_mm_or_its_radius_and_each_once():
    before = PriorReport(datetime.date(2025, 3, 10), (
        PriorFinding("1.1", "nodule-1", (0.0, 0.0, 0.0), 8.0, 250.0),
        PriorFinding("1.2", "nodule-2", (100.0, 0.0, 0.0), 40.0, 30000.0)))
    found = match([(0.0, 0.0, 9.0), (0.0, 0.0, 3.0), (118.0, 0.0, 0.0), (0.0, 60.0, 0.0)],
                  [8.0, 10.0, 44.0, 6.0], [250.0, 500.0, 33000.0, 100.0], Priors(before), datetime.date(2025, 3, 20))
    # the nearer of two candidates takes nodule-1; 18 mm from the 40 mm mass is within its radius
    assert [f.prior.tracking_uid if f.prior else None for f in found] == [None, "1.1", "1.2", None]
    assert (found[1].diameter_change_pct, found[1].volume_change_pct, found[1].interval_days) == (25.0, 100.0, 10)
    assert found[0].reason.startswith("New since the report of 2025-03-10")
    assert tracking_ids(found, "nodule") == ["nodule-3", "nodule-1", "nodule-2", "nodule-4"]
