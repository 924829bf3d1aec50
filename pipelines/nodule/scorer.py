"""The learned second stage: a small 3-D CNN that scores each candidate of ``candidates``.

Input per candidate: two 24^3 patches centred on it, HU at 2 mm (48 mm of context, a nodule's
own texture) and HU smoothed and sampled at 4 mm (96 mm, enough to see a mass with its
surroundings: a mass against the mediastinum looks different from the heart), clipped to
[-1000, 400] HU and stored as uint8 (5.5 HU steps, below CT noise: a cache of thousands of
candidates stays small enough to carry to a GPU), scaled to [0, 1] for the network; plus the
candidate's log size and whether it came from a solid component. Output: one logit. Small
enough (about 60 k parameters) to train on a CPU in minutes; ``train_scorer`` trains it leave-one-patient-out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.fx.experimental.optimization import fuse

if TYPE_CHECKING:  # scoring cached patches needs no DICOM stack (train_scorer on a GPU machine)
    from pipelines.nodule.candidates import Candidate, CandidateScan

PATCH = 24
#: Spacings (in grid voxels of 2 mm) of the two channels.
CHANNEL_STEPS = (1.0, 2.0)
HU_RANGE = (-1000.0, 400.0)
SCALARS = 2
#: The weight file of each weighting of the positives (``train_scorer``) in a scorer folder; a
#: folder without ``[scorer] weights`` has the first (``candidate_detector``).
WEIGHT_FILES = {"candidates": "scorer.pt", "lesions": "scorer-lesions.pt"}


class ScorerNet(nn.Module):
    """Conv-BN-ReLU blocks with max pooling (24 -> 12 -> 6 -> 3), global pooling, then the
    candidate's scalars joined before the last two layers."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = len(CHANNEL_STEPS)
        for n, width in enumerate(widths):
            layers += [nn.Conv3d(channels, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True)]
            if n < len(widths) - 1:
                layers.append(nn.MaxPool3d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels + SCALARS, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, patches: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        pooled = self.features(patches).mean(dim=(2, 3, 4))
        logits: torch.Tensor = self.head(torch.cat([pooled, scalars], dim=1))
        return logits.squeeze(1)


def frozen(net: ScorerNet) -> nn.Module:
    """``net`` for inference only: each BatchNorm folded into its convolution (torch.fx's
    ``fuse``) and the weights channels-last, a layout oneDNN convolves and pools several times
    faster on a CPU. Its probabilities agree with ``net``'s to float rounding."""
    fused: nn.Module = fuse(net.eval())
    for parameter in fused.parameters():  # Module.to(memory_format=...) is untyped in torch's stubs
        if parameter.dim() == 5:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last_3d)
    return fused


def inputs(scan: CandidateScan, candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """(patches uint8 (n, 2, 24, 24, 24), scalars float32 (n, 2)) for the candidates of a scan."""
    low, high = HU_RANGE
    fine = scan.grid.hu
    coarse = ndi.gaussian_filter(fine, 1.0)
    offsets = np.arange(PATCH, dtype=np.float64) - (PATCH - 1) / 2.0
    patches = np.empty((len(candidates), len(CHANNEL_STEPS), PATCH, PATCH, PATCH), dtype=np.uint8)
    for n, c in enumerate(candidates):
        for channel, (image, step) in enumerate(zip((fine, coarse), CHANNEL_STEPS)):
            axes = [c.center[a] + offsets * step for a in range(3)]
            coords = np.stack(np.meshgrid(*axes, indexing="ij"))
            sampled = ndi.map_coordinates(image, coords, order=1, cval=-1024.0)
            patches[n, channel] = np.round((np.clip(sampled, low, high) - low) * (255.0 / (high - low)))
    scalars = np.array([[np.log(c.diameter_mm / 10.0), float(c.source == "solid")] for c in candidates],
                       dtype=np.float32).reshape(-1, SCALARS)
    return patches, scalars


def as_input(patches: np.ndarray, device: str) -> torch.Tensor:
    """uint8 patches as the network's float input in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patches)).to(device).float().div_(255.0)


def score(net: nn.Module, patches: np.ndarray, scalars: np.ndarray, device: str = "cpu",
          batch: int = 64) -> np.ndarray:
    """Probabilities (sigmoid of the logits) in the candidates' order."""
    probabilities: np.ndarray = _member_scores([net], patches, scalars, device, batch)[0]
    return probabilities


def mean_score(nets: Sequence[nn.Module], patches: np.ndarray, scalars: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The members' probabilities averaged: a scorer folder may hold several scorers (the inner
    scorers of each fold, or two weightings of the positives; training/nodule/LOG.md,
    "Weighting chosen on the inner folds")."""
    mean: np.ndarray = np.mean(_member_scores(nets, patches, scalars, device), axis=0)
    return mean


def _member_scores(nets: Sequence[nn.Module], patches: np.ndarray, scalars: np.ndarray, device: str,
                   batch: int = 64) -> np.ndarray:
    """(members, candidates) probabilities; each batch is made a float tensor once for all members."""
    out: list[list[np.ndarray]] = [[] for _ in nets]
    for net in nets:
        net.eval()
    with torch.inference_mode():
        for start in range(0, len(patches), batch):
            p = as_input(patches[start:start + batch], device)
            s = torch.from_numpy(scalars[start:start + batch]).to(device)
            for member, net in zip(out, nets):
                member.append(torch.sigmoid(net(p, s)).float().cpu().numpy())
    return np.array([np.concatenate(m) if m else np.zeros(0, dtype=np.float32) for m in out])
