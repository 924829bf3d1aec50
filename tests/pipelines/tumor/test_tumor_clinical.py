"""tumor-segmentation on scans as hospitals send them: a skull-on, thick-slice T1c alone; series that are not a brain MR.

The clinical series is TCGA-FG-6692's raw post-contrast T1 (26 axial slices of 5.5 mm, 0.9 mm
pixels, skull on) written as DICOM with its own geometry (tests/support/mr_dicom.py).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
import torch

from node.operate.findings import finding_lines
from pipelines.base import JobInput, NotApplicable, PipelineSettings
from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.orientation import canonical, to_source
from pipelines.tumor.pipeline import TumorSegmentation
from pipelines.volume import load_series
from tests.support.cpu_share import CPU_THREADS
from tests.support.mr_dicom import Study, seg_labels, write_series
from tests.support.peers import dciodvfy
from training.tumor.data import CLINICAL_BRAIN_MASK, load_clinical

pytestmark = [pytest.mark.slow]

CHEST_CT = "ct-chest/lung-pet-ct-dx-A0002/B40f"


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(CPU_THREADS)
    # T1c alone is outside the validated inputs (held-out median TC Dice 0.028): sent only when asked for
    return TumorSegmentation(PipelineSettings(name="tumor-segmentation", device="cpu",
                                              options={"deliver_unvalidated": True}))


@pytest.fixture(scope="module")
def clinical_t1c(data_dir, tmp_path_factory) -> list[Path]:
    return write_series(load_clinical("t1c", data_dir), "t1c", tmp_path_factory.mktemp("clinical"), Study())


def sr_texts(dataset) -> list[str]:
    found = []
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found.extend(sr_texts(item))
    return found


@pytest.mark.peers
def test_a_skull_on_thick_slice_t1c_alone_is_segmented_on_its_own_slices_inside_the_brain(
        pipeline, clinical_t1c, data_dir, tmp_path):
    result = pipeline.run(JobInput(series={"t1c": clinical_t1c}, output_dir=tmp_path))
    print("summary:", result.summary)
    datasets = {ds.Modality: ds for ds in map(pydicom.dcmread, result.outputs)}
    assert set(datasets) == {"SEG", "SR", "OT", "PR", "KO"}  # SEG, SR, key images, presentation state, KOS
    assert all(ds.SeriesDescription.startswith("UNVALIDATED ") for ds in datasets.values())
    for path in result.outputs:
        assert not dciodvfy(path).errors
    labels = seg_labels(datasets["SEG"], clinical_t1c)
    source = load_series(clinical_t1c)
    assert labels.shape == source.array.shape == (26, 224, 256)  # the source's own 5.5 mm slices
    grid = source.to_sitk()
    # the brain as the pipeline extracts it: on the series put in one storage order (LPS), taken back
    brain = to_source(sitk.GetArrayFromImage(extract_brain(canonical(grid))), canonical(grid), grid) > 0
    reference = sitk.ReadImage(str(data_dir / CLINICAL_BRAIN_MASK))  # same grid, in the NIfTI's voxel order
    hd_bet = sitk.GetArrayFromImage(sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    labelled = labels > 0
    print(f"labelled {labelled.sum()} voxels, outside HD-BET's brain mask {(labelled & ~hd_bet).sum()}")
    assert labelled.any()
    assert not (labelled & ~brain).any(), "a tumor voxel outside the extracted brain"
    # against the independent HD-BET mask: 982 of 9,775 labelled voxels (10.0 %, 4.3 mL) lie outside it.
    # Before issue #65 the brain was extracted in the file's own order (LAS): 218 of 9,199 (2.4 %);
    # brain extraction reaches Dice 0.951 (LPS) to 0.955 (RAS) against HD-BET by storage order.
    assert (labelled & ~hd_bet).sum() <= 0.12 * labelled.sum()
    # the brain the pipeline used is the HD-BET brain to within 2 % (measured 1608.5 against 1598 mL)
    assert result.summary.brain_ml == pytest.approx(1598, rel=0.02)
    stated = [text for text in sr_texts(datasets["SR"]) if text.startswith("brain volume used: ")]
    assert stated and abs(float(stated[0].split()[3]) - result.summary.brain_ml) <= 0.5, stated  # the SR rounds to mL
    # TCGA-FG-6692's tumor is right frontal (tests/pipelines/test_finding_location.py says how that was
    # established): the SR places the largest sub-region there
    largest = max(result.summary.volumes_ml, key=lambda region: result.summary.volumes_ml[region])
    line = next(line for line in finding_lines(datasets["SR"]) if line.startswith(f"{largest}:"))
    assert " in Frontal lobe (right)" in line, line
    # and per lesion: its own group, largest first, with its volume and place
    lesions = [line for line in finding_lines(datasets["SR"]) if line.startswith("lesion-")]
    print("lesions:", lesions)
    assert lesions and lesions[0].startswith("lesion-1: ") and " in Frontal lobe (right)" in lesions[0], lesions
    assert " mL" in lesions[0], lesions[0]


def _edited(paths: list[Path], **attributes) -> list[Path]:
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def test_a_spine_series_is_not_applicable_with_its_body_part(pipeline, data_dir, tmp_path):
    paths = _edited(write_series(load_clinical("t1c", data_dir), "t1c", tmp_path / "s", Study()),
                    BodyPartExamined="LSPINE", SeriesDescription="T1 SAG POST GD")
    with pytest.raises(NotApplicable, match="shows LSPINE .*not a brain"):
        pipeline.run(JobInput(series={"t1c": paths}, output_dir=tmp_path / "out"))


def test_a_localizer_is_not_applicable(pipeline, data_dir, tmp_path):
    paths = _edited(write_series(load_clinical("t1c", data_dir), "t1c", tmp_path / "s", Study()),
                    ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(NotApplicable, match="localizer"):
        pipeline.run(JobInput(series={"t1c": paths}, output_dir=tmp_path / "out"))


def test_a_body_larger_than_a_head_is_not_applicable_even_labelled_brain(pipeline, data_dir, tmp_path):
    """A real chest (CT slices written as an MR series whose header says BRAIN): the image decides (330 mm wide)."""
    chest = load_series(sorted((data_dir / CHEST_CT).glob("*.dcm"))).to_sitk()
    as_mr = sitk.Clamp(chest + 1024.0, lowerBound=0.0)
    paths = write_series(as_mr, "t1c", tmp_path / "s", Study())
    with pytest.raises(NotApplicable, match=r"\d+ mm wide .*larger than a head"):
        pipeline.run(JobInput(series={"t1c": paths}, output_dir=tmp_path / "out"))
