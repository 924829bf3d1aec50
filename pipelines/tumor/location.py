"""Where a brain lesion lies, as a radiologist names it: which hemisphere and lobe, or the posterior fossa.

Worked in patient coordinates (LPS) through the direction matrix, so any orientation gives the
axial answer. Hemisphere: the lesion's centre against the brain mask's left-right centre on its own
line (a turned head moves the midline with it); one with over ``CROSSING_SHARE`` on each side
crosses the midline and gets no side. Lobe: an approximation by position in the brain's bounding
box (``ap``, ``si``, ``lateral``), not a parcellation; the first rule that holds (brainstem,
cerebellum, occipital, temporal, frontal, else parietal) names it, thresholds read off the MNI-152
proportions (docs/tumor.md). Near a boundary it is a guess a reader should check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.writers.codes import AnatomicLocation

#: Half-width (mm) in y and z of the band through the lesion's centre whose brain voxels give the midline.
BAND_MM = 10.0
#: A lesion with more than this share of its voxels on each side of the midline crosses it.
CROSSING_SHARE = 0.25
BRAINSTEM_LATERAL = 0.2
BRAINSTEM_AP = (0.33, 0.52)
BRAINSTEM_BELOW_SI = 0.42
CEREBELLUM_BEHIND_AP = 0.5
#: the tentorium's height (``si``) at the midline, and how fast it falls to the sides and to the back
TENTORIUM_SI = 0.45
TENTORIUM_LATERAL_FALL = 0.3
TENTORIUM_BACK_FROM_AP = 0.6
TENTORIUM_BACK_FALL = 1.0
OCCIPITAL_BEHIND_AP = 0.8
TEMPORAL_BELOW_SI = 0.45
TEMPORAL_BEHIND_AP = 0.25
TEMPORAL_LATERAL = 0.35
FRONTAL_BEFORE_AP = 0.5


@dataclass(frozen=True)
class _Position:
    """A lesion centre in the brain's bounding box: shares from anterior, inferior and the midline."""

    ap: float
    si: float
    lateral: float


def brain_location(brain: sitk.Image, lesion: np.ndarray) -> AnatomicLocation:
    """Hemisphere and lobe of ``lesion`` by the rule of this module.

    ``brain`` is the brain mask (non-zero inside) and ``lesion`` a boolean mask on the same grid,
    in SimpleITK's array order (k, j, i): ``brain_location(brain, labels > 0)`` in the tumor pipeline.
    """
    brain_array = sitk.GetArrayViewFromImage(brain)
    if lesion.shape != brain_array.shape:
        raise ValueError(f"the lesion mask is {lesion.shape}, the brain {brain_array.shape}: they must share a grid")
    if not lesion.any():
        raise ValueError("the lesion mask is empty: nothing to place")
    brain_points = _patient_points(brain, brain_array != 0)
    lesion_points = _patient_points(brain, lesion.astype(bool))
    centre = lesion_points.mean(axis=0)
    midline, half_width = _midline(brain_points, centre)
    left_share = float(np.mean(lesion_points[:, 0] > midline))
    low, high = brain_points.min(axis=0), brain_points.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    position = _Position(ap=float((centre[1] - low[1]) / span[1]), si=float((centre[2] - low[2]) / span[2]),
                         lateral=float(abs(centre[0] - midline) / max(half_width, 1e-6)))
    lobe, site = _lobe(position)
    rule = (f"hemisphere: lesion centre vs the brain's midline on its left-right line ({left_share:.0%} of the lesion "
            f"on the left); lobe, approximate: by position in the brain's bounding box ({position.ap:.0%} back, "
            f"{position.si:.0%} up, {position.lateral:.0%} out)")
    crossing = min(left_share, 1 - left_share) > CROSSING_SHARE
    if site == codes.SCT.BrainStem:
        return AnatomicLocation("brainstem (posterior fossa, midline)", site, None, rule)
    if site == codes.SCT.Cerebellum and crossing:
        return AnatomicLocation("cerebellar vermis, crossing the midline (posterior fossa)", site, None, rule)
    if crossing:
        return AnatomicLocation(f"crossing the midline (corpus callosum), {lobe}", site, None, rule)
    side, laterality = ("left", codes.SCT.Left) if centre[0] > midline else ("right", codes.SCT.Right)
    fossa = " (posterior fossa)" if site == codes.SCT.Cerebellum else ""
    return AnatomicLocation(f"{side} {lobe}{fossa}", site, laterality, rule)


def _patient_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """LPS (mm) of the voxels of ``mask`` (array order k, j, i), one row per voxel."""
    ijk = np.argwhere(mask)[:, ::-1].astype(np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    points: np.ndarray = (ijk * np.asarray(image.GetSpacing())) @ direction.T + np.asarray(image.GetOrigin())
    return points


def _midline(brain_points: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Patient x of the brain's left-right centre on the line through ``centre``, and its half-width there."""
    near = np.all(np.abs(brain_points[:, 1:] - centre[1:]) <= BAND_MM, axis=1)
    band = brain_points[near, 0] if near.any() else brain_points[:, 0]
    return float(band.min() + band.max()) / 2, float(band.max() - band.min()) / 2


def _lobe(position: _Position) -> tuple[str, Code]:
    """The lobe (or the brainstem) by the module's first rule that holds."""
    if (position.lateral < BRAINSTEM_LATERAL and BRAINSTEM_AP[0] <= position.ap < BRAINSTEM_AP[1]
            and position.si < BRAINSTEM_BELOW_SI):
        return "brainstem", codes.SCT.BrainStem
    if position.ap >= CEREBELLUM_BEHIND_AP and position.si < _tentorium(position):
        return "cerebellum", codes.SCT.Cerebellum
    if position.ap > OCCIPITAL_BEHIND_AP:
        return "occipital lobe", codes.SCT.OccipitalLobe
    if position.si < TEMPORAL_BELOW_SI and position.ap >= TEMPORAL_BEHIND_AP and position.lateral >= TEMPORAL_LATERAL:
        return "temporal lobe", codes.SCT.TemporalLobe
    if position.ap < FRONTAL_BEFORE_AP:
        return "frontal lobe", codes.SCT.FrontalLobe
    return "parietal lobe", codes.SCT.ParietalLobe


def _tentorium(position: _Position) -> float:
    """The tentorium's height (``si``) above the lesion's centre: below it is the posterior fossa."""
    return min(TENTORIUM_SI - TENTORIUM_LATERAL_FALL * position.lateral,
               TENTORIUM_SI - TENTORIUM_BACK_FALL * max(position.ap - TENTORIUM_BACK_FROM_AP, 0.0))
