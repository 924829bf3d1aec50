"""Euclidean distance in millimetres from the voxels of a mask to the nearest voxel outside it.

scipy's ``distance_transform_edt`` gives this exactly but on one core: on a whole brain or chest
volume it took most of a second each time (docs/pipelines.md). ITK's Maurer transform of the
mask's complement gives the same distances (the nearest outside voxel always borders the mask)
on every core, for the whole-volume masks of the lung and brain rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def inside_distance(mask: np.ndarray, spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per voxel of ``mask`` (array order), the distance in mm to the nearest voxel outside it,
    0 outside: ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``, to float32
    precision. ``spacing`` is in the array's axis order. A mask with no voxel outside it gives
    ``inf`` inside (scipy's result there is undefined)."""
    if mask.all():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    outside = sitk.GetImageFromArray(np.logical_not(mask).astype(np.uint8))
    outside.SetSpacing([float(s) for s in reversed(spacing)])
    signed = sitk.SignedMaurerDistanceMap(outside, insideIsPositive=False, squaredDistance=False,
                                          useImageSpacing=True)
    distance = sitk.GetArrayFromImage(signed)
    distance[~mask] = 0.0
    return distance
