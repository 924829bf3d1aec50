"""Load a nodule detection model folder once, and turn a CT volume into scored boxes in LPS.

A radnode model folder (``pipelines.model_folder``): ``model.pt`` (state dict of
``network.build_retinanet``) or ``model.ts`` (TorchScript RetinaNet network), plus ``params.toml``
with ``[preprocessing]``, ``[network]``, ``[anchors]`` and ``[inference]`` tables (docs/nodule.md
shows one). Every key is checked (``params.DetectorParams``): a misspelt one is refused, named.
A MONAI bundle is not read here: it runs as published, see ``bundle_detection``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

from pipelines.model_folder import ModelFolderError, is_monai_bundle, load_network, load_params, require_folder
from pipelines.nodule.grid import ModelGrid, scale_hu_window, to_model_grid
from pipelines.nodule.network import Architecture, anchor_scales, build_retinanet, size_divisible
from pipelines.nodule.params import DetectorParams
from pipelines.precision import autocast
from pipelines.volume import Volume

#: The weights trained by ``training.nodule.train``, shipped in the repository.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights"
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything besides the weights that decides what the detector reports."""

    spacing_mm: tuple[float, float, float] = (1.25, 1.25, 2.5)
    intensity_range: tuple[float, float] = (-1024.0, 300.0)
    feature_map_scales: tuple[int, ...] = (1, 2, 4)
    base_anchor_shapes: tuple[tuple[int, int, int], ...] = ((4, 4, 2), (7, 7, 4), (12, 12, 6))
    roi_size: tuple[int, int, int] = (400, 400, 224)
    overlap: float = 0.25
    score_threshold: float = 0.02
    nms_threshold: float = 0.22
    detections_per_image: int = 100
    report_threshold: float = 0.5
    #: Input size multiple of the network; TorchScript networks may not carry it as an attribute.
    size_divisible: tuple[int, int, int] = (16, 16, 8)

    @classmethod
    def for_architecture(cls, arch: Architecture) -> Settings:
        """Defaults with one anchor level per FPN level of ``arch`` and a sliding window that is a
        multiple of its input size multiple (MONAI's anchor strides are window // feature map)."""
        divisible = size_divisible(arch)
        return cls(
            feature_map_scales=tuple(anchor_scales(arch)),
            size_divisible=_three(int, divisible),
            roi_size=_three(int, (-(-r // d) * d for r, d in zip(cls.roi_size, divisible))),
        )

    def to_params(self, arch: Architecture) -> dict[str, Any]:
        """The params.toml tables of a radnode model folder."""
        return {
            "preprocessing": {"spacing_mm": list(self.spacing_mm), "intensity_range": list(self.intensity_range)},
            "network": {f.name: getattr(arch, f.name) for f in fields(arch)},
            "anchors": {
                "feature_map_scales": list(self.feature_map_scales),
                "base_anchor_shapes": [list(s) for s in self.base_anchor_shapes],
            },
            "inference": {
                "roi_size": list(self.roi_size), "overlap": self.overlap,
                "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
                "detections_per_image": self.detections_per_image,
                "report_threshold": self.report_threshold,
            },
        }


@dataclass(frozen=True)
class Detection:
    """One box: corners in the grid's (x, y, z) indices (voxel centres) and in LPS, and a score."""

    grid_box: np.ndarray   # (6,) x0 y0 z0 x1 y1 z1
    lps_corners: np.ndarray  # (8, 3)
    score: float
    #: found by the mass safety net (``masses``): reported whatever the score
    mass: bool = False

    @property
    def center_lps(self) -> np.ndarray:
        center: np.ndarray = self.lps_corners.mean(axis=0)
        return center


class Thresholded(Protocol):
    @property
    def report_threshold(self) -> float: ...


class Detector(Protocol):
    """A loaded detector folder as the pipeline uses it, whichever kind (the scorer folder's
    ``CandidateDetector``, the RetinaNet ``NoduleDetector``): its grid, then scored boxes."""

    @property
    def settings(self) -> Thresholded: ...

    def grid(self, volume: Volume) -> ModelGrid: ...

    def detect(self, grid: ModelGrid, lungs: np.ndarray | None = None) -> list[Detection]:
        """Every box above the candidate threshold, best first; ``lungs`` (on the grid) where the
        detector looks for candidates (the caller applies report_threshold)."""
        ...


def make_detector(network: torch.nn.Module, settings: Settings) -> RetinaNetDetector:
    """MONAI's RetinaNetDetector around ``network`` with the folder's anchors and thresholds."""
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=list(settings.feature_map_scales),
        base_anchor_shapes=[list(s) for s in settings.base_anchor_shapes],
    )
    detector = RetinaNetDetector(
        network=network, anchor_generator=anchors, spatial_dims=3, num_classes=1,
        size_divisible=list(settings.size_divisible), debug=False,
    )
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=settings.score_threshold,
        topk_candidates_per_level=1000,
        nms_thresh=settings.nms_threshold,
        detections_per_img=settings.detections_per_image,
    )
    detector.set_sliding_window_inferer(
        roi_size=list(settings.roi_size), overlap=settings.overlap, sw_batch_size=1, mode="constant"
    )
    return detector


class NoduleDetector:
    """A loaded model folder on one device: ``detect(volume)`` gives scored boxes."""

    def __init__(self, detector: RetinaNetDetector, settings: Settings, device: str) -> None:
        self.detector = detector.eval()
        self.settings = settings
        self.device = device
        self.cuda = device.startswith("cuda")

    @classmethod
    def load(cls, folder: Path, device: str, report_threshold: float | None = None) -> NoduleDetector:
        folder = require_folder(folder)
        if is_monai_bundle(folder):
            raise ModelFolderError(f"{folder} is a MONAI bundle: it runs through pipelines.nodule.bundle_detection")
        network, settings = _from_radnode_folder(folder)
        if report_threshold is not None:
            settings = dataclasses.replace(settings, report_threshold=float(report_threshold))
        network = network.to(device).eval()
        return cls(make_detector(network, settings), settings, device)

    def grid(self, volume: Volume) -> ModelGrid:
        return to_model_grid(volume, self.settings.spacing_mm)

    def detect(self, grid: ModelGrid, lungs: np.ndarray | None = None) -> list[Detection]:
        """All boxes above the candidate threshold, best first (the caller applies report_threshold);
        the network reads the whole grid, so ``lungs`` does not narrow it."""
        image = torch.from_numpy(scale_hu_window(grid.hu, self.settings.intensity_range))[None].to(self.device)
        # One forward pass when the grid fits a window (a whole chest on CPU); tiles otherwise.
        padded = [int(np.ceil(n / d) * d) for n, d in zip(image.shape[1:], self.detector.size_divisible)]
        tiled = any(p > r for p, r in zip(padded, self.settings.roi_size))
        with torch.inference_mode(), autocast(self.cuda):
            result = self.detector([image], use_inferer=tiled)[0]
        boxes = result["box"].float().cpu().numpy()
        scores = result["label_scores"].float().cpu().numpy()
        order = np.argsort(-scores)
        return [Detection(boxes[n], _corners_lps(grid, boxes[n]), float(scores[n])) for n in order]


def _corners_lps(grid: ModelGrid, box: np.ndarray) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (box[0], box[3]) for y in (box[1], box[4]) for z in (box[2], box[5])])
    return grid.xyz_to_lps(corners)


def _from_radnode_folder(folder: Path) -> tuple[torch.nn.Module, Settings]:
    params = load_params(folder, DetectorParams)
    network_keys = params.network.given()
    settings = Settings(
        spacing_mm=params.preprocessing.spacing_mm,
        intensity_range=params.preprocessing.intensity_range,
        size_divisible=_three(int, size_divisible(Architecture(**network_keys))),
        **params.anchors.given(),
        **params.inference.given(),
    )
    network = load_network(folder, lambda: build_retinanet(**network_keys), "the reference RetinaNet ([network])")
    return network, settings


def _three(kind: Callable[[Any], T], values: Iterable[Any]) -> tuple[T, T, T]:
    """Three values of ``kind``, one per axis; any other count is a ValueError."""
    a, b, c = (kind(v) for v in values)
    return a, b, c
