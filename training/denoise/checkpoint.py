"""Resumable training: a run's simulated noise (scan by scan) and the fit (every few hundred steps)
kept in a folder, so a run longer than one sitting goes on where it stopped with the same result.

The simulation of 188 slices costs most of a CPU run, so each finished scan's realizations are
saved with the random streams' state after it; the fit saves the network, optimiser, schedule and
streams. A resumed run draws exactly what the uninterrupted one would have drawn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Fit steps between two saves of the fit's state.
FIT_EVERY = 100


@dataclass(frozen=True)
class Streams:
    """The random streams a run draws from, whose state a checkpoint keeps."""

    rng: np.random.Generator
    generator: torch.Generator

    def state(self) -> dict[str, Any]:
        """The streams' state as JSON: numpy's bit generator and torch's generator bytes."""
        return {"numpy": self.rng.bit_generator.state, "torch": self.generator.get_state().tolist(),
                "torch_global": torch.get_rng_state().tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """Put the streams back where ``state`` (from ``state()``) says they were."""
        self.rng.bit_generator.state = state["numpy"]
        self.generator.set_state(torch.tensor(state["torch"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(state["torch_global"], dtype=torch.uint8))


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file and rename it: a killed run leaves the old file or the new one."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)


def _savez(path: Path, **arrays: Any) -> None:
    """``np.savez`` to exactly ``path`` (given a name, it would add ``.npz``)."""
    with path.open("wb") as file:
        np.savez(file, **arrays)


@dataclass(frozen=True)
class Checkpoint:
    """One run's checkpoint folder; ``run`` (the command's settings) must match on resume."""

    folder: Path
    run: dict[str, Any]
    fit_every: int = FIT_EVERY

    def open(self) -> Checkpoint:
        """Create the folder for this run, or check that the one there belongs to it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "run.json"
        if marker.exists():
            kept = json.loads(marker.read_text())
            if kept != self.run:
                changed = sorted(k for k in set(kept) | set(self.run) if kept.get(k) != self.run.get(k))
                raise SystemExit(f"--checkpoint {self.folder} belongs to another run (it differs in {changed}): "
                                 "give a new folder, or remove this one to start again")
        else:
            _replace(marker, lambda p: p.write_text(json.dumps(self.run, indent=2) + "\n"))
        return self

    def save_scan(self, index: int, arrays: dict[str, np.ndarray], streams: Streams) -> None:
        """Scan ``index``'s realizations, and the streams' state once they were drawn, in one file."""
        state = np.array(json.dumps(streams.state()))
        _replace(self._scan(index), lambda p: _savez(p, streams=state, **arrays))

    def load_scan(self, index: int, streams: Streams) -> dict[str, np.ndarray] | None:
        """Scan ``index``'s saved realizations with the streams restored past them; None if not saved."""
        path = self._scan(index)
        if not path.exists():
            return None
        with np.load(path) as saved:
            arrays = {key: saved[key] for key in saved.files}
        streams.restore(json.loads(str(arrays.pop("streams"))))
        return arrays

    def save_fit(self, step: int, state: dict[str, Any], streams: Streams) -> None:
        """The fit after ``step`` steps: tensors and numbers in ``state``, and the streams, in one file."""
        saved = {"step": step, "streams": json.dumps(streams.state()), **state}
        _replace(self.folder / "fit.pt", lambda p: torch.save(saved, p))

    def load_fit(self, streams: Streams) -> dict[str, Any] | None:
        """The last saved fit state, with the streams restored; None when the fit has not been saved."""
        path = self.folder / "fit.pt"
        if not path.exists():
            return None
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        streams.restore(json.loads(state.pop("streams")))
        return state

    def _scan(self, index: int) -> Path:
        return self.folder / f"scan-{index:03d}.npz"
