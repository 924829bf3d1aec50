"""Load a tumor model folder once and turn normalized channels into region probabilities.

A model folder replaces the shipped weights: radnode's layout is ``model.pt`` (a
``model.Architecture`` state dict) or ``model.ts`` with ``params.toml`` (``[input]``, ``[output]``,
``[model]``, ``[[reduced]]``, ``[[validated]]``; docs/tumor.md shows one), or an ``[ensemble]`` of
member folders whose mean sigmoid the folder thresholds (the usual way to serve cross-validation
folds; a member on another grid or patch is refused, named). Every key is checked
(``params.TumorParams``). A MONAI bundle runs as published (``bundle_segmentation``). The network
takes (N, 4, ...) channels T1c, T1, T2, FLAIR z-scored over the brain and returns three logits:
tumor core, whole tumor, enhancing tumor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from pipelines.model_folder import (
    ModelFolderError,
    inner_folder,
    is_monai_bundle,
    load_network,
    load_params,
    require_folder,
)
from pipelines.precision import autocast
from pipelines.tumor.model import Architecture
from pipelines.tumor.params import NATIVE_AXCODES, TumorParams
from pipelines.tumor.segmented import AlignedStudy, Segmented

#: The weights trained by ``training.tumor.train``, shipped in the repository.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights"
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


@dataclass(frozen=True)
class InputFormat:
    """What the network expects besides the channel order, and how its outputs become labels."""

    spacing: float
    axcodes: str
    roi: tuple[int, int, int]
    threshold: tuple[float, float, float]
    #: Remove whole-tumor components without core (a post-processing the model's author asks for).
    require_core: bool = False
    #: Label what the core encloses necrosis (likewise).
    fill_core: bool = False


def _axis_map(axcodes: str) -> tuple[list[int], list[bool]]:
    """For each target axis: which native (S, P, L) axis feeds it, and whether it is reversed."""
    codes = axcodes.upper()
    order, flips = [], []
    for letter in codes:
        for native_axis, native in enumerate(NATIVE_AXCODES):
            if letter in (native, _OPPOSITE[native]):
                order.append(native_axis)
                flips.append(letter != native)
    if len(codes) != 3 or sorted(order) != [0, 1, 2]:
        raise ModelFolderError(f"orientation codes {axcodes!r} are not one of L/R, P/A, S/I each")
    return order, flips


def to_model_axes(array: np.ndarray, axcodes: str) -> np.ndarray:
    """(C, z, y, x) LPS array -> the same data in the network's orientation."""
    order, flips = _axis_map(axcodes)
    out = np.transpose(array, (0, *[1 + a for a in order]))
    return np.ascontiguousarray(np.flip(out, axis=tuple(1 + i for i, f in enumerate(flips) if f)))


def from_model_axes(array: np.ndarray, axcodes: str) -> np.ndarray:
    """Inverse of ``to_model_axes``."""
    order, flips = _axis_map(axcodes)
    out = np.flip(array, axis=tuple(1 + i for i, f in enumerate(flips) if f))
    return np.ascontiguousarray(np.transpose(out, (0, *[1 + int(np.argsort(order)[a]) for a in range(3)])))


def _radnode_format(params: TumorParams, folder: Path) -> InputFormat:
    table = params.input
    try:
        _axis_map(table.axcodes)
    except ModelFolderError as error:
        raise ModelFolderError(f"{folder}: [input] axcodes: {error}") from None
    return InputFormat(spacing=table.spacing, axcodes=table.axcodes, roi=table.roi, threshold=table.threshold,
                       require_core=params.output.require_core, fill_core=params.output.fill_core)


class Segmenter:
    """A loaded tumor model (one network, or the members of an ensemble): ``probabilities(channels)``."""

    def __init__(self, networks: list[torch.nn.Module], input_format: InputFormat, device: str) -> None:
        self.networks = [network.to(device).eval() for network in networks]
        self.format = input_format
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> Segmenter:
        folder = require_folder(folder)
        if is_monai_bundle(folder):
            raise ModelFolderError(f"{folder} is a MONAI bundle: it runs through pipelines.tumor.bundle_segmentation")
        params = load_params(folder, TumorParams)
        input_format = _radnode_format(params, folder)
        if params.ensemble is None:
            return cls([_network(folder, params)], input_format, device)
        members = [_member(folder, name, input_format) for name in params.ensemble.members]
        return cls(members, input_format, device)

    def probabilities(self, channels: np.ndarray) -> np.ndarray:
        """(3, z, y, x) sigmoid outputs (TC, WT, ET) for (4, z, y, x) normalized LPS channels.

        An ensemble's is the mean of its members' sigmoid outputs.
        """
        x = torch.from_numpy(to_model_axes(channels, self.format.axcodes))[None].to(self.device)
        with torch.inference_mode(), autocast(self.device.startswith("cuda")):
            mean = torch.stack([torch.sigmoid(self._logits(x, network).float())[0] for network in self.networks]).mean(0)
        return from_model_axes(mean.cpu().numpy(), self.format.axcodes)

    def require_contrasts(self, present: Sequence[str], left_out: Mapping[str, str] | None = None) -> None:
        """Any set with T1c or FLAIR runs: an absent contrast is a zero channel, as in training."""

    def segmentation(self, study: AlignedStudy, network: Callable[[Segmenter, AlignedStudy], Segmented]) -> Segmented:
        """radnode's steps for its own network, which the pipeline hands in."""
        return network(self, study)

    def _logits(self, x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        logits = sliding_window_inference(x, roi_size=self.format.roi, sw_batch_size=1, predictor=network,
                                          overlap=0.25, mode="gaussian")
        assert isinstance(logits, torch.Tensor)  # the network returns one tensor
        return logits


def _network(folder: Path, params: TumorParams) -> torch.nn.Module:
    return load_network(folder, lambda: Architecture.from_params(params.model.given()).build(),
                        "a SegResNet ([model])")


def _member(folder: Path, name: str, ensemble_format: InputFormat) -> torch.nn.Module:
    """One member's network, refused unless it reads the grid the ensemble feeds it."""
    member = require_folder(inner_folder(folder, name, "[ensemble] member"))
    params = load_params(member, TumorParams)
    if params.ensemble is not None:
        raise ModelFolderError(f"{member}: an ensemble member must be one model, not another ensemble")
    own = _radnode_format(params, member)
    for field in ("spacing", "axcodes", "roi"):
        if getattr(own, field) != getattr(ensemble_format, field):
            raise ModelFolderError(
                f"{member}: [input] {field} {getattr(own, field)!r} differs from the ensemble's "
                f"{getattr(ensemble_format, field)!r}; every member must read the same grid"
            )
    return _network(member, params)
