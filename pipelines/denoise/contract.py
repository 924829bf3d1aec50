"""What ``ct-denoise`` takes: its input and its options, readable without torch.

The config check reads this module at start (``pipelines.registry.contract``), so an option the
pipeline cannot honour stops the node before a model is loaded.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipelines.base import SERIES_ROLE, InputSpec, PipelineOptions

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
