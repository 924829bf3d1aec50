"""Healthy brains built from real tumor brains, for measuring false-positive tumor volume.

No tumor-free brain MR is on these machines, and a tumor-free axial slab of a BraTS case is a
slab: cut flat at both ends, which no scanner delivers and which the network answers with
edge artefacts. A whole healthy brain is built instead from the hemisphere of a BraTS-2015 case
that holds no tumor: that hemisphere and its mirror image across the mid-sagittal plane of the
atlas space (SRI24, which the BraTS images are registered to). Every voxel is real anatomy of
one patient; the symmetry is the only synthetic part. A case qualifies when no tumor label
lies within ``MARGIN_MM`` of the healthy half (mass effect can still shift its midline
structures).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Nearest tumor label allowed from the healthy hemisphere (mm).
MARGIN_MM = 5.0


def mirrored_healthy(images: dict[str, sitk.Image], labels: sitk.Image,
                     margin_mm: float = MARGIN_MM) -> dict[str, sitk.Image] | None:
    """The tumor-free hemisphere of each image joined to its mirror image, or None if both halves
    hold tumor (a label within ``margin_mm``).

    The mid-sagittal plane is the middle of the non-background left-right extent (array axis 2):
    the brain's in atlas space, the head's in a skull-on scan.
    """
    tumor = sitk.GetArrayFromImage(labels) > 0
    reference = sitk.GetArrayFromImage(next(iter(images.values())))
    background = reference.min()
    columns = np.nonzero((reference != background).any(axis=(0, 1)))[0]
    middle = int(round((columns[0] + columns[-1] + 1) / 2))
    near = ndimage.distance_transform_edt(~tumor, sampling=tuple(reversed(labels.GetSpacing()))) <= margin_mm
    width = min(middle, reference.shape[2] - middle)
    for healthy in (slice(middle - width, middle), slice(middle, middle + width)):
        if near[:, :, healthy].any():
            continue
        result = {}
        for role, image in images.items():
            array = sitk.GetArrayFromImage(image)
            half = array[:, :, healthy]
            mirrored = array.copy()
            mirrored[:, :, middle - width:middle + width] = (
                np.concatenate([half[:, :, ::-1], half], axis=2) if healthy.start == middle
                else np.concatenate([half, half[:, :, ::-1]], axis=2))
            out = sitk.GetImageFromArray(mirrored)
            out.CopyInformation(image)
            result[role] = out
        return result
    return None
