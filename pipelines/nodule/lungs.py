"""Where the lungs are in a CT: the applicability check and the place to insert synthetic nodules.

A threshold is enough here: aerated lung is the only large body of air inside the body on a
chest CT. Air touching the in-plane border of the image is outside the patient and is dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipelines.components import component_sizes

#: Aerated lung is well below this (about -850 HU); soft tissue is above it.
AIR_HU = -400.0
#: A component of inner air smaller than this fraction of the largest one is bowel gas or trachea.
MIN_COMPONENT_FRACTION = 0.05


def lung_mask(hu: np.ndarray, slice_axis: int) -> np.ndarray:
    """Lungs with their vessels and nodules filled in, as a boolean array shaped like ``hu``.

    ``slice_axis`` is the axis across slices (2 on a detector grid, 0 on a ``Volume``); air that
    touches the image border in the other two axes is outside air.
    """
    lungs = inner_air(hu, slice_axis)
    # Vessels and nodules are holes in the air mask; fill them slice by slice.
    moved = np.moveaxis(lungs, slice_axis, 0)
    filled = np.stack([ndi.binary_fill_holes(plane) for plane in moved])
    return np.moveaxis(filled, 0, slice_axis)


def inner_air(hu: np.ndarray, slice_axis: int) -> np.ndarray:
    """The aerated lung and the airways, without what lies in them (vessels, nodules): air inside
    the body, in components of at least ``MIN_COMPONENT_FRACTION`` of the largest."""
    air = hu < AIR_HU
    labels, count = ndi.label(air)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    outside: set[int] = set()
    for axis in range(3):
        if axis == slice_axis:
            continue
        for side in (0, -1):
            outside.update(np.unique(np.take(labels, side, axis=axis)).tolist())
    sizes = component_sizes(labels, count)
    inner = [n for n in range(1, count + 1) if n not in outside]
    if not inner:
        return np.zeros(hu.shape, dtype=bool)
    largest = max(sizes[n - 1] for n in inner)
    keep = [n for n in inner if sizes[n - 1] >= MIN_COMPONENT_FRACTION * largest]
    kept: np.ndarray = np.isin(labels, keep)
    return kept


def lung_volume_ml(mask: np.ndarray, spacing_mm: np.ndarray) -> float:
    return float(mask.sum() * np.prod(spacing_mm) / 1000.0)
