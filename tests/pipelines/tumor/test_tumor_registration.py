"""Rigid registration of MR contrasts (tumor-segmentation): accuracy on a known motion, and refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.tumor.registration import MIN_OVERLAP, RegistrationError, align, head_mask, overlap
from pipelines.volume import load_series
from tests.support.mr_dicom import Study, moved, resliced, write_series
from training.tumor.data import TCGA, load_images

pytestmark = [pytest.mark.slow]

#: Known patient motion between the two series: rotation (degrees about x, y, z) and shift (mm).
ROTATION_DEG = (4.0, -3.0, 6.0)
SHIFT_MM = (6.0, -8.0, 4.0)


@pytest.fixture(scope="module")
def tcga(data_dir):
    return load_images(TCGA, data_dir)


def test_known_motion_between_dicom_series_is_recovered_within_1_mm_and_1_degree(tcga, tmp_path):
    """FLAIR moved by a known rigid transform and written as an oblique DICOM series aligns back
    onto the T1c series: every brain point within 1 mm of where the known motion puts it, and the
    rotation within 1 degree."""
    study = Study()
    reference = resliced(tcga["t1c"], (1.5, 1.5, 1.5))
    flair, truth = moved(resliced(tcga["flair"], (1.5, 1.5, 3.0)), ROTATION_DEG, SHIFT_MM)
    fixed = load_series(write_series(reference, "t1c", tmp_path / "t1c", study)).to_sitk()
    moving = load_series(write_series(flair, "flair", tmp_path / "flair", study)).to_sitk()

    alignment = align(fixed, moving, "FLAIR")

    brain = np.argwhere(sitk.GetArrayFromImage(fixed) > 0)[::200, ::-1].astype(float)
    points = [fixed.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in brain]
    errors = [np.linalg.norm(np.subtract(alignment.transform.TransformPoint(p), truth.TransformPoint(p)))
              for p in points]
    found, known = (np.array(t.GetMatrix()).reshape(3, 3) for t in (alignment.transform, truth))
    rotation_error = math.degrees(math.acos(min(1.0, (np.trace(found.T @ known) - 1) / 2)))
    print(f"registration error: max {max(errors):.2f} mm, mean {np.mean(errors):.2f} mm, "
          f"rotation {rotation_error:.2f} deg")
    assert max(errors) < 1.0
    assert rotation_error < 1.0
    assert alignment.overlap > 0.95


def test_a_series_that_cannot_be_aligned_fails_naming_it(tcga):
    """A T2 that is another head position far outside plausible motion (upside down) is refused."""
    reference = resliced(tcga["t1c"], (2.0, 2.0, 2.0))
    upside_down, _ = moved(resliced(tcga["t2"], (2.0, 2.0, 2.0)), (180.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(RegistrationError, match="T2 series could not be aligned"):
        align(reference, upside_down, "T2")


def test_a_narrower_field_of_view_is_not_taken_for_misalignment(tcga):
    """The FLAIR of one session prescribed narrower than the T1c (TCGA-FG-6692's clinical FLAIR:
    208 columns beside 256): the heads are compared where both series imaged the patient, so a
    perfectly aligned series keeps an overlap of 1.0 (the whole-head Dice of half a head: 0.663)."""
    reference = resliced(tcga["t1c"], (2.0, 2.0, 2.0))
    size = list(reference.GetSize())
    narrow = reference[size[0] // 2:, :, :]  # the left half of the head, on the same grid and patient positions
    head = sitk.GetArrayFromImage(head_mask(reference)).astype(bool)
    part = sitk.GetArrayFromImage(sitk.Resample(head_mask(narrow), reference, sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)).astype(bool)
    whole_head_dice = 2 * (head & part).sum() / (head.sum() + part.sum())
    print(f"whole-head Dice {whole_head_dice:.3f}")
    assert whole_head_dice < MIN_OVERLAP  # what the check measured before issue #65
    assert overlap(reference, narrow, sitk.Transform()) == pytest.approx(1.0)
