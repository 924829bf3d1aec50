"""Is this series a brain MR? A route matched on headers can still hand the pipeline a spine, an
abdomen or a localizer, and a brain tumor model run on them reports nonsense with confidence.

Checks, each ending the job as "not applicable" with the reason a technologist can act on:

- the headers: a localizer (ImageType LOCALIZER, or a scout/survey/localizer series
  description); a Body Part Examined that is not the head;
- the image: the body in it is larger than a head (wider than ``MAX_HEAD_WIDTH_MM`` left to
  right, or longer than ``MAX_HEAD_EXTENT_MM`` along any axis: an abdomen, a whole spine);
- after brain extraction: less than ``MIN_BRAIN_ML`` of brain.
"""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.base import NotApplicable
from pipelines.components import component_sizes
from pipelines.volume import Volume

#: Body Part Examined values (DICOM PS3.16 Annex L and common scanner spellings) that hold a brain.
HEAD_PARTS = frozenset({"BRAIN", "HEAD", "SKULL", "HEADNECK", "HEAD_NECK", "HEAD NECK", "CEREBRUM", "CRANIUM"})
#: Series descriptions of planning scans.
LOCALIZER_WORDS = re.compile(r"(?i)\b(localizer|localiser|scout|survey|3-?plane|aahead_?scout)\b")
#: An adult head is about 140-170 mm wide; an abdomen or chest 280-400 mm.
MAX_HEAD_WIDTH_MM = 220.0
#: Head and neck together stay within a 256 mm field of view; a spine does not.
MAX_HEAD_EXTENT_MM = 300.0
#: Even a slab of a few thick slices through a tumor holds more brain than this (mL).
MIN_BRAIN_ML = 100.0


def check_brain_series(volume: Volume, name: str) -> None:
    """NotApplicable unless ``volume`` (the ``name`` series) can be a brain MR."""
    first = volume.sources[0]
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    description = str(first.get("SeriesDescription", ""))
    if "LOCALIZER" in image_type or LOCALIZER_WORDS.search(description):
        raise NotApplicable(f"the {name} series is a localizer (planning scan), not a diagnostic brain series")
    part = str(first.get("BodyPartExamined", "")).strip().upper()
    if part and part not in HEAD_PARTS:
        raise NotApplicable(f"the {name} series shows {part} (Body Part Examined), not a brain")
    width, extent = body_size_mm(volume.to_sitk())
    if width > MAX_HEAD_WIDTH_MM or extent > MAX_HEAD_EXTENT_MM:
        raise NotApplicable(
            f"the body in the {name} series is {width:.0f} mm wide and {extent:.0f} mm long at most, larger than "
            f"a head ({MAX_HEAD_WIDTH_MM:.0f} mm wide, {MAX_HEAD_EXTENT_MM:.0f} mm long): not a brain MR"
        )


def body_size_mm(image: sitk.Image) -> tuple[float, float]:
    """Left-right width and largest extent (mm, patient axes) of the largest foreground object."""
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)).astype(bool)
    components, count = ndimage.label(foreground)
    if count == 0:
        return 0.0, 0.0
    sizes = component_sizes(components, count)
    box = ndimage.find_objects(components)[int(np.argmax(sizes))]
    corners = [(x, y, z) for z in (box[0].start, box[0].stop - 1) for y in (box[1].start, box[1].stop - 1)
               for x in (box[2].start, box[2].stop - 1)]
    points = np.array([image.TransformIndexToPhysicalPoint(corner) for corner in corners])
    extents = points.max(axis=0) - points.min(axis=0)
    return float(extents[0]), float(extents.max())


def check_brain_volume(brain: sitk.Image, name: str) -> float:
    """The brain volume (mL) of a brain mask; NotApplicable when there is too little brain."""
    voxel_ml = float(np.prod(brain.GetSpacing())) / 1000.0
    brain_ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(brain))) * voxel_ml
    if brain_ml < MIN_BRAIN_ML:
        raise NotApplicable(
            f"only {brain_ml:.0f} mL of brain found in the {name} series (at least {MIN_BRAIN_ML:.0f} mL needed): "
            "not a brain MR, or it covers too little of the brain"
        )
    return brain_ml
