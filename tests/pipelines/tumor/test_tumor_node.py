"""Brain MR studies through a real node: storescu -> radnode serve (study route) -> tumor-segmentation -> Orthanc.

The contrasts are TCGA-FG-6692 written as a clinical-style DICOM study (tests/support/mr_dicom.py): T1c
3D, FLAIR/T2/T1 thick-slice 2D, each with its own patient motion.
"""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest

from tests.support.harness import NodeProcess, node_config, wait_until
from tests.support.mr_dicom import TUMOR_ROUTE, Study, write_clinical_study
from tests.support.peers import dciodvfy, send, storescu
from training.tumor.data import TCGA, load_images

pytestmark = [pytest.mark.slow]


@pytest.fixture
def node(tmp_path: Path, orthanc):
    config = node_config(
        tmp_path, routes=[TUMOR_ROUTE], pipelines={"tumor-segmentation": {"device": "cpu"}},
        destinations=[orthanc.destination()],
        workers={"job_timeout_seconds": 300},
    )
    process = NodeProcess(config, tmp_path).start()
    yield process
    process.stop()


def test_four_contrasts_in_any_order_run_once_and_reach_the_pacs(node, orthanc, data_dir, tmp_path):
    images = load_images(TCGA, data_dir)
    study, series = write_clinical_study(images, tmp_path / "study")
    incomplete, partial = write_clinical_study(images, tmp_path / "partial", roles=("flair", "t2"), study=Study())
    order = list(series)
    random.Random(6).shuffle(order)
    for role in order:  # one association per series, in shuffled order, as modalities send them
        send(node.port, series[role])
    for role in partial:
        assert storescu(node.port, partial[role]).returncode == 0
    index = node.index()

    def finished(study_uid: str):
        return [j for j in index.jobs() if j.study_uid == study_uid and j.state in ("done", "failed")]

    job = wait_until(lambda: finished(study.study_uid), 240, what="tumor job end")[0]
    assert job.state == "done", job.outcome
    assert set(job.inputs) == {"t1c", "t1", "t2", "flair"}
    missing = wait_until(lambda: finished(incomplete.study_uid), 60, what="missing-input job")[0]
    assert missing.state == "failed" and missing.outcome.startswith("missing input: t1c"), missing.outcome

    files = orthanc.result_files(study.study_uid, tmp_path, {"SEG", "SR", "OT", "PR", "KO"})
    for path in files.values():
        report = dciodvfy(path)
        print(path.name, "dciodvfy warnings:", report.warnings)
        assert not report.errors, report.errors
    assert [j.study_uid for j in index.jobs()].count(study.study_uid) == 1

    seg = pydicom.dcmread(files["SEG"])
    reference = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID):
                 [float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
                 for p in series["t1c"]}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == str(
        pydicom.dcmread(series["t1c"][0], stop_before_pixels=True).SeriesInstanceUID)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx(reference[source], abs=1e-3)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == [
        "Necrosis / non-enhancing tumor core", "Peritumoral edema", "Enhancing tumor"]


def test_radnode_run_offline_picks_the_contrasts_with_the_study_route(data_dir, tmp_path):
    """``radnode run`` on a folder holding a T1c and a FLAIR series: the route's selectors assign them."""
    write_clinical_study(load_images(TCGA, data_dir), tmp_path / "study", roles=("flair", "t1c"))
    config = node_config(tmp_path, routes=[TUMOR_ROUTE], pipelines={"tumor-segmentation": {"device": "cpu"}},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}])
    ran = NodeProcess(config, tmp_path).cli("run", "--pipeline", "tumor-segmentation",
                                            "--input", str(tmp_path / "study"), "--output", str(tmp_path / "out"))
    assert ran.returncode == 0, ran.stderr
    modalities = sorted(pydicom.dcmread(p, stop_before_pixels=True).Modality for p in (tmp_path / "out").iterdir())
    assert f"{len(modalities)} objects written" in ran.stdout
    # SEG, SR, the presentation state, the KOS, and the summary plus at least one lesion's key image
    assert set(modalities) == {"SEG", "SR", "OT", "PR", "KO"} and modalities.count("OT") >= 2, modalities
