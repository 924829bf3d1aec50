"""The lung parenchyma of a chest CT, apart from the airways and the mediastinum: where a nodule can be.

A generous candidate stage also finds the oesophagus and the liver dome, and a scorer that has
seen five patients sometimes believes them. A radiologist's rule: a lung nodule is surrounded by
lung. So a finding is reported when the aerated share of a ``SHELL_MM`` shell around it (its
**lung contact**) is at least ``MIN_LUNG_CONTACT``, which still keeps a lung mass invading the
mediastinum. Airways are not parenchyma: they are grown from a trachea seed by explosion-controlled
region growing (Hu et al., IEEE TMI 2001), walls included. Runs once per series at ``COARSE_MM``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipelines.nodule.lungs import inner_air
from pipelines.nodule.measure import Measurement
from pipelines.volume import Volume

#: Voxel size (mm) the volume is subsampled to, at least, in each axis.
COARSE_MM = 2.0
#: Thickness of the shell around a finding whose share of parenchyma is its lung contact: two
#: coarse voxels, thin enough to be what the finding touches, thick enough to cross a fissure.
SHELL_MM = 4.0
#: A finding is in the lung when at least this share of its shell is aerated parenchyma.
MIN_LUNG_CONTACT = 0.5
#: Thresholds (HU, on HU smoothed by ``AIRWAY_SMOOTHING_VOXELS``) tried in turn to grow the
#: airway tree, from pure air upwards; each step takes in more of the smaller bronchi.
AIRWAY_THRESHOLDS_HU = (-990.0, -960.0, -930.0, -900.0, -860.0, -800.0, -750.0, -700.0, -650.0, -600.0,
                        -550.0, -500.0)
AIRWAY_SMOOTHING_VOXELS = 0.7
#: The trachea, main and lobar bronchi hold 1-2 % of the lungs' air; a tree larger than this
#: has leaked into the parenchyma.
MAX_AIRWAY_FRACTION = 0.03
#: Airway walls (about 1-3 mm) are soft tissue beside parenchyma: they go with the lumen.
AIRWAY_WALL_MM = 3.0
#: The trachea on an axial slice: its lumen's area (mm^2, 15-30 mm wide), its largest extent
#: (mm), and how far its centre may lie from the middle of the lungs' left-right extent (mm).
TRACHEA_AREA_MM2 = (100.0, 700.0)
TRACHEA_MAX_EXTENT_MM = 35.0
TRACHEA_MAX_OFFSET_MM = 30.0


@dataclass(frozen=True)
class Parenchyma:
    """The aerated lung without its airways, on the subsampled grid of a source volume."""

    aerated: np.ndarray  # bool (k, j, i) on the subsampled grid
    airways: np.ndarray  # bool, the airway tree found (lumen and wall); empty when none was found
    stride: np.ndarray  # source voxels per subsampled voxel (k, j, i)
    spacing: np.ndarray  # mm per subsampled voxel (k, j, i)

    def lung_contact(self, measured: Measurement) -> float:
        """The share of a ``SHELL_MM`` shell around the finding's segmentation that is parenchyma."""
        mask = self._subsampled(measured)
        if not mask.any():
            return 0.0
        margin = int(np.ceil(SHELL_MM / self.spacing.min())) + 1
        low = np.maximum(np.argwhere(mask).min(axis=0) - margin, 0)
        high = np.minimum(np.argwhere(mask).max(axis=0) + margin + 1, mask.shape)
        crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        around = shell(mask[crop], self.spacing)
        return float(self.aerated[crop][around].mean()) if around.any() else 0.0

    def _subsampled(self, measured: Measurement) -> np.ndarray:
        """The finding's source-voxel mask on the subsampled grid: coarse voxel c stands for the
        source voxels c * stride up to the next one, and is in it when any of them is."""
        start = np.array([s.start for s in measured.window])
        index = (np.argwhere(measured.mask) + start) // self.stride
        index = index[np.all(index < self.aerated.shape, axis=1)]
        coarse = np.zeros(self.aerated.shape, dtype=bool)
        coarse[tuple(index.T)] = True
        return coarse


def shell(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The ``SHELL_MM`` shell around ``mask``, reaching at least the next voxel along each axis: on
    slices thicker than the shell (5-8 mm series) the slices above and below are what surrounds a
    finding there, and a shell of in-plane rings alone misses the lung over and under it."""
    reach = np.maximum(SHELL_MM, spacing)
    distance = ndi.distance_transform_edt(~mask, sampling=spacing * (SHELL_MM / reach))
    around: np.ndarray = (distance > 0) & (distance <= SHELL_MM + 1e-6)
    return around


def parenchyma(volume: Volume) -> Parenchyma:
    """The parenchyma of ``volume``: its inner air, subsampled, without the airway tree."""
    spacing_kji = np.asarray(volume.spacing, dtype=np.float64)[::-1]
    stride = np.maximum(1, np.round(COARSE_MM / spacing_kji)).astype(int)
    hu = volume.array[:: stride[0], :: stride[1], :: stride[2]]
    spacing = spacing_kji * stride
    air = inner_air(hu, slice_axis=0)
    walls = _with_walls(airway_tree(hu, air, spacing, superior_first=_superior_first(volume)), spacing)
    return Parenchyma(air & ~walls, walls, stride, spacing)


def _with_walls(tree: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The airway lumen grown by ``AIRWAY_WALL_MM`` (worked on the tree's bounding box only)."""
    if not tree.any():
        return tree
    margin = np.ceil(AIRWAY_WALL_MM / spacing).astype(int) + 1
    where = np.argwhere(tree)
    low = np.maximum(where.min(axis=0) - margin, 0)
    high = np.minimum(where.max(axis=0) + margin + 1, tree.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    walls = np.zeros_like(tree)
    walls[crop] = ndi.distance_transform_edt(~tree[crop], sampling=spacing) <= AIRWAY_WALL_MM
    return walls


def _superior_first(volume: Volume) -> bool:
    """Whether slice 0 is the most superior (head end) of the volume's slices."""
    ends = volume.kji_to_lps(np.array([[0.0, 0.0, 0.0], [volume.array.shape[0] - 1.0, 0.0, 0.0]]))
    return bool(ends[0, 2] > ends[1, 2])


def airway_tree(hu: np.ndarray, air: np.ndarray, spacing: np.ndarray, superior_first: bool) -> np.ndarray:
    """The trachea and the bronchi that a leak-free region growing reaches from it; empty when no
    trachea is found (a scan that starts below the carina) or the first step already leaks."""
    seed = trachea_seed(air, spacing, superior_first)
    tree = np.zeros(hu.shape, dtype=bool)
    if seed is None:
        return tree
    image = sitk.GetImageFromArray(ndi.gaussian_filter(hu.astype(np.float32), AIRWAY_SMOOTHING_VOXELS))
    most = MAX_AIRWAY_FRACTION * air.sum()
    for threshold in AIRWAY_THRESHOLDS_HU:
        grown = sitk.ConnectedThreshold(image, seedList=[(seed[2], seed[1], seed[0])], lower=-4000.0, upper=threshold)
        step = sitk.GetArrayFromImage(grown).astype(bool)
        if step.sum() > most:
            break
        tree = step
    return tree


def trachea_seed(air: np.ndarray, spacing: np.ndarray, superior_first: bool) -> tuple[int, int, int] | None:
    """A voxel (k, j, i) in the trachea: on the most superior slice that has one, the centre of a
    round air component of a trachea's size near the middle of the lungs' left-right extent."""
    columns = np.flatnonzero(air.any(axis=(0, 1)))
    if not len(columns):
        return None
    middle = (columns[0] + columns[-1]) / 2.0
    order = range(air.shape[0]) if superior_first else range(air.shape[0] - 1, -1, -1)
    for k in order:
        labels, count = ndi.label(air[k])
        for component in range(1, count + 1):
            points = np.argwhere(labels == component)
            if _is_trachea(points, spacing, middle):
                j, i = np.round(points.mean(axis=0)).astype(int)
                return k, int(j), int(i)
    return None


def _is_trachea(points: np.ndarray, spacing: np.ndarray, middle: float) -> bool:
    area = len(points) * spacing[1] * spacing[2]
    extent = (points.max(axis=0) - points.min(axis=0) + 1) * spacing[1:]
    offset = abs(points[:, 1].mean() - middle) * spacing[2]
    return bool(TRACHEA_AREA_MM2[0] <= area <= TRACHEA_AREA_MM2[1] and extent.max() < TRACHEA_MAX_EXTENT_MM
                and offset < TRACHEA_MAX_OFFSET_MM)
