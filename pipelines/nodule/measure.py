"""Segment a detected nodule inside its box on the source slices, and measure it.

The detector gives a box; radiologists need a size. A half-maximum threshold between the nodule's
density and the lung around it (lower for ground glass; partial-volume edges split at the true
surface) keeps the component at the box centre, clipped to the box's inflated inscribed ellipsoid
so an attached vessel or the chest wall cannot run away with it. Measured on the source voxels:
long axis (longest in-plane chord, as RECIST and Fleischner), volume, mean HU, centre of mass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from pipelines.components import component_sizes
from pipelines.volume import Volume

#: Density of the aerated lung around a nodule, when the box holds too little lung to measure it.
LUNG_HU = -850.0
#: The threshold never leaves this range: below it is lung noise, above it only calcium survives.
THRESHOLD_RANGE_HU = (-750.0, -300.0)
#: The box is inflated by this fraction before clipping, to keep the nodule's edges.
MARGIN = 0.25
#: Vessels up to about this thickness (mm) are cut off a nodule's mask.
VESSEL_CUT_MM = 3.0


@dataclass(frozen=True)
class Measurement:
    """A nodule's mask in the source volume (as the bounding window and its boolean mask) and sizes.

    ``volume_mm3`` and ``mean_hu`` are None where the mask is not the nodule (a detection box).
    """

    window: tuple[slice, slice, slice]
    mask: np.ndarray
    diameter_mm: float
    volume_mm3: float | None
    mean_hu: float | None
    center_lps: tuple[float, float, float]
    #: a mass's solid part's long axis (mm) when the segment also holds its ground-glass halo
    solid_diameter_mm: float | None = None


def voxel_window(start: np.ndarray, stop: np.ndarray) -> tuple[slice, slice, slice]:
    """The (k, j, i) slices from voxel ``start`` up to, not including, ``stop``."""
    return slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2])


def as_point(values: np.ndarray) -> tuple[float, float, float]:
    """A 3-vector (an LPS position) as the plain floats that results and reports carry."""
    x, y, z = (float(v) for v in values)
    return x, y, z


def source_box(volume: Volume, lps_corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detection box as (low, high) continuous source indices (k, j, i)."""
    index = volume.lps_to_kji(lps_corners)
    return index.min(axis=0), index.max(axis=0)


def measure(volume: Volume, low: np.ndarray, high: np.ndarray) -> Measurement | None:
    """Segment and measure the nodule in the source box ``low``..``high`` (k, j, i); None if empty."""
    spacing_kji = np.asarray(volume.spacing[::-1])
    center = (low + high) / 2.0
    half = (high - low) / 2.0 * (1.0 + MARGIN) + 1.0
    start = np.maximum(np.floor(center - half).astype(int), 0)
    stop = np.minimum(np.ceil(center + half).astype(int) + 1, volume.array.shape)
    if np.any(stop <= start):
        return None
    window = voxel_window(start, stop)
    hu = volume.array[window]

    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij")
    inside = sum(((g - c) / h) ** 2 for g, c, h in zip(grids, center, half)) <= 1.0
    core = sum(((g - c) / (h * 0.35 + 0.5)) ** 2 for g, c, h in zip(grids, center, half)) <= 1.0
    nodule_hu = float(np.percentile(hu[core], 90)) if core.any() else float(hu[inside].max())
    lung = hu[inside & (hu < -600)]
    lung_hu = float(np.median(lung)) if lung.size > 20 else LUNG_HU
    threshold = float(np.clip((nodule_hu + lung_hu) / 2.0, *THRESHOLD_RANGE_HU))

    dense = (hu > threshold) & inside
    # An in-plane opening cuts vessels thinner than the disk off the nodule; a nodule too small
    # to survive it is kept as thresholded.
    opened = ndi.binary_opening(dense, structure=_disk(VESSEL_CUT_MM / 2.0, spacing_kji))
    mask = _component_at(opened, core)
    if mask is None:
        mask = _component_at(dense, core)
    if mask is None:
        return None
    return measure_mask(volume, window, mask)


def measure_mask(volume: Volume, window: tuple[slice, slice, slice], mask: np.ndarray) -> Measurement:
    """The sizes of the segmentation ``mask`` of the source voxels in ``window``."""
    spacing_kji = np.asarray(volume.spacing[::-1])
    start = np.array([s.start for s in window])
    centroid = np.array(ndi.center_of_mass(mask)) + start
    return Measurement(
        window=window,
        mask=mask,
        diameter_mm=long_axis_mm(mask, spacing_kji),
        volume_mm3=float(mask.sum() * np.prod(spacing_kji)),
        mean_hu=float(volume.array[window][mask].mean()),
        center_lps=as_point(volume.kji_to_lps(centroid)),
    )


def union(volume: Volume, first: Measurement, second: Measurement) -> Measurement:
    """One measurement of the voxels of both segmentations."""
    start = np.minimum([s.start for s in first.window], [s.start for s in second.window])
    stop = np.maximum([s.stop for s in first.window], [s.stop for s in second.window])
    window = voxel_window(start, stop)
    mask = np.zeros(tuple(stop - start), dtype=bool)
    for part in (first, second):
        mask[_within(part.window, start)] |= part.mask
    solid = [d for d in (first.solid_diameter_mm, second.solid_diameter_mm) if d is not None]
    return dataclasses.replace(measure_mask(volume, window, mask), solid_diameter_mm=max(solid, default=None))


def touch(first: Measurement, second: Measurement) -> bool:
    """Whether the two segmentations share a voxel or lie side by side (26-connected)."""
    start = np.maximum([s.start for s in first.window], [s.start for s in second.window]) - 1
    stop = np.minimum([s.stop for s in first.window], [s.stop for s in second.window]) + 1
    if np.any(stop <= start):
        return False
    start = np.maximum(start, 0)
    window = voxel_window(start, stop)
    grown = ndi.binary_dilation(_cropped(first, window), structure=np.ones((3, 3, 3), dtype=bool))
    return bool((grown & _cropped(second, window)).any())


def _cropped(part: Measurement, window: tuple[slice, slice, slice]) -> np.ndarray:
    """``part``'s mask on ``window``'s voxels (False where it has none)."""
    start = np.array([s.start for s in window])
    shape = tuple(s.stop - s.start for s in window)
    full = np.zeros(shape, dtype=bool)
    low = np.maximum([s.start for s in part.window], start)
    high = np.minimum([s.stop for s in part.window], start + np.array(shape))
    if np.any(high <= low):
        return full
    source = tuple(slice(int(a - s.start), int(b - s.start)) for a, b, s in zip(low, high, part.window))
    full[tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(low, high, start))] = part.mask[source]
    return full


def _within(window: tuple[slice, slice, slice], start: np.ndarray) -> tuple[slice, slice, slice]:
    """``window`` relative to a larger window that begins at ``start``."""
    return voxel_window(np.array([s.start for s in window]) - start, np.array([s.stop for s in window]) - start)


def _component_at(mask: np.ndarray, core: np.ndarray) -> np.ndarray | None:
    """The connected component of ``mask`` that covers most of the box's core, if any."""
    labels, count = ndi.label(mask)
    if count == 0:
        return None
    overlap = component_sizes(labels, count, core)
    if overlap.max() == 0:
        return None
    component: np.ndarray = labels == int(np.argmax(overlap)) + 1
    return component


def _disk(radius_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    """An in-plane disk, one slice thick, as a 3D structuring element."""
    rows = max(int(radius_mm / spacing_kji[1]), 1)
    cols = max(int(radius_mm / spacing_kji[2]), 1)
    j, i = np.mgrid[-rows : rows + 1, -cols : cols + 1]
    disk = (j * spacing_kji[1]) ** 2 + (i * spacing_kji[2]) ** 2 <= radius_mm**2
    element: np.ndarray = disk[None]
    return element


def long_axis_mm(mask: np.ndarray, spacing_kji: np.ndarray) -> float:
    """Longest in-plane chord over all slices, voxel edge to voxel edge."""
    row, column = spacing_kji[1], spacing_kji[2]
    best = 0.0
    for plane in mask:
        points = np.argwhere(plane) * np.array([row, column])
        if len(points) == 0:
            continue
        if len(points) >= 3:
            try:
                points = points[ConvexHull(points).vertices]
            except QhullError:  # all on a line
                pass
        differences = points[:, None, :] - points[None, :, :]
        best = max(best, float(np.sqrt((differences**2).sum(axis=-1)).max()))
    # Centres of the outermost voxels are half a voxel inside the nodule's edges on both sides.
    return best + float(np.sqrt(row * column))
