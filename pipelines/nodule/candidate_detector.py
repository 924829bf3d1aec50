"""The candidate stage and its learned scorer as one detector: a CT on the 2 mm grid in, scored boxes out.

``candidates`` boxes every solid (and ground-glass) component and blob in the lungs, ``scorer``
scores each from its two patches, and the boxes come back best first as ``Detection``, so fusion,
the lung check and measurement stay the pipeline's. A scorer folder (``train_scorer`` writes it)
holds ``scorer*.pt`` state dicts, ``params.toml`` (``[scorer] report_threshold``, ``weights`` to
average, ``[candidates] ground_glass``; every key checked, ``params.ScorerParams``) and
``training.json``; docs/nodule.md lays it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.model_folder import ModelFolderError, load_params, require_folder
from pipelines.nodule import candidates, scorer
from pipelines.nodule.detector import Detection
from pipelines.nodule.grid import ModelGrid, to_model_grid
from pipelines.nodule.params import ScorerParams
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
        self.nets = [scorer.frozen(net.to(device)) for net in nets]
        self.settings = settings
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: str, report_threshold: float | None = None) -> CandidateDetector:
        folder = require_folder(folder)
        params = load_params(folder, ScorerParams)
        nets = [_load_net(folder / name) for name in params.scorer.weights or [WEIGHTS]]
        threshold = params.scorer.report_threshold if report_threshold is None else float(report_threshold)
        return cls(nets, ScorerSettings(report_threshold=threshold, ground_glass=params.candidates.ground_glass),
                   device)

    def grid(self, volume: Volume) -> ModelGrid:
        return to_model_grid(volume, (candidates.GRID_MM,) * 3)

    def detect(self, grid: ModelGrid, lungs: np.ndarray | None = None) -> list[Detection]:
        """Every candidate with its score, best first (the caller applies report_threshold)."""
        scan = candidates.find_on_grid(grid, lungs, ground_glass=self.settings.ground_glass)
        patches, scalars = scorer.inputs(scan, scan.candidates)
        scores = scorer.mean_score(self.nets, patches, scalars, self.device)
        found = [Detection(c.box, corners_lps(scan, c), float(s)) for c, s in zip(scan.candidates, scores)]
        return sorted(found, key=lambda d: -d.score)


def _load_net(path: Path) -> scorer.ScorerNet:
    net = scorer.ScorerNet()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{path} is not a state dict of pipelines.nodule.scorer.ScorerNet: {exc}") from exc
    return net


def corners_lps(scan: candidates.CandidateScan, candidate: candidates.Candidate) -> np.ndarray:
    """A candidate's box corners in LPS (mm)."""
    low, high = candidate.box[:3], candidate.box[3:]
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return scan.grid.xyz_to_lps(corners)
