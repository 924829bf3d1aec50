"""No tumor along the dura: venous sinuses, the falx and vessels on the brain's surface enhance on T1c.

After contrast the dural sinuses, the falx and cortical veins are bright on T1c and the network can
call them tumor or edema (issue #65). They are thin and long and lie along the brain's surface or
midline; a tumor is a mass. On the reference grid (LPS storage order), a lesion that is thin
(nowhere ``THIN_MM`` across), long (at least ``ELONGATED`` times a sphere as thick) and along the
dura (``ALONG_SHARE`` of its voxels within ``EDGE_MM`` of the surface or ``MIDLINE_MM`` of the
midline) is dropped whole. The case and the shape figures: docs/tumor.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.tumor.brain_mask import BrainMask

THIN_MM = 16.0
ELONGATED = 3.0
EDGE_MM = 10.0
MIDLINE_MM = 8.0
ALONG_SHARE = 0.5


def along_dura(mask: BrainMask) -> np.ndarray:
    """Voxels of the brain within ``EDGE_MM`` of its outer surface or ``MIDLINE_MM`` of its midline."""
    brain, spacing_kji, depth = mask.inside, mask.spacing_kji, mask.depth_mm
    columns = np.arange(brain.shape[2], dtype=np.float64)
    count = brain.sum(axis=2)
    centre = (brain * columns).sum(axis=2) / np.maximum(count, 1)   # (k, j): the row's left-right centre
    midline = np.abs(columns[None, None, :] - centre[:, :, None]) * spacing_kji[2] <= MIDLINE_MM
    near: np.ndarray = brain & ((depth <= EDGE_MM) | midline)
    return near


def is_dural(lesion: np.ndarray, near: np.ndarray, spacing_kji: tuple[float, ...]) -> bool:
    """Whether a lesion (a boolean mask on a box of the grid) is thin, long and along the dura."""
    thickness = 2.0 * max(float(ndimage.distance_transform_edt(plane, sampling=spacing_kji[1:]).max())
                          for plane in lesion if plane.any())
    if thickness >= THIN_MM:
        return False
    volume_mm3 = float(lesion.sum()) * float(np.prod(spacing_kji))
    sphere_mm3 = np.pi / 6.0 * thickness ** 3
    return volume_mm3 >= ELONGATED * sphere_mm3 and float(near[lesion].mean()) >= ALONG_SHARE


def clear_dura(labels: np.ndarray, brain: BrainMask) -> np.ndarray:
    """``labels`` without the lesions the module's rule calls dura."""
    if not labels.any():
        return labels
    near = along_dura(brain)
    components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    result = labels.copy()
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)  # an edge for the distance
        lesion = components[padded] == component
        if is_dural(lesion, near[padded], brain.spacing_kji):
            result[padded][lesion] = 0
    return result
