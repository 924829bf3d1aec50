"""What ``nnunet-segmentation`` takes and reports (its summary), readable without torch or nnunetv2.

Its input roles are not fixed: they are whatever roles ``options.channels`` maps the folder's
``dataset.json`` channels to (``inputs_for``), so a study route names them in
``[routes.inputs.<role>]``; a folder with one channel and no mapping takes one series. The config
check reads the roles from here; whether every channel of the folder has a role is checked when
``radnode serve`` loads the folder before it listens (``pipelines.nnunet.folder``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.base import SERIES_ROLE, InputSpec, PipelineOptions, PipelineSummary

#: The config check's fallback when no options are known: the one-series form.
INPUTS: tuple[InputSpec, ...] = (InputSpec(SERIES_ROLE, description="the series of a one-channel nnU-Net model"),)

#: A code as config.toml writes it: [value, scheme, meaning], e.g. ["108369006", "SCT", "Neoplasm"].
CodeTriple = Annotated[tuple[str, str, str], Field(description="[code value, coding scheme, code meaning]")]


class LabelCoding(BaseModel):
    """How one ``dataset.json`` label is coded in the SEG and SR (CID 7150 category, 7151 type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: CodeTriple = ("49755003", "SCT", "Morphologically Abnormal Structure")
    type: CodeTriple


class Options(PipelineOptions):
    """``[pipelines.<name>] options`` of an nnU-Net folder."""

    #: dataset.json channel (its name, e.g. "T1c", or its index "0") -> the route role that feeds it
    channels: dict[str, Annotated[str, Field(min_length=1)]] = {}
    #: dataset.json label name -> its codes; labels not listed get a code from their name when it is
    #: a known one (tumor, edema, necrosis, enhancing tumor, ...), else Tissue
    labels: dict[str, LabelCoding] = {}
    #: the folds to ensemble, as nnUNetv2_predict -f; unset: every fold_N folder with a checkpoint
    folds: tuple[int | Literal["all"], ...] | None = None
    checkpoint: str = "checkpoint_final.pth"
    #: nnU-Net's sliding-window step (its default 0.5; 1 is faster and a little worse)
    tile_step_size: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: test-time mirroring on the axes the checkpoint allows (nnUNetv2_predict's default; false is
    #: its --disable_tta)
    mirroring: bool = True


def inputs_for(options: Options) -> tuple[InputSpec, ...]:
    """The roles routes must fill: each mapped role once, in the channels' order; none mapped: one series."""
    roles = list(dict.fromkeys(options.channels.values()))
    if roles == [SERIES_ROLE] or not roles:
        return INPUTS
    return tuple(InputSpec(role, description=f"nnU-Net channel(s) {', '.join(_fed_by(options, role))}")
                 for role in roles)


def _fed_by(options: Options, role: str) -> list[str]:
    return [channel for channel, mapped in options.channels.items() if mapped == role]


class NnUNetSummary(PipelineSummary):
    """A job of an nnU-Net folder: the folds ensembled and each label's volume."""

    folds: list[str]
    #: dataset.json channel name -> the role whose series fed it
    channels: dict[str, str]
    volumes_ml: dict[str, float]
