"""No tumor in the ventricles, nor a periventricular cap called edema, unless a lesion's core reaches them.

A thin FLAIR-bright rim around the lateral ventricles is normal in many adults and the network can
call it edema (issue #65); a glioma's edema surrounds a core, and a cored lesion reaching a
ventricle is kept whole (a tumor may invade the ependyma). On the reference contrast, ventricles
are deep brain voxels darker than ``CSF_RATIO`` of the brain's median (none on a normalized
series) in parts of ``MIN_VENTRICLE_ML`` or more; a coreless tumor with ``CAP_SHARE`` of its voxels
within ``PERIVENTRICULAR_MM`` of them is dropped, else its voxels inside them are cleared.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.components import component_sizes
from pipelines.distance import inside_distance
from pipelines.tumor.brain_mask import BrainMask

#: CSF on T1c and FLAIR: darker than this share of the brain's median (tissue is 0.65-1.55 of it,
#: ``brain_extraction.BAND``)
CSF_RATIO = 0.6
#: Depth (mm) under the brain's surface beyond which CSF is ventricular, not sulcal.
DEEP_MM = 12.0
#: Smallest ventricle part (mL): specks of dark voxels (vessels, necrosis) are not ventricles.
MIN_VENTRICLE_ML = 0.5
#: Reach (mm) of a periventricular cap from the ventricle's wall.
PERIVENTRICULAR_MM = 6.0
#: Share of a core-less lesion within that reach that makes it a cap.
CAP_SHARE = 0.5


def ventricle_mask(reference: sitk.Image, brain: BrainMask) -> np.ndarray:
    """The ventricles on the reference grid (array order k, j, i), by the module's rule."""
    image = sitk.GetArrayFromImage(reference).astype(np.float32)
    inside = brain.inside
    if not inside.any() or float(image[inside].min()) < 0:  # negative: normalized, not scanner units
        return np.zeros(inside.shape, dtype=bool)
    spacing = brain.spacing_kji
    dark: np.ndarray = inside & (image < CSF_RATIO * float(np.median(image[inside]))) & (brain.depth_mm > DEEP_MM)
    components, count = ndimage.label(dark, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return dark
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = component_sizes(components, count) * voxel_ml
    ventricles: np.ndarray = np.isin(components, np.nonzero(sizes >= MIN_VENTRICLE_ML)[0] + 1)
    return ventricles


def clear_ventricles(labels: np.ndarray, ventricles: np.ndarray, spacing_kji: tuple[float, ...]) -> np.ndarray:
    """``labels`` without periventricular caps and without core-less tumor inside the ventricles."""
    if not ventricles.any() or not labels.any():
        return labels
    near = inside_distance(~ventricles, spacing_kji) <= PERIVENTRICULAR_MM
    components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    result = labels.copy()
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        lesion = components[box] == component
        if np.isin(labels[box][lesion], (1, 4)).any():
            continue  # a core reaches here: kept whole
        cleared = lesion if float(near[box][lesion].mean()) >= CAP_SHARE else lesion & ventricles[box]
        result[box][cleared] = 0
    return result
