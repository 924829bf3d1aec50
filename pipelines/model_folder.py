"""What every shipped pipeline's model folder has in common.

A site replaces shipped weights by pointing ``[pipelines.<name>] model`` at a folder. Two layouts
are accepted, so that a site can drop in a model from MONAI's model zoo or export its own:

- radnode's own: ``model.ts`` (TorchScript) or ``model.pt`` (a state dict of the pipeline's
  network) plus ``params.toml`` / ``params.json`` with the pre- and post-processing;
- a MONAI bundle: ``configs/inference.json`` plus ``models/model.ts`` or ``models/model.pt``.

Each pipeline reads its own parameters from the table returned here; this module only finds the
files, reads them and fingerprints them, so the error messages are the same everywhere.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where weights load: the node checks folders without it
    import torch


class ModelFolderError(ValueError):
    """The model folder is missing a file or its parameters are unusable; the message says which."""


def require_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    return folder


def inner_folder(folder: Path, name: str, key: str) -> Path:
    """The sub-folder that ``key`` of the parameters names, refused unless it lies inside ``folder``.

    Why inside: a model folder is copied, fingerprinted (``folder_digest``) and handed over whole;
    a name that leaves it would load weights that the folder's digest does not cover.
    """
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelFolderError(f"{folder}: {key} {name!r} must lie inside the model folder")
    if (folder / name).resolve() == folder.resolve():
        raise ModelFolderError(f"{folder}: {key} {name!r} is the folder itself")
    return folder / name


#: Config file names MONAI's bundle scripts look for, in the order they are tried.
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def is_monai_bundle(folder: Path) -> bool:
    """A MONAI bundle's layout (``configs/inference.*``), as opposed to a radnode model folder."""
    return any((Path(folder) / "configs" / name).is_file() for name in CONFIG_NAMES)


def read_params(folder: Path) -> dict[str, Any]:
    """``params.toml`` (preferred) or ``params.json`` of a radnode model folder."""
    toml_path, json_path = folder / "params.toml", folder / "params.json"
    try:
        if toml_path.is_file():
            with open(toml_path, "rb") as handle:
                return tomllib.load(handle)
        if json_path.is_file():
            params: dict[str, Any] = json.loads(json_path.read_text())
            return params
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{folder}: the parameters file is not valid: {exc}") from exc
    raise ModelFolderError(f"{folder} has no params.toml or params.json describing the model's input")


def weights_files(folder: Path) -> tuple[Path | None, Path | None]:
    """(TorchScript file, state-dict file) of either layout; either may be None."""
    base = folder / "models" if is_monai_bundle(folder) else folder
    script, state = base / "model.ts", base / "model.pt"
    return (script if script.is_file() else None, state if state.is_file() else None)


def load_state_dict(path: Path, network: torch.nn.Module) -> torch.nn.Module:
    """Load weights into ``network``; a mismatch names the file instead of a bare key list."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # MONAI bundles' checkpoints often wrap the weights this way
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFolderError(f"{path} does not match the network its parameters describe: {exc}") from exc
    return network


def load_network(folder: Path, build: Callable[[], torch.nn.Module], what: str,
                 device: str = "cpu") -> torch.nn.Module:
    """The folder's TorchScript model, or ``build()`` (called only then) with the state dict in it.

    ``what`` names the network ``build`` makes, for the message when the parameters do not fit it.
    """
    import torch

    script, state = weights_files(folder)
    if script is not None:
        scripted: torch.nn.Module = torch.jit.load(str(script), map_location=device)
        return scripted
    if state is None:
        where = f"{folder}/models" if is_monai_bundle(folder) else str(folder)
        raise ModelFolderError(
            f"{where} has neither model.ts nor model.pt: it needs a TorchScript file or a state dict"
        )
    try:
        network = build()
    except TypeError as exc:
        raise ModelFolderError(f"{folder}: the parameters do not describe {what}: {exc}") from exc
    return load_state_dict(state, network).to(device)


def folder_digest(folder: Path) -> str:
    """sha256 over the model and parameter files, so every output names the exact weights used."""
    digest = hashlib.sha256()
    candidates = [p for p in folder.rglob("*") if p.is_file() and p.suffix in {".ts", ".pt", ".toml", ".json"}]
    for path in sorted(candidates):
        if path.name.startswith(("model.", "params.", "inference.")):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()

