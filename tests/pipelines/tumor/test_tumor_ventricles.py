"""No core-less tumor label in the ventricles or capping them (issue #65: 35 mL of "edema" around
both lateral ventricles of TCGA-FG-6692 in one storage order); a cored lesion reaching them is kept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.brain_mask import BrainMask
from pipelines.tumor.orientation import canonical
from pipelines.tumor.ventricles import clear_ventricles, ventricle_mask
from training.tumor.data import load_clinical

SPACING = (2.0, 2.0, 2.0)


def _mask(brain: sitk.Image) -> BrainMask:
    """The brain image as the rules read it: boolean (k, j, i) and the spacing in that order."""
    return BrainMask(sitk.GetArrayFromImage(brain) > 0, brain.GetSpacing()[::-1])


def _phantom() -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """A 2 mm brain (ellipsoid of tissue at 1000) with a dark ventricle (300) deep in its centre."""
    z, y, x = np.ogrid[:60, :80, :70]
    brain = ((z - 30) / 28) ** 2 + ((y - 40) / 38) ** 2 + ((x - 35) / 32) ** 2 <= 1
    ventricle = (abs(z - 30) <= 4) & (abs(y - 40) <= 10) & (abs(x - 35) <= 3)
    values = np.where(brain, np.where(ventricle, 300.0, 1000.0), 0.0).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING)
    mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask, ventricle


def test_a_periventricular_cap_goes_a_cored_lesion_at_the_ventricle_stays_whole():
    image, brain, ventricle = _phantom()
    found = ventricle_mask(image, _mask(brain))
    assert (found == ventricle).all()
    labels = np.zeros(found.shape, dtype=np.uint8)
    cap = ndimage.binary_dilation(ventricle, iterations=2) & ~ventricle  # 4 mm of edema around it
    labels[cap] = 2
    labels[ventricle & (np.arange(70) < 33)[np.newaxis, np.newaxis, :]] = 2  # and inside it
    cored = np.zeros_like(cap)
    cored[28:33, 5:14, 30:40] = True  # far from the ventricle: edema with a necrotic centre
    labels[cored] = 2
    labels[30, 9, 35] = 1
    far = np.zeros_like(cap)
    far[10:16, 60:70, 10:20] = True  # core-less, far from the ventricle
    labels[far] = 2
    cleared = clear_ventricles(labels, found, SPACING)
    assert not cleared[cap | ventricle].any()
    assert (cleared[cored] > 0).all() and (cleared[far] == 2).all()


def test_a_cored_lesion_reaching_into_the_ventricle_is_kept_whole():
    image, brain, ventricle = _phantom()
    labels = np.zeros(ventricle.shape, dtype=np.uint8)
    lesion = ndimage.binary_dilation(ventricle, iterations=3)
    labels[lesion] = 2
    labels[ventricle] = 4  # enhancing tumor filling the ventricle (an ependymal spread)
    assert (clear_ventricles(labels, ventricle_mask(image, _mask(brain)), SPACING) == labels).all()


@pytest.mark.slow
def test_a_cap_around_the_real_ventricles_of_tcga_fg_6692_is_removed(data_dir):
    """The raw skull-on clinical T1c (5.5 mm slices) with the pipeline's own brain extraction:
    its ventricles (18.9 mL here; lateral ventricles, frontal horns and atria on its axial slices) and
    a 4 mm cap of synthetic edema around them, which must all go."""
    t1c = canonical(load_clinical("t1c", data_dir))
    ventricles = ventricle_mask(t1c, _mask(extract_brain(t1c)))
    voxel_ml = float(np.prod(t1c.GetSpacing())) / 1000.0
    print(f"ventricles {ventricles.sum() * voxel_ml:.1f} mL")
    assert 10 < ventricles.sum() * voxel_ml < 40
    spacing = t1c.GetSpacing()[::-1]
    near = ndimage.distance_transform_edt(~ventricles, sampling=spacing) <= 4.0
    labels = np.where(near, 2, 0).astype(np.uint8)
    assert not clear_ventricles(labels, ventricles, spacing).any()


def test_a_normalized_image_has_no_ventricles_to_find():
    """z-scores (negative inside the brain) are not scanner units: a share of the median means
    nothing there, so nothing is taken for ventricles and no label is cleared."""
    image, brain, _ = _phantom()
    zscored = (image - 800.0) / 200.0
    assert not ventricle_mask(zscored, _mask(brain)).any()
