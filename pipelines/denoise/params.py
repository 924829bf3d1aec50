"""The parameters file of a ``ct-denoise`` model folder, readable without torch.

``model_folder.load_params`` checks a folder's ``params.toml`` (or ``params.json``) against
``DenoiseParams``, so a misspelt key (``restore_mean_sigma`` for ``restore_mean_sigma_mm``) is
refused naming the file and the key instead of leaving the default in force. ``inference``
documents what each key does.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipelines.model_folder import Interval, ModelParams, ParamsTable

#: Scale (mm) below which the model may change the image (``inference``, "Mean preservation").
RESTORE_MEAN_SIGMA_MM = 2.0


class Input(ParamsTable):
    """``[input]``: how HU become network units and back, and the context a tile needs."""

    #: HU range kept before scaling
    clip: Interval = (-1024.0, 3071.0)
    #: network units = (HU - offset) / scale
    offset: float = 0.0
    scale: Annotated[float, Field(gt=0)] = 1000.0
    #: pixels of context a tile needs: the receptive field's radius
    halo: Annotated[int, Field(ge=0)] = 40


class Output(ParamsTable):
    """``[output]``: the scale above which the input's values are kept (0: off)."""

    restore_mean_sigma_mm: Annotated[float, Field(ge=0)] = RESTORE_MEAN_SIGMA_MM


class Network(ParamsTable):
    """``[model]``: the ResidualDenoiser to rebuild for ``model.pt``; unset keys keep
    ``model.Architecture``'s defaults."""

    channels: Annotated[int, Field(gt=0)] | None = None
    layers: Annotated[int, Field(ge=2)] | None = None
    downscale: Annotated[int, Field(gt=0)] | None = None
    #: conditioning planes, one per kernel family (``kernels.FAMILIES``); 0: not conditioned
    families: Annotated[int, Field(ge=0)] | None = None


class FamilyWeights(ParamsTable):
    """``[family_weights]``: a kernel family's own weights, a model folder inside this one
    (``sharp = "sharp"``); a series of that family is denoised by them, every other series by
    this folder's own model."""

    sharp: str | None = None
    medium: str | None = None
    smooth: str | None = None


class DenoiseParams(ModelParams):
    """A denoising model folder's ``params.toml`` (written by ``training.denoise.train``)."""

    input: Input = Input()
    output: Output = Output()
    model: Network = Network()
    family_weights: FamilyWeights = FamilyWeights()
