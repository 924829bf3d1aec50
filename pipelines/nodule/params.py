"""The parameters files of ``nodule-detection``'s two kinds of model folder, readable without torch.

A RetinaNet folder (``detector``) and a scorer folder (``candidate_detector``) each have their own
``params.toml``; ``model_folder.load_params`` checks a folder's file against its model here, so a
misspelt key (``report_treshold``) is refused naming the file and the key instead of leaving the
default in force. A key left out of an optional table keeps the code's default (``Settings``,
``network.Architecture``), which is why those tables' keys are None until the file sets them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from pipelines.model_folder import Interval, ModelParams, ParamsTable, Switch

Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]


class Preprocessing(ParamsTable):
    """``[preprocessing]``: the grid the network sees and the HU window scaled to [0, 1]."""

    #: x, y, z of the RAS grid, mm
    spacing_mm: tuple[Positive, Positive, Positive]
    intensity_range: Interval


class Network(ParamsTable):
    """``[network]``: the RetinaNet to rebuild for ``model.pt`` (``network.Architecture``)."""

    block_inplanes: list[Count] | None = None
    layers: list[Count] | None = None
    conv1_t_size: list[Count] | None = None
    conv1_t_stride: list[Count] | None = None
    returned_layers: list[Count] | None = None
    fpn_channels: Count | None = None
    num_anchors: Count | None = None
    num_classes: Count | None = None


class Anchors(ParamsTable):
    """``[anchors]``: one feature-map scale per FPN level, anchor shapes in voxels (x, y, z)."""

    feature_map_scales: tuple[Count, ...] | None = None
    base_anchor_shapes: tuple[tuple[Count, Count, Count], ...] | None = None


class Inference(ParamsTable):
    """``[inference]``: the sliding window, the box selector and the reporting threshold."""

    roi_size: tuple[Count, Count, Count] | None = None
    overlap: Annotated[float, Field(ge=0, lt=1)] | None = None
    score_threshold: Share | None = None
    nms_threshold: Share | None = None
    detections_per_image: Count | None = None
    report_threshold: Share | None = None


class DetectorParams(ModelParams):
    """A RetinaNet model folder's ``params.toml`` (written by ``training.nodule.train``)."""

    preprocessing: Preprocessing
    network: Network = Network()
    anchors: Anchors = Anchors()
    inference: Inference = Inference()


def _names(value: Any, key: str) -> Any:
    """A non-empty list of file names: a single name is a common slip worth naming."""
    if not (isinstance(value, list) and value and all(isinstance(name, str) for name in value)):
        raise ValueError(f"{key} must be a list of weight file names, got {value!r}")
    return value


class Scorer(ParamsTable):
    """``[scorer]``: the operating point and the scorers whose probabilities are averaged."""

    #: the model card's operating point: a candidate at or above it is reported
    report_threshold: Share
    #: None: the one file ``scorer.WEIGHT_FILES["candidates"]``
    weights: list[str] | None = None

    @field_validator("weights", mode="before")
    @classmethod
    def _weight_names(cls, value: Any) -> Any:
        return _names(value, "weights")


class Candidates(ParamsTable):
    """``[candidates]``: the candidate stage the scorer was trained with."""

    #: add the ground-glass components (the stage before them did not)
    ground_glass: Switch = False


class ScorerParams(ModelParams):
    """A scorer model folder's ``params.toml`` (written by ``training.nodule.train_scorer``)."""

    scorer: Scorer
    candidates: Candidates = Candidates()
