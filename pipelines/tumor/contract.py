"""What ``tumor-segmentation`` takes (input roles, options) and reports (its summary), without torch.

The config check reads this module at start (``pipelines.registry.contract``), so a route whose
roles the pipeline does not know (``t1ce`` for ``t1c``) or an option it cannot honour stops the
node before a model is loaded, instead of ending as "not applicable" jobs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipelines.base import InputSpec, PipelineOptions, PipelineSummary
from pipelines.tumor.contrasts import DESCRIPTIONS, REFERENCE_ORDER

INPUTS: tuple[InputSpec, ...] = (
    InputSpec("t1c", required=True, description=DESCRIPTIONS["t1c"]),
    InputSpec("flair", required=False, description=DESCRIPTIONS["flair"] + " (alone enough without T1c)"),
    InputSpec("t2", required=False, description=DESCRIPTIONS["t2"]),
    InputSpec("t1", required=False, description=DESCRIPTIONS["t1"]),
)

#: Smallest tumor reported (mL): the bound on false-positive volume in a healthy brain; a glioma
#: this pipeline is for is larger, so smaller specks are not reported.
MIN_TUMOR_ML = 1.0

#: Median held-out tumor-core Dice below which an input set's volumes are not sent as measurements.
MIN_VALIDATED_DICE = 0.6

#: What "none detected" means with the shipped models (the model card's limits in a reader's words).
COVERAGE = (
    "The model segments gliomas (enhancing tumor, necrosis, edema); it is not validated on metastases "
    "or on tumors under {min_ml:g} mL, and on T1c alone it is not reliable. AI result, not a diagnosis."
)

Contrast = Literal["t1c", "t1", "t2", "flair"]


class Options(PipelineOptions):
    """``[pipelines.tumor-segmentation] options``."""

    #: reference contrast, in order of preference: the first present gives the results' grid
    reference: Annotated[tuple[Contrast, ...], Field(min_length=1)] = REFERENCE_ORDER
    #: smallest connected tumor reported (mL); 0 reports every voxel
    min_tumor_ml: Annotated[float, Field(ge=0)] = MIN_TUMOR_ML
    #: an input set whose declared held-out median TC Dice is below this is not measured (``validation``)
    min_validated_dice: Annotated[float, Field(ge=0, le=1)] = MIN_VALIDATED_DICE
    #: send results on inputs outside the validated ones anyway, marked UNVALIDATED on every object
    deliver_unvalidated: bool = False


class TumorSummary(PipelineSummary):
    """A brain study's segmentation; ``model`` names which model of the folder served it."""

    #: the contrasts segmented, by display name ("T1c"), and those left out with why
    contrasts_used: list[str]
    left_out: dict[str, str]
    #: the contrast whose grid the others were put on
    reference: str
    brain_ml: float
    #: per sub-region (``SubRegion.tracking_id``)
    volumes_ml: dict[str, float]
    tumor_found: bool
    #: per contrast (role): the measured quality of its registration, or that it shares the grid
    registration: dict[str, dict[str, bool | float | str]]
    #: whether the contrasts segmented are validated inputs ("validated", "unvalidated", "not-measured")
    validation: str = "validated"
    #: the reader's sentence when they are not (``validation.choose_inputs``)
    validation_note: str = ""
    #: the case's self-consistency (``quality``; none for a MONAI bundle or when nothing ran)
    #: and whether it is under the threshold
    self_consistency: float | None = None
    low_confidence: bool = False
    #: edema-only lesions not reported as tumor, far from every lesion with a core (``isolated_edema``), mL each
    isolated_edema_ml: list[float] = []
