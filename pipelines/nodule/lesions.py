"""From measured detections to lesions a radiologist would count: one finding per lesion, and
only findings that lie in the lung.

- **One finding per lesion.** Detections whose segmentations touch in 3D (26-connected) are one
  lesion, measured once on their union, keeping the best score; but two masses of the safety net,
  each a lump the net judged whole, stay two (a tumour touching a hilar mass).
- **In the lung.** A finding is kept when most of what surrounds it is aerated lung (``parenchyma``);
  the rule judges the merged lesion, so a mass is judged whole.
- **Not a calcified granuloma.** A small finding denser than soft tissue is benign (``not_calcified``).
- **Not a spur of the skeleton.** A dense finding joined to bone beyond it (``not_skeletal``). docs/nodule.md has more.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipelines.nodule.detector import Detection
from pipelines.nodule.measure import Measurement, touch, union, voxel_window
from pipelines.nodule.parenchyma import MIN_LUNG_CONTACT, Parenchyma
from pipelines.volume import Volume

Found = tuple[Detection, Measurement]

#: A finding smaller than ``CALCIFIED_MM`` whose segment's mean is above ``CALCIFIED_HU`` is a
#: calcified granuloma (diffuse calcification: benign by the Fleischner Society's glossary); soft
#: tissue, even enhanced, stays below about 150 HU and its partial-volume rim lowers the mean further.
CALCIFIED_HU = 200.0
CALCIFIED_MM = 10.0
#: A dense finding whose dense voxels run on, through voxels above ``CALCIFIED_HU``, this far (mm)
#: beyond its segment's window is part of the skeleton; a calcified granuloma stands alone.
SKELETON_REACH_MM = 20.0


def merge_touching(volume: Volume, found: list[Found]) -> list[Found]:
    """``found`` (best score first) with every group of touching segmentations measured as one.

    A lesion takes each later detection that touches it, and a detection that touches two
    lesions joins them, but never two masses of the safety net (``_joinable``); each keeps the
    place of its best-scored member, so the order stays best first.
    """
    lesions: list[Found] = []
    for detection, measured in found:
        touching = _joinable(detection, [n for n, (_, lesion) in enumerate(lesions) if touch(lesion, measured)], lesions)
        if not touching:
            lesions.append((detection, measured))
            continue
        first, *others = touching
        joined_detection, joined = lesions[first]
        for extra_detection, extra in [(detection, measured)] + [lesions[n] for n in others]:
            joined_detection = _joined(joined_detection, extra_detection)
            joined = union(volume, joined, extra)
        lesions[first] = (joined_detection, joined)
        for n in reversed(others):
            del lesions[n]
    return lesions


def _joinable(detection: Detection, touching: list[int], lesions: list[Found]) -> list[int]:
    """The lesions among ``touching`` that ``detection`` may join: all of them, but at most one
    holding a mass of the safety net, counting ``detection`` itself (the best-scored one)."""
    joinable, holds_mass = [], detection.mass
    for n in touching:
        if lesions[n][0].mass:
            if holds_mass:
                continue
            holds_mass = True
        joinable.append(n)
    return joinable


def _joined(first: Detection, second: Detection) -> Detection:
    """The box around both boxes, with the better score."""
    corners = np.concatenate([first.lps_corners, second.lps_corners])
    low, high = corners.min(axis=0), corners.max(axis=0)
    box_corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    grid_box = np.concatenate([np.minimum(first.grid_box[:3], second.grid_box[:3]),
                               np.maximum(first.grid_box[3:], second.grid_box[3:])])
    return Detection(grid_box, box_corners, max(first.score, second.score), first.mass or second.mass)


def in_lung(lungs: Parenchyma, found: list[Found]) -> tuple[list[Found], int]:
    """The findings whose lung contact is at least ``MIN_LUNG_CONTACT`` or that hold a mass of the
    safety net (judged by its own rule, ``masses``), and how many were not."""
    kept = [(detection, measured) for detection, measured in found
            if detection.mass or lungs.lung_contact(measured) >= MIN_LUNG_CONTACT]
    return kept, len(found) - len(kept)


def not_calcified(found: list[Found]) -> list[Found]:
    """``found`` without small findings calcified throughout (``CALCIFIED_HU``); masses stay."""
    return [(detection, measured) for detection, measured in found
            if detection.mass or measured.diameter_mm >= CALCIFIED_MM or measured.mean_hu is None
            or measured.mean_hu <= CALCIFIED_HU]


def not_skeletal(volume: Volume, found: list[Found]) -> list[Found]:
    """``found`` without dense findings (mean above ``CALCIFIED_HU``) joined to the skeleton
    (``joined_to_bone``); masses stay, judged by their own rule (``masses``)."""
    return [(detection, measured) for detection, measured in found
            if detection.mass or measured.mean_hu is None or measured.mean_hu <= CALCIFIED_HU
            or not joined_to_bone(volume, measured)]


def joined_to_bone(volume: Volume, measured: Measurement) -> bool:
    """Whether the segment's voxels above ``CALCIFIED_HU`` connect (26-connected, through voxels
    above it) to dense tissue reaching ``SKELETON_REACH_MM`` beyond the segment's window."""
    spacing_kji = np.asarray(volume.spacing[::-1], dtype=float)
    reach = np.ceil(SKELETON_REACH_MM / spacing_kji).astype(int)
    start = np.array([s.start for s in measured.window])
    stop = np.array([s.stop for s in measured.window])
    low, high = np.maximum(start - reach, 0), np.minimum(stop + reach, volume.array.shape)
    dense = volume.array[voxel_window(low, high)] > CALCIFIED_HU
    seeds = np.zeros_like(dense)
    seeds[voxel_window(start - low, stop - low)] = measured.mask & dense[voxel_window(start - low, stop - low)]
    if not seeds.any():
        return False
    components, _ = ndi.label(dense, structure=np.ones((3, 3, 3), dtype=bool))
    joined = np.isin(components, np.unique(components[seeds]))
    faces = [joined.take(end, axis=axis) for axis in range(3) for end in (0, -1)]
    return any(face.any() for face in faces)
