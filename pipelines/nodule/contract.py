"""What ``nodule-detection`` takes (its input and options) and reports (its summary), readable
without torch: a Ray driver unpickles the summary without importing the model.

The config check reads this module at start (``pipelines.registry.contract``), so a route or an
option the pipeline cannot honour stops the node before a model is loaded.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipelines.base import SERIES_ROLE, InputSpec, PipelineOptions, PipelineSummary, SummaryRecord

INPUTS: tuple[InputSpec, ...] = (
    InputSpec(SERIES_ROLE, description="a chest CT image series in Hounsfield units"),
)


#: What "none detected" means with the shipped models, said in every report without findings and
#: on its summary image (the model card's validation and limits, in a reader's words).
COVERAGE = (
    "Validated on real lesions of 12-78 mm (7 of 8 found): solid nodules and masses of 12 mm and more; "
    "masses of 30 mm and more in the lung, against the chest wall or the mediastinum too, are also "
    "reported by a rule whatever the model's score (synthetic masses of 30-80 mm on slices of 1.25-8 mm: "
    "about 9 in 10 found; a mass beside the mediastinum or the aortic arch can still be missed). "
    "Not validated: solid nodules under 12 mm "
    "(synthetic, on patients the model never saw, at about one false positive per scan: 8-10 mm about "
    "6 in 10 found, 6 mm about 1 in 8, 4 mm none) and part-solid or ground-glass nodules of any size "
    "(10 mm part-solid about 1 in 4, ground glass 1 in 10 or fewer), which it can miss. "
    "AI result, not a diagnosis."
)
#: The same for a site's MONAI bundle, whose limits radnode does not know.
BUNDLE_COVERAGE = "What the model can find is stated by its bundle's own documentation. AI result, not a diagnosis."


class Options(PipelineOptions):
    """``[pipelines.nodule-detection] options``."""

    #: score at or above which a candidate is reported; None keeps the model folder's own
    #: (a MONAI bundle has none, so a bundle needs it)
    report_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    #: write a SEG with no segment when nothing is found (some viewers expect one per study)
    empty_seg: bool = False
    #: a series with less aerated lung is not a chest CT (not applicable)
    min_lung_ml: Annotated[float, Field(ge=0)] = 300.0
    #: a series shorter than this along the patient axis is not applicable
    min_extent_mm: Annotated[float, Field(ge=0)] = 60.0
    #: radnode's detector on slices thicker (or farther apart) than this is not applicable: 8 mm
    #: is the thickest series it was validated on (A0002); a MONAI bundle states its own limits
    max_slice_mm: Annotated[float, Field(gt=0)] = 8.0
    #: candidates farther than this outside the lungs are dropped
    lung_margin_mm: Annotated[float, Field(ge=0)] = 10.0


class FoundNodule(SummaryRecord):
    """A reported nodule, measured on the source slices."""

    score: float
    diameter_mm: float
    #: None when the nodule could not be segmented apart from what touches it
    volume_mm3: float | None
    #: reported by the mass safety net (``masses``), with its solid part's long axis
    mass: bool = False
    solid_diameter_mm: float | None = None


class FoundBox(SummaryRecord):
    """A MONAI bundle's box at or above the reporting threshold: the box is the finding."""

    score: float
    center_lps: list[float]
    box_mm: list[float]


class NoduleSummary(PipelineSummary):
    """A job of radnode's own detector (the scorer folder or the RetinaNet folder)."""

    nodules: list[FoundNodule]
    #: boxes the detector scored, reported or not
    candidates: int
    #: lesions at the reporting threshold left out because they lie outside the lung (jobs
    #: stored before the lung rule have none)
    outside_lung: int = 0
    #: aerated lung found in the series
    lung_ml: int
    #: the series' noise index (HU), and the in-plane smoothing (mm) that brought a sharp
    #: reconstruction to a standard kernel's noise before detection (0: none; None: stored
    #: before harmonization)
    noise_hu: float | None = None
    softened_mm: float = 0.0


class BundleNoduleSummary(PipelineSummary):
    """A job of a MONAI detection bundle (its name and version in ``bundle``)."""

    nodules: list[FoundBox]
    candidates: int
