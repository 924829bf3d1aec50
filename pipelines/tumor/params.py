"""The parameters file of a ``tumor-segmentation`` model folder, readable without torch.

``model_folder.load_params`` checks a folder's ``params.toml`` (or ``params.json``) against
``TumorParams``, so a misspelt key (``threshhold``) is refused naming the file and the key instead
of leaving the default in force. ``inference`` documents what each key does, ``model_set`` the
``[[reduced]]`` and ``[[validated]]`` tables.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipelines.model_folder import ModelParams, ParamsTable, Switch
from pipelines.tumor.contrasts import CHANNELS

#: Orientation of the arrays radnode builds: axis 0 grows to Superior, 1 to Posterior, 2 to Left.
NATIVE_AXCODES = "SPL"

Size = Annotated[int, Field(gt=0)]


def _three_thresholds(value: Any) -> Any:
    """One threshold for all three outputs, or one each (TC, WT, ET)."""
    return [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Input(ParamsTable):
    """``[input]``: the grid and orientation the network reads, and where its outputs become labels."""

    #: mm, the isotropic grid the network reads
    spacing: Annotated[float, Field(gt=0)] = 2.0
    #: the order radnode feeds; a folder may say so, but no other order can be fed
    channels: list[str] = list(CHANNELS)
    #: array axes as MONAI/nibabel orientation codes
    axcodes: str = NATIVE_AXCODES
    #: sliding-window size, voxels
    roi: tuple[Size, Size, Size] = (96, 96, 96)
    #: on the sigmoid outputs, TC, WT, ET; one number in the file stands for all three
    threshold: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @field_validator("channels")
    @classmethod
    def _radnode_order(cls, value: list[str]) -> list[str]:
        if value != list(CHANNELS):
            raise ValueError(f"{value}: radnode feeds {list(CHANNELS)} in that order")
        return value

    @field_validator("threshold", mode="before")
    @classmethod
    def _one_or_three(cls, value: Any) -> Any:
        return _three_thresholds(value)

    @field_validator("threshold")
    @classmethod
    def _between_0_and_1(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 < t < 1 for t in value):
            raise ValueError(f"each threshold must lie between 0 and 1, got {list(value)}")
        return value


class Output(ParamsTable):
    """``[output]``: the post-processing the model's author asks for (``preprocess``)."""

    #: drop whole-tumor components without a core voxel when T1c is present
    require_core: Switch = False
    #: what the core encloses is necrosis
    fill_core: Switch = False


class Network(ParamsTable):
    """``[model]``: the SegResNet to rebuild for ``model.pt``; unset keys keep
    ``model.Architecture``'s defaults."""

    init_filters: Size | None = None
    blocks_down: list[Size] | None = None
    blocks_up: list[Size] | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None


class Reduced(ParamsTable):
    """One ``[[reduced]]`` table: the model folder, inside this one, for an exact contrast set."""

    contrasts: list[str]
    folder: str

    @model_validator(mode="before")
    @classmethod
    def _both_keys(cls, value: Any) -> Any:
        if not (isinstance(value, dict) and isinstance(value.get("folder"), str)
                and isinstance(value.get("contrasts"), list)):
            raise ValueError('each [[reduced]] table needs contrasts = [...] and folder = "..."')
        return value

    @field_validator("contrasts")
    @classmethod
    def _known_contrasts(cls, value: list[str]) -> list[str]:
        if set(value) - set(CHANNELS) or not set(value) & {"t1c", "flair"}:
            raise ValueError(f"{sorted(set(value))} must be among {list(CHANNELS)} and include T1c or FLAIR")
        return value


class Validated(ParamsTable):
    """One ``[[validated]]`` table: what this folder's model scored, held out, on an exact contrast set.

    The number is the median tumor-core Dice over scans of patients the model never saw; a set
    without a table counts as never measured. Retraining or recalibrating the model voids it
    (``training.tumor.train.write_params`` does not carry these tables over).
    """

    contrasts: list[str]
    #: median held-out tumor-core (TC) Dice
    dice: Annotated[float, Field(ge=0, le=1)]
    #: how many held-out scans the median is over
    scans: Size
    #: which scans those were (collection, patients, how they were held out)
    data: Annotated[str, Field(min_length=1)]

    @field_validator("contrasts")
    @classmethod
    def _known_contrasts(cls, value: list[str]) -> list[str]:
        if not value or set(value) - set(CHANNELS):
            raise ValueError(f"{sorted(set(value))} must be among {list(CHANNELS)}")
        return value


class Ensemble(ParamsTable):
    """``[ensemble]``: member folders inside this one whose sigmoid outputs are averaged."""

    members: list[str]

    @field_validator("members", mode="before")
    @classmethod
    def _member_names(cls, value: Any) -> Any:
        if not (isinstance(value, list) and value and all(isinstance(name, str) for name in value)):
            raise ValueError(f"members must be a list of member folder names, got {value!r}")
        return value


class TumorParams(ModelParams):
    """A tumor model folder's ``params.toml`` (written by ``training.tumor.train`` and ``training.tumor.fit``)."""

    input: Input = Input()
    output: Output = Output()
    model: Network = Network()
    reduced: list[Reduced] = []
    validated: list[Validated] = []
    ensemble: Ensemble | None = None

    @field_validator("reduced", "validated")
    @classmethod
    def _each_set_once(cls, value: list[Reduced] | list[Validated], info: ValidationInfo) -> list[Any]:
        seen: set[frozenset[str]] = set()
        for entry in value:
            contrasts = frozenset(entry.contrasts)
            if contrasts in seen:
                raise ValueError(f"[[{info.field_name}]] names contrasts {sorted(contrasts)} twice")
            seen.add(contrasts)
        return value
