"""Where a lung finding lies, as a radiologist names it: which lung, and which zone of it.

Worked in patient coordinates (LPS), never image axes, so it holds for any orientation. The lung
mask is one piece (airways, junction lines), so it is eroded until two cores remain, each grown
back within the mask (the airways stay out; without a split, the mask is cut at the midline). The
side is the lung nearest the finding's centre (a juxtapleural centre may lie just outside); the
zone is a third of that lung's height (SNOMED CT upper, middle, lower zone), an approximation of
the radiographic zones a CT does not mark. The mask is worked on at ``COARSE_MM`` or coarser, the
lungs split once per series (``lung_sides``). Steps and timings: docs/nodule.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage as ndi

from pipelines.distance import inside_distance
from pipelines.nodule.lungs import lung_mask
from pipelines.volume import Volume
from pipelines.writers.codes import AnatomicLocation

#: Erosion radii (mm) tried in turn to tell the lungs apart. 10 mm removes the main bronchi (at
#: most about 20 mm wide) and the junction lines; a broad anterior contact (emphysema) needs more.
CORE_RADII_MM = (10.0, 15.0, 20.0, 25.0)
#: The smaller core must hold at least this share of the larger one's voxels to be a lung, not
#: the stump of the trachea or a separated corner of one lung.
MIN_LUNG_SHARE = 0.1
#: Grown back beyond the erosion radius: the costophrenic recess is a wedge thinner than any
#: core radius; more than this reached the trachea beside the right apex (docs/nodule.md).
MARGIN_MM = 10.0
#: Voxel size (mm) the mask is subsampled to, at least.
COARSE_MM = 2.0


@dataclass(frozen=True)
class _Grid:
    """The lung mask subsampled to about ``COARSE_MM`` and cropped to the lungs, and the way back
    to patient coordinates."""

    volume: Volume
    mask: np.ndarray
    stride: np.ndarray
    offset: np.ndarray  # first subsampled voxel of the crop (k, j, i)
    spacing: np.ndarray  # mm per array axis (k, j, i)

    def lps(self, index: np.ndarray) -> np.ndarray:
        """Patient coordinates of the crop's voxel indices (k, j, i), one row per voxel."""
        return self.volume.kji_to_lps((index + self.offset) * self.stride)


@dataclass(frozen=True)
class _Lungs:
    """The two lungs on the coarse grid (labels 1 and 2) and how they were told apart."""

    labels: np.ndarray
    how: str


@dataclass(frozen=True)
class LungSides:
    """The two lungs of a series as patient points (a few thousand each), told apart once."""

    #: LPS (mm) of the voxels of the right and of the left lung on the coarse grid
    right: np.ndarray
    left: np.ndarray
    how: str
    voxel_mm: float

    def locate(self, center_lps: np.ndarray | Sequence[float]) -> AnatomicLocation:
        """Side and zone of the point ``center_lps`` (LPS mm) by the rule of this module."""
        center = np.asarray(center_lps, dtype=np.float64)
        distance = {side: float(np.min(np.linalg.norm(points - center, axis=1)))
                    for side, points in (("right", self.right), ("left", self.left))}
        side = min(distance, key=lambda name: distance[name])
        points, laterality = (self.left, codes.SCT.Left) if side == "left" else (self.right, codes.SCT.Right)
        share = _height_share(points[:, 2], float(center[2]), self.voxel_mm)
        zone, site = _zone(share)
        return AnatomicLocation(
            label=f"{side} lung, {zone} zone",
            site=site,
            laterality=laterality,
            rule=(f"side: the lung nearest the finding's centre ({self.how}); zone: thirds of that lung's "
                  f"craniocaudal height, the centre at {share:.0%} of it from the base"),
        )


def lung_sides(volume: Volume, lungs: np.ndarray | None = None) -> LungSides | None:
    """The two lungs of ``volume``: from ``lungs``, the boolean mask on its own array grid (k, j,
    i) as ``lung_mask(volume.array, slice_axis=0)`` gives it, or found here on the subsampled CT.
    None when there are not two lungs to tell apart (no aerated lung, one lung): then no finding
    gets a side, rather than a wrong one."""
    if lungs is not None and lungs.shape != volume.array.shape:
        raise ValueError(f"the lung mask is {lungs.shape}, the volume {volume.array.shape}: the mask must be on its grid")
    grid = _coarse(volume, lungs)
    if grid is None:
        return None
    separated = _separate(grid)
    points = {label: grid.lps(np.argwhere(separated.labels == label)) for label in (1, 2)}
    if not (len(points[1]) and len(points[2])):
        return None
    left = 1 if float(points[1][:, 0].mean()) > float(points[2][:, 0].mean()) else 2  # +x is the patient's left
    return LungSides(right=points[3 - left], left=points[left], how=separated.how, voxel_mm=float(grid.spacing.max()))


def _height_share(heights: np.ndarray, z: float, voxel_mm: float) -> float:
    """Where ``z`` lies in the lung whose voxels are at ``heights`` (patient z): 0 at its base, 1 at its apex."""
    low, high = float(heights.min()), float(heights.max())
    return float(np.clip((z - low) / max(high - low, voxel_mm), 0.0, 1.0))


def _zone(share: float) -> tuple[str, Code]:
    """The zone of a height given as a share of the lung's (0 at its base, 1 at its apex): thirds."""
    if share < 1 / 3:
        return "lower", codes.SCT.LowerZoneOfLung
    if share < 2 / 3:
        return "middle", codes.SCT.MiddleZoneOfLung
    return "upper", codes.SCT.UpperZoneOfLung


def _coarse(volume: Volume, lungs: np.ndarray | None) -> _Grid | None:
    """The mask at about ``COARSE_MM`` (found on the subsampled CT when not given), cropped to the
    lungs with one empty voxel around them: every distance the rule needs runs between voxels of
    the mask, so the crop changes none of them; None when the mask is empty."""
    spacing = np.asarray(volume.spacing, dtype=np.float64)[::-1]
    stride = np.maximum(1, np.ceil(COARSE_MM / spacing - 1e-6)).astype(int)
    every = (slice(None, None, stride[0]), slice(None, None, stride[1]), slice(None, None, stride[2]))
    mask = lung_mask(volume.array[every], slice_axis=0) if lungs is None else lungs[every].astype(bool)
    filled = np.argwhere(mask)
    if not len(filled):
        return None  # no aerated lung: nothing to place a finding in
    low = np.maximum(filled.min(axis=0) - 1, 0)
    high = filled.max(axis=0) + 2
    crop = mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    return _Grid(volume, np.ascontiguousarray(crop), stride, low, spacing * stride)


def _separate(grid: _Grid) -> _Lungs:
    """Lungs 1 and 2: cores grown back, or the mask split at the midline when no cores are found."""
    x = grid.lps(np.argwhere(grid.mask))[:, 0]
    midline = float(x.min() + x.max()) / 2
    depth = inside_distance(grid.mask, grid.spacing)
    for radius in CORE_RADII_MM:
        cores = _two_cores(grid, depth > radius, midline)
        if cores is not None:
            return _Lungs(_grow(grid, cores, radius + MARGIN_MM), f"lungs told apart by their {radius:g} mm cores")
    halves = np.zeros(grid.mask.shape, dtype=np.uint8)
    halves[grid.mask] = np.where(x > midline, 2, 1)
    return _Lungs(halves, "lungs not separable, split at the midline between their left-right extents")


def _two_cores(grid: _Grid, core: np.ndarray, midline: float) -> np.ndarray | None:
    """The two largest pieces of ``core`` as labels 1, 2 when they can be the two lungs, else None."""
    pieces, count = ndi.label(core)
    if count < 2:
        return None
    sizes = np.bincount(pieces.ravel())[1:]
    first, second = (int(n) + 1 for n in np.argsort(sizes)[::-1][:2])
    if sizes[second - 1] < MIN_LUNG_SHARE * sizes[first - 1]:
        return None
    centres = grid.lps(np.array(ndi.center_of_mass(core, pieces, [first, second])))
    if (centres[0, 0] > midline) == (centres[1, 0] > midline):
        return None
    return np.where(pieces == first, 1, np.where(pieces == second, 2, 0)).astype(np.uint8)


def _grow(grid: _Grid, cores: np.ndarray, reach_mm: float) -> np.ndarray:
    """Each core grown within the mask up to ``reach_mm``, the nearer core winning."""
    to_first = inside_distance(cores != 1, grid.spacing)
    to_second = inside_distance(cores != 2, grid.spacing)
    lungs = np.zeros(cores.shape, dtype=np.uint8)
    lungs[grid.mask & (to_first <= reach_mm) & (to_first <= to_second)] = 1
    lungs[grid.mask & (to_second <= reach_mm) & (to_second < to_first)] = 2
    return lungs
