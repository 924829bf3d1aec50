"""What ``ct-denoise`` takes (its input and options) and reports (its summary), readable without torch.

The config check reads this module at start (``pipelines.registry.contract``), so an option the
pipeline cannot honour stops the node before a model is loaded.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipelines.base import SERIES_ROLE, InputSpec, PipelineOptions, PipelineSummary

INPUTS: tuple[InputSpec, ...] = (
    InputSpec(SERIES_ROLE, description="a CT image series in Hounsfield units"),
)


class Options(PipelineOptions):
    """``[pipelines.ct-denoise] options``."""

    #: at most this many pixels per forward pass (bounds memory); None: a GPU or a CPU default
    batch_pixels: Annotated[int, Field(gt=0)] | None = None
    #: float16 on a GPU, bfloat16 on a CPU with native bfloat16 (AVX512-BF16, AMX); false: float32
    #: everywhere (both measured by the "bfloat16 on a CPU" rule of training/denoise/LOG.md,
    #: "Acceptance rules for the quality and bias targets")
    half_precision: bool = True
    #: how much of the model's change is applied, 0-1: the result is input + strength x (denoised -
    #: input); below 1 a site trades noise for fidelity to the input (the model card's table says
    #: what each setting costs in low-contrast detectability and gains in noise)
    strength: Annotated[float, Field(ge=0, le=1)] = 1.0


class DenoiseSummary(PipelineSummary):
    """A denoised series: how many slices, and how much the model changed them on average."""

    slices: int
    #: mean |denoised - source| in HU over the whole series: near the noise level, or the model
    #: changed anatomy
    mean_abs_change_hu: float
    #: the kernel family the model was told (smooth, medium, sharp) and where it came from
    #: ("ConvolutionKernel", "measured noise", or "default" when neither could tell)
    kernel_family: str
    kernel_family_source: str
    #: the family the ConvolutionKernel names when the series' noise overruled it (it read sharp)
    kernel_family_named: str | None = None
    #: the model folder's sub-folder whose weights ran: the family's own, or "." for the folder's
    weights: str
    #: the share of the model's change applied (``options.strength``)
    strength: float
