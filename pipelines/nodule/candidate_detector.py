"""The candidate stage and its learned scorer as one detector: a CT on the 2 mm grid in, scored boxes out.

``candidates`` puts a box on every solid (and ground-glass) component and blob in the lungs (a mass against the
mediastinum is boxed whole by its component), ``scorer`` scores each from its two patches, and
the boxes come back best first in the shape the pipeline already reports (``Detection``), so
fusion of nested boxes, the lung check and the measurement stay the pipeline's.

A scorer model folder (written by ``train_scorer``)::

    scorer*.pt       state dicts of scorer.ScorerNet (the shipped folder: twenty, one per inner
                     scorer of train_scorer --report inner-mean)
    params.toml      [scorer] report_threshold = ...   (the model card's operating point)
                     [scorer] weights = ["scorer.pt", "scorer-lesions.pt"]   (optional: several
                     scorers whose probabilities are averaged; default ["scorer.pt"])
                     [candidates] ground_glass = true   (the scorer was trained with the
                     stage's ground-glass components; default false, the stage before them)
    training.json    every leave-one-patient-out fold and the shipped model's training
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.model_folder import ModelFolderError, read_params, require_folder
from pipelines.nodule import candidates, scorer
from pipelines.nodule.detector import Detection
from pipelines.nodule.grid import ModelGrid, to_model_grid
from pipelines.volume import Volume

#: The candidate stage + scorer shipped in the repository (``train_scorer``; model card).
DEFAULT_SCORER_DIR = Path(__file__).resolve().parent / "scorer_weights"
WEIGHTS = scorer.WEIGHT_FILES["candidates"]


def is_scorer_folder(folder: Path) -> bool:
    """A folder with scorer weights (``scorer.pt``, or ``scorer-<weighting>.pt`` from ``train_scorer``)."""
    return any(Path(folder).glob("scorer*.pt"))


@dataclass(frozen=True)
class ScorerSettings:
    """What decides what is reported besides the weights."""

    report_threshold: float
    #: Whether the candidate stage adds its ground-glass components (as the scorer's training did).
    ground_glass: bool = False


class CandidateDetector:
    """A loaded scorer folder on one device; ``detect(grid)`` gives every candidate, scored."""

    def __init__(self, nets: list[scorer.ScorerNet], settings: ScorerSettings, device: str) -> None:
        self.nets = [net.to(device).eval() for net in nets]
        self.settings = settings
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: str, report_threshold: float | None = None) -> CandidateDetector:
        folder = require_folder(folder)
        all_params = read_params(folder)
        params = all_params.get("scorer", {})
        try:
            threshold = float(params["report_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(f"{folder}: params.toml needs [scorer] report_threshold (a number): {exc}") from exc
        names = params.get("weights", [WEIGHTS])
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ModelFolderError(f"{folder}: [scorer] weights must be a list of weight file names, got {names!r}")
        ground_glass = all_params.get("candidates", {}).get("ground_glass", False)
        if not isinstance(ground_glass, bool):
            raise ModelFolderError(f"{folder}: [candidates] ground_glass must be true or false, got {ground_glass!r}")
        nets = [_load_net(folder / name) for name in names]
        if report_threshold is not None:
            threshold = float(report_threshold)
        return cls(nets, ScorerSettings(report_threshold=threshold, ground_glass=ground_glass), device)

    def grid(self, volume: Volume) -> ModelGrid:
        return to_model_grid(volume, (candidates.GRID_MM,) * 3)

    def detect(self, grid: ModelGrid, lungs: np.ndarray | None = None) -> list[Detection]:
        """Every candidate with its score, best first (the caller applies report_threshold)."""
        scan = candidates.find_on_grid(grid, lungs, ground_glass=self.settings.ground_glass)
        patches, scalars = scorer.inputs(scan, scan.candidates)
        scores = scorer.mean_score(self.nets, patches, scalars, self.device)
        found = [Detection(c.box, _corners_lps(scan, c), float(s)) for c, s in zip(scan.candidates, scores)]
        return sorted(found, key=lambda d: -d.score)


def _load_net(path: Path) -> scorer.ScorerNet:
    net = scorer.ScorerNet()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{path} is not a state dict of pipelines.nodule.scorer.ScorerNet: {exc}") from exc
    return net


def _corners_lps(scan: candidates.CandidateScan, candidate: candidates.Candidate) -> np.ndarray:
    low, high = candidate.box[:3], candidate.box[3:]
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return scan.grid.xyz_to_lps(corners)
