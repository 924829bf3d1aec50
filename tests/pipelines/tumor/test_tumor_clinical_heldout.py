"""The 8 held-out real clinical skull-on T1c volumes through ``radnode run``, as a hospital sends them.

QIN-BRAIN-DSC 13-16 and Brain-Tumor-Progression 10 and 11 (before and after treatment), 6
patients nobody trained, tuned or chose a model on (``../shared/data/mr-brain/clinical-t1c-
heldout``). Each is written as a DICOM MR series on the geometry recovered from the head
(``clinical_t1c.recover_geometry``: 0.8-1.0 mm pixels, 6 mm slices) and the eight studies are run
offline by one ``radnode run`` over their folder, with the shipped study route's selectors. The
reference is the TCIA "MaskTumor" series: the tumor core (TC, enhancing lesion and necrosis), so
the SEG's necrosis and enhancing segments are scored against it.

The floors are the measured TC Dice of the model serving T1c alone minus ``MARGIN``; that model
is weak on these scans (pipelines/tumor/MODEL_CARD.md says so and why), so most floors are low:
they catch a change that makes it worse, and the per-case numbers are printed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.inference import DEFAULT_MODEL_DIR
from pipelines.tumor.model_set import ModelSet
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import dice
from pipelines.volume import load_series
from tests.support.cpu_share import CPU_THREADS
from tests.support.harness import NodeProcess, node_config, wait_until
from tests.support.mr_dicom import TUMOR_ROUTE, heldout_case, resliced, seg_labels, tc_dice
from tests.support.peers import dciodvfy, storescu
from training.tumor.clinical_t1c import HELDOUT_CASES, heldout_scans, load_scan

pytestmark = [pytest.mark.slow]

#: T1c alone is outside the validated inputs (held-out median TC Dice 0.028, under the 0.6 floor):
#: these tests measure the served model, so they ask for its result, marked UNVALIDATED.
UNVALIDATED_T1C = {"device": "cpu", "options": {"deliver_unvalidated": True}}
#: Below the measured value a case may fall by this much: one machine gives the same labels run
#: after run; the margin is for another CPU's floating point and thread order.
MARGIN = 0.05
#: TC Dice of each case measured through this test with the served model (1 mL floor); four
#: cases score 0 (the model calls 120-270 mL of tumor on these scans, MODEL_CARD.md): for them the
#: test checks the run, the objects and the brain, not the score.
MEASURED_TC_DICE = {
    "qin-brain-dsc-13": 0.118, "qin-brain-dsc-14": 0.0, "qin-brain-dsc-15": 0.445, "qin-brain-dsc-16": 0.0,
    "brain-tumor-progression-10-pre": 0.0, "brain-tumor-progression-10-post": 0.0,
    "brain-tumor-progression-11-pre": 0.140, "brain-tumor-progression-11-post": 0.055,
}


def assert_inside_the_brain(seg: pydicom.Dataset, source: list[Path]) -> None:
    labelled = seg_labels(seg, source) > 0
    brain = sitk.GetArrayFromImage(extract_brain(load_series(source).to_sitk())) > 0
    assert not (labelled & ~brain).any(), f"{(labelled & ~brain).sum()} segment voxels outside the extracted brain"


@dataclass(frozen=True)
class OfflineRun:
    """The held-out studies, each in its own subfolder of one input folder, through one ``radnode
    run``: its answer, and each case's series, reference core and result files."""

    ran: subprocess.CompletedProcess[str]
    cases: dict[str, tuple[list[Path], np.ndarray]]
    outputs: dict[str, list[Path]]


@pytest.fixture(scope="module")
def offline_run(data_dir, tmp_path_factory) -> OfflineRun:
    """As a site runs a model over past studies: one folder, one command, a result per study (its
    objects told apart by StudyInstanceUID); the model loads once instead of once per case."""
    root = tmp_path_factory.mktemp("heldout")
    cases = {name: heldout_case(data_dir, name, root / "studies" / name) for name in HELDOUT_CASES}
    config = node_config(root, routes=[TUMOR_ROUTE], pipelines={"tumor-segmentation": UNVALIDATED_T1C},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}])
    ran = NodeProcess(config, root).cli("run", "--pipeline", "tumor-segmentation", "--input", str(root / "studies"),
                                        "--output", str(root / "out"), timeout=600)
    print(ran.stdout)
    by_study: dict[str, list[Path]] = {}
    for path in (root / "out").iterdir() if (root / "out").is_dir() else ():
        by_study.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID), []).append(path)
    outputs = {name: by_study.get(str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), [])
               for name, (paths, _) in cases.items()}
    return OfflineRun(ran, cases, outputs)


@pytest.mark.peers
@pytest.mark.parametrize("name", HELDOUT_CASES)
def test_a_held_out_clinical_t1c_through_radnode_run_scores_its_floor_inside_the_brain(offline_run, name):
    assert offline_run.ran.returncode == 0, offline_run.ran.stderr
    paths, reference = offline_run.cases[name]
    outputs = {pydicom.dcmread(p).Modality: p for p in offline_run.outputs[name]}
    assert "SR" in outputs
    for path in offline_run.outputs[name]:
        assert not dciodvfy(path).errors, path.name
    if "SEG" not in outputs:  # nothing reported: the case scores 0
        score = 0.0
    else:
        seg = pydicom.dcmread(outputs["SEG"])
        assert_inside_the_brain(seg, paths)
        score = tc_dice(seg, paths, reference)
    print(f"{name}: TC Dice {score:.3f} (measured {MEASURED_TC_DICE[name]:.3f}), reference core "
          f"{reference.sum()} voxels")
    assert score >= MEASURED_TC_DICE[name] - MARGIN


@pytest.mark.peers
def test_a_held_out_clinical_t1c_sent_to_radnode_serve_reaches_the_pacs_with_its_score(orthanc, data_dir, tmp_path):
    """QIN-BRAIN-DSC 15 (its one enhancing lesion found) by storescu to a running node, whose
    results Orthanc receives: the same score as offline, nothing outside the brain."""
    name = "qin-brain-dsc-15"
    paths, reference = heldout_case(data_dir, name, tmp_path / "t1c")
    config = node_config(
        tmp_path, routes=[TUMOR_ROUTE], pipelines={"tumor-segmentation": UNVALIDATED_T1C},
        destinations=[orthanc.destination()],
        workers={"job_timeout_seconds": 300},
    )
    node = NodeProcess(config, tmp_path).start()
    try:
        assert storescu(node.port, paths).returncode == 0
        study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        index = node.index()
        job = wait_until(lambda: [j for j in index.jobs() if j.study_uid == study_uid and j.state in ("done", "failed")],
                         240, what="tumor job end")[0]
    finally:
        node.stop()
    assert job.state == "done", job.outcome
    files = orthanc.result_files(study_uid, tmp_path, {"SEG", "SR", "OT", "PR"})
    for path in files.values():
        assert not dciodvfy(path).errors, path.name
        assert str(pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription).startswith("UNVALIDATED ")
    seg = pydicom.dcmread(files["SEG"])
    assert_inside_the_brain(seg, paths)
    score = tc_dice(seg, paths, reference)
    print(f"{name} through the PACS: TC Dice {score:.3f}")
    assert score >= MEASURED_TC_DICE[name] - MARGIN


def _lesion_found(labels: np.ndarray, reference: np.ndarray, image: sitk.Image) -> tuple[float, np.ndarray] | None:
    """The reported core component that overlaps the reference lesion most: its volume (mL) and
    its centre of mass in the patient frame (mm); None when no reported core touches the lesion."""
    components, _ = ndimage.label(np.isin(labels, (1, 4)), structure=np.ones((3, 3, 3)))
    touching = np.bincount(components[reference & (components > 0)])
    if not touching.any():
        return None
    found = components == int(np.argmax(touching))
    centre = np.argwhere(found).mean(axis=0)[::-1]  # (x, y, z) index
    return (float(found.sum()) * float(np.prod(image.GetSpacing())) / 1000.0,
            np.array(image.TransformContinuousIndexToPhysicalPoint(centre.tolist())))


def test_a_held_out_scan_on_its_recovered_spacing_and_resampled_to_another_gives_the_same_finding(data_dir):
    """QIN-BRAIN-DSC 15 on its recovered grid (0.80 mm, 6 mm slices) and resliced to 0.7 mm, 5 mm
    slices, as another site's protocol would give it: the pipeline works in millimetres, so the
    enhancing lesion is reported at the same place with the same volume.

    Measured: the lesion's core 5.7 mL on both grids (reference 4.6 mL), centres 0.6 mm apart.
    The scan's TC Dice still moves (0.445 and 0.273): the false components elsewhere in the brain
    change with the grid, the finding does not.
    """
    torch.set_num_threads(CPU_THREADS)
    scan = next(s for s in heldout_scans(data_dir) if s.name == "qin-brain-dsc-15")
    image, mask = load_scan(scan)
    other = resliced(image, (0.7, 0.7, 5.0))
    _, segmenter = ModelSet.load(DEFAULT_MODEL_DIR).for_contrasts(["t1c"])
    findings = {}
    for label, grid in (("recovered", image), ("resliced", other)):
        labels = segment(segmenter, {"t1c": grid}, {}, "t1c")
        reference = sitk.GetArrayFromImage(sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
        found = _lesion_found(labels, reference, grid)
        assert found is not None, f"{label}: the enhancing lesion is not found"
        findings[label] = found
        print(label, grid.GetSpacing(), f"lesion's core {found[0]:.1f} mL at {np.round(found[1], 1)}, "
              f"TC Dice {dice(np.isin(labels, (1, 4)), reference):.3f}")
    (ml_a, centre_a), (ml_b, centre_b) = findings["recovered"], findings["resliced"]
    print(f"centres {np.linalg.norm(centre_a - centre_b):.1f} mm apart, volume ratio {ml_b / ml_a:.2f}")
    assert np.linalg.norm(centre_a - centre_b) < 3.0  # mm, half a slice: the same place (measured 0.6)
    assert 0.85 < ml_b / ml_a < 1.15  # measured 1.00
