"""Where to put a synthetic mass that lies against the chest wall or the mediastinum, in a real chest CT.

A lung cancer against the pleura is the case the lung-contact rule and the scorer missed (issue
64). ``site`` picks its centre from the series' own lungs, in patient coordinates (LPS: +x the
patient's left, +y posterior, +z superior), so the same call means the same place on any scan:

- ``"posterior"``, ``"lateral"``, ``"anterior"`` wall: on the slice at ``height`` of that lung's
  craniocaudal extent (0 base, 1 apex), the lung's outermost point in that direction near the
  lung's middle; the centre ``INSET`` of a radius back into the lung, so that the rest of the
  mass lies in the chest wall (a mass invading it, or pressed flat against it);
- ``"mediastinum"``: the lung's most medial point on that slice, in its posterior part
  (``POSTERIOR_QUANTILE``), the centre ``INSET`` of a radius laterally: at about 0.7 of the left
  lung's height, beside the aortic arch.

A mass placed so is a lung mass only while most of it lies in that lung: where the lungs meet
behind the trachea (the posterior junction line), the most medial point is the tip of a recess
and a mass there is a mediastinal one, which the pipeline must not report. The site then moves
down the lung (``MIN_LUNG_SHARE``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipelines.nodule.lungs import lung_mask
from pipelines.volume import Volume

#: The centre lies this share of the radius inside the lung from its border: the mass reaches
#: 0.3 of its radius into the chest wall or the mediastinum.
INSET = 0.7
#: Points of the lung within this distance (mm) of its middle line count as "near the middle".
BAND_MM = 10.0
#: A mediastinal mass is placed against the medial border behind the lung's middle, at this
#: quantile of its anteroposterior extent: the posterior upper lobe, beside the arch and the
#: descending aorta, where issue 64's cancer lay.
POSTERIOR_QUANTILE = 0.75
#: A slice's piece of the lung mask smaller than this (mm^2) is an airway (the trachea is 15-25
#: mm wide) or a sliver; the lungs' pieces are larger, apart from their apices.
MIN_PIECE_MM2 = 700.0
WALLS = ("posterior", "lateral", "anterior", "mediastinum")
#: At least this share of the mass's ball lies in the lung it is placed in, else the site moves
#: down that lung in steps of ``HEIGHT_STEP`` of its height, to ``LOWEST_HEIGHT`` at most.
MIN_LUNG_SHARE = 0.5
HEIGHT_STEP = 0.05
LOWEST_HEIGHT = 0.3


def lungs_of(volume: Volume) -> np.ndarray:
    """The lung mask of ``volume`` on its own grid (k, j, i), without the trachea and main bronchi:
    on each slice, only the pieces of at least ``MIN_PIECE_MM2``."""
    lungs = lung_mask(volume.array, slice_axis=0)
    smallest = MIN_PIECE_MM2 / (volume.spacing[0] * volume.spacing[1])
    for k, plane in enumerate(lungs):
        labels, count = ndi.label(plane)
        if count:
            sizes = np.bincount(labels.ravel())
            lungs[k] = (sizes >= smallest)[labels] & plane
    return lungs


def site(volume: Volume, lungs: np.ndarray, side: str, wall: str, height: float, radius_mm: float) -> np.ndarray:
    """The centre (continuous k, j, i) of a mass of ``radius_mm`` against ``wall`` of the ``side``
    ("left" or "right") lung at ``height`` of its extent, or lower down that lung where less than
    ``MIN_LUNG_SHARE`` of the mass would lie in it (at ``height`` still when no height passes)."""
    points = np.argwhere(lungs)
    lps = volume.kji_to_lps(points.astype(np.float64))
    midline = (lps[:, 0].min() + lps[:, 0].max()) / 2
    mine = lps[:, 0] > midline if side == "left" else lps[:, 0] <= midline
    own = np.zeros_like(lungs)
    own[tuple(points[mine].T)] = True
    heights = np.arange(height, LOWEST_HEIGHT - 1e-9, -HEIGHT_STEP)
    for level in heights:
        centre = _border_site(volume, lps[mine], side, wall, float(level), radius_mm)
        if lung_share(volume, own, centre, radius_mm) >= MIN_LUNG_SHARE:
            return centre
    return _border_site(volume, lps[mine], side, wall, height, radius_mm)


def lung_share(volume: Volume, lung: np.ndarray, centre: np.ndarray, radius_mm: float) -> float:
    """The share of the ball of ``radius_mm`` around ``centre`` (k, j, i) that lies in ``lung``."""
    step = np.asarray(volume.spacing[::-1])
    low = np.maximum(np.floor(centre - radius_mm / step).astype(int), 0)
    high = np.minimum(np.ceil(centre + radius_mm / step).astype(int) + 1, lung.shape)
    axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, step)]
    ball = sum(np.square(a).reshape([-1 if n == m else 1 for n in range(3)]) for m, a in enumerate(axes)) <= radius_mm ** 2
    inside = lung[tuple(slice(a, b) for a, b in zip(low, high))] & ball
    full = 4 / 3 * np.pi * radius_mm ** 3 / float(np.prod(step))
    return float(inside.sum() / full)


def _border_site(volume: Volume, lps: np.ndarray, side: str, wall: str, height: float, radius_mm: float) -> np.ndarray:
    """The centre (k, j, i) ``INSET`` of a radius inside the lung (its points ``lps``) from its
    border toward ``wall`` on the slice at ``height``."""
    z = lps[:, 2].min() + height * (lps[:, 2].max() - lps[:, 2].min())
    level = np.abs(lps[:, 2] - z) <= max(volume.spacing[2], 1.0) / 2 + 1e-3
    if not level.any():
        level = np.abs(lps[:, 2] - z) == np.abs(lps[:, 2] - z).min()
    plane = lps[level]
    outward = {"posterior": np.array([0.0, 1.0, 0.0]), "anterior": np.array([0.0, -1.0, 0.0]),
               "lateral": np.array([1.0 if side == "left" else -1.0, 0.0, 0.0])}
    outward["mediastinum"] = -outward["lateral"]
    direction = outward[wall]
    across = np.array([1.0, 0.0, 0.0]) if wall in ("posterior", "anterior") else np.array([0.0, 1.0, 0.0])
    middle = float(np.quantile(plane @ across, POSTERIOR_QUANTILE if wall == "mediastinum" else 0.5))
    band = plane[np.abs(plane @ across - middle) <= BAND_MM]
    border = band[np.argmax(band @ direction)]
    centre = border - direction * INSET * radius_mm
    kji: np.ndarray = volume.lps_to_kji(centre[None])[0]
    return kji
