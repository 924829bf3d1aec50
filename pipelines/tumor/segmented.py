"""What a loaded tumor model is handed and gives back, whichever kind it is: radnode's network
(``inference.Segmenter``) or a MONAI bundle run as published (``bundle_segmentation``).

The pipeline calls the ``TumorSegmenter`` protocol instead of asking which kind it holds; the
network's own steps (``pipeline.segment_network``) are handed in, since they live with the
pipeline's post-processing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from pipelines.timing import StageClock
from pipelines.tumor.quality import Quality
from pipelines.writers.identity import Algorithm


@dataclass(frozen=True)
class AlignedStudy:
    """The contrasts to segment, aligned on the reference, and what the result will name."""

    images: Mapping[str, sitk.Image]
    #: reference point -> contrast point, per role
    transforms: Mapping[str, sitk.Transform]
    reference_role: str
    #: the extracted brain, on the reference grid
    brain: sitk.Image
    clock: StageClock
    #: the algorithm parameters every result names (contrasts used, reference, brain volume)
    parameters: tuple[tuple[str, str], ...]
    model_name: str
    model_digest: str


@dataclass(frozen=True)
class Segmented:
    """BraTS labels on the reference grid, the algorithm that made them and what it says of them."""

    labels: np.ndarray
    algorithm: Algorithm
    model_name: str
    #: the case's self-consistency (none for a MONAI bundle)
    quality: Quality | None = None
    #: edema-only lesions left out as far from every lesion with a core, mL each
    isolated_edema_ml: tuple[float, ...] = ()


#: radnode's steps for its own network (``pipeline.segment_network``): (segmenter, study) -> result
NetworkSteps = Callable[[Any, AlignedStudy], Segmented]


class TumorSegmenter(Protocol):
    def require_contrasts(self, present: Sequence[str], left_out: Mapping[str, str] | None = None) -> None:
        """NotApplicable unless ``present`` holds every contrast this model must be given."""

    def segmentation(self, study: AlignedStudy, network: NetworkSteps) -> Segmented:
        """The study segmented: by the network's steps, or by the model's own."""
