"""A CT volume resampled onto the detector's grid, and the way back to the patient.

Detectors trained the MONAI way (the ``lung_nodule_ct_detection`` bundle included) see an image
in RAS orientation, array axes (x, y, z), at one fixed voxel spacing. This module builds exactly
that grid from a ``Volume`` of any orientation and keeps its geometry, so that a box the network
returns in grid indices maps back to LPS millimetres and from there onto the source slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipelines.volume import Volume

#: HU given to grid voxels outside the source volume (air, as a scanner pads).
OUTSIDE_HU = -1024.0
#: Direction of RAS axes in LPS coordinates: x grows to the right (-L), y to the front (-P), z up.
_RAS_SIGNS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ModelGrid:
    """HU on the detector's grid: ``hu[x, y, z]``, voxel centres at integer indices."""

    hu: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    def xyz_to_lps(self, xyz: np.ndarray | Sequence[float]) -> np.ndarray:
        """LPS (mm) of continuous grid indices (x, y, z)."""
        lps: np.ndarray = np.asarray(xyz, dtype=np.float64) @ (self.direction * self.spacing).T + self.origin
        return lps

    def lps_to_xyz(self, lps: np.ndarray | Sequence[float]) -> np.ndarray:
        """Continuous grid indices (x, y, z) of LPS points."""
        xyz: np.ndarray = (np.asarray(lps, dtype=np.float64) - self.origin) @ self.direction / self.spacing
        return xyz


def ras_direction(direction: np.ndarray) -> np.ndarray:
    """The source axes reordered and flipped to point right, anterior and superior.

    Each output axis is the source axis closest to it, so an axial, coronal or sagittal series is
    only permuted and flipped; an oblique one keeps its obliquity.
    """
    result = np.zeros((3, 3))
    used: set[int] = set()
    for target in range(3):
        scores = [abs(direction[target, a]) if a not in used else -1.0 for a in range(3)]
        axis = int(np.argmax(scores))
        used.add(axis)
        result[:, target] = direction[:, axis] * np.sign(direction[target, axis]) * _RAS_SIGNS[target]
    return result


def to_model_grid(volume: Volume, spacing_mm: Sequence[float]) -> ModelGrid:
    """Linear resampling of the volume onto a RAS grid of ``spacing_mm`` covering all of it."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    direction = ras_direction(volume.direction)
    shape = np.array(volume.array.shape[::-1], dtype=np.float64)  # (i, j, k) sizes
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) * (shape - 1)
    lps = corners @ (volume.direction * np.asarray(volume.spacing)).T + volume.origin
    along = lps @ direction  # corner coordinates along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    size = [int(n) for n in np.floor((high - low) / spacing).astype(int) + 1]
    origin = direction @ low

    resampled = sitk.Resample(
        volume.to_sitk(), size, sitk.Transform(), sitk.sitkLinear, [float(o) for o in origin],
        [float(s) for s in spacing], [float(d) for d in direction.ravel()], OUTSIDE_HU, sitk.sitkFloat32,
    )
    hu = np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))
    return ModelGrid(hu=hu, origin=origin, spacing=spacing, direction=direction)


def scale_hu_window(hu: np.ndarray, intensity_range: Sequence[float]) -> np.ndarray:
    """HU clipped to the range and scaled to [0, 1], as MONAI's ScaleIntensityRanged(clip=True)."""
    low, high = (float(v) for v in intensity_range)
    scaled: np.ndarray = ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)
    return scaled
