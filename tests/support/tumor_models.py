"""Tumor model folders whose answer is known in advance, for tests of how folders are read and served."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class Constant(torch.nn.Module):
    """A model that gives every voxel the same logit: tumor everywhere (logit > 0) or nowhere."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :3], self.logit)


def constant_model(folder: Path, logit: float, extra_params: str = "", spacing: float = 3.0, roi: int = 64,
                   validated: tuple[tuple[str, ...], ...] = ()) -> Path:
    """A TorchScript model folder of ``Constant(logit)`` on a ``spacing`` mm grid with a ``roi``^3 window,
    declaring the contrast sets of ``validated`` validated (held-out Dice 0.9: a test's say-so)."""
    folder.mkdir(parents=True)
    torch.jit.script(Constant(logit)).save(str(folder / "model.ts"))
    tables = "".join(f'[[validated]]\ncontrasts = {json.dumps(list(contrasts))}\ndice = 0.9\nscans = 1\ndata = "test"\n'
                     for contrasts in validated)
    (folder / "params.toml").write_text(f"[input]\nspacing = {spacing}\nroi = [{roi}, {roi}, {roi}]\n"
                                        + extra_params + tables)
    return folder
