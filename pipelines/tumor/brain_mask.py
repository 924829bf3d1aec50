"""The brain mask as the post-processing rules read it, its depth map made once.

The ventricle rule (CSF deep under the brain's surface) and the dura rule (thin lesions near the
surface) both need each brain voxel's distance to the outside; one whole-volume map serves both,
made only when a rule first asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipelines.distance import inside_distance


@dataclass(frozen=True, eq=False)
class BrainMask:
    """The brain (boolean, k, j, i on the reference grid) and that grid's spacing (mm, k, j, i)."""

    inside: np.ndarray
    spacing_kji: tuple[float, ...]

    @cached_property
    def depth_mm(self) -> np.ndarray:
        """Per voxel, the distance (mm) to the nearest voxel outside the brain; 0 outside."""
        return inside_distance(self.inside, self.spacing_kji)
