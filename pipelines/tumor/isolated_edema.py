"""No "edema" far from every tumor: an isolated FLAIR-bright region is not peritumoral edema.

Vasogenic edema spreads from a tumor and stays continuous with it; an "edema" region with no core,
separated from every cored lesion by normal tissue, is most often a non-specific white-matter
hyperintensity the model has no label for (issue #65). With T1c present and a cored lesion found,
an edema-only lesion more than ``GAP_MM`` from every cored lesion is not reported; with no cored
lesion nothing is dropped (it may be a non-enhancing tumor). ``GAP_MM`` exceeds one missed 5-6 mm
clinical slice or the fading rim where a tumor's own edema splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

GAP_MM = 10.0
CORE_LABELS = (1, 4)


@dataclass(frozen=True)
class Cleared:
    """Labels without the isolated edema, and the volume (mL) of each lesion left out, largest first."""

    labels: np.ndarray
    dropped_ml: tuple[float, ...]


def clear_isolated_edema(labels: np.ndarray, spacing_kji: tuple[float, ...]) -> Cleared:
    """``labels`` without the edema-only lesions farther than ``GAP_MM`` from every lesion with a core."""
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    cored_ids = np.unique(components[np.isin(labels, CORE_LABELS)])
    cored_ids = cored_ids[cored_ids > 0]
    if count == 0 or cored_ids.size == 0 or cored_ids.size == count:
        return Cleared(labels, ())
    cored = np.isin(components, cored_ids)
    reach = tuple(int(np.ceil(GAP_MM / step)) for step in spacing_kji)
    isolated = [lesion for lesion, box in enumerate(ndimage.find_objects(components), start=1)
                if box is not None and lesion not in cored_ids
                and _gap_mm(components, cored, lesion, box, reach, spacing_kji) > GAP_MM]
    if not isolated:
        return Cleared(labels, ())
    dropped = np.isin(components, isolated)
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    sizes = np.bincount(components.ravel(), minlength=count + 1)[isolated] * voxel_ml
    return Cleared(np.where(dropped, 0, labels).astype(labels.dtype),
                   tuple(sorted((round(float(size), 2) for size in sizes), reverse=True)))


def _gap_mm(components: np.ndarray, cored: np.ndarray, lesion: int, box: tuple[slice, ...],
            reach: tuple[int, ...], spacing_kji: tuple[float, ...]) -> float:
    """The distance from a lesion to the nearest cored voxel, exact up to ``GAP_MM`` (inf beyond).

    Only the lesion's box widened by ``GAP_MM`` is searched: a whole-brain distance map costs seconds.
    """
    window = tuple(slice(max(s.start - r, 0), s.stop + r) for s, r in zip(box, reach))
    near = cored[window]
    if not near.any():
        return float("inf")
    gap = ndimage.distance_transform_edt(~near, sampling=spacing_kji)
    return float(gap[components[window] == lesion].min())
