"""What every model folder has in common: finding its files, reading its parameters, its digest.

A site points ``[pipelines.<name>] model`` at a folder of one of three layouts: radnode's own
(``model.ts`` or ``model.pt`` plus ``params.toml`` / ``params.json``), a MONAI bundle
(``configs/inference.json`` plus ``models/model.*``) or an nnU-Net v2 results folder (run by
``pipelines/nnunet`` with nnunetv2 itself). Each pipeline reads its ``ModelParams`` with
``load_params``: typed keys with defaults, and a misspelt or unknown key refused naming the file
and the key (``pipelines.validation``), so the messages are the same everywhere.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

from pipelines.validation import not_valid, problem_lines

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


def is_nnunet_folder(folder: Path) -> bool:
    """nnU-Net v2's trained-model layout: dataset.json, plans.json and at least one fold_* folder."""
    folder = Path(folder)
    return ((folder / "dataset.json").is_file() and (folder / "plans.json").is_file()
            and any(p.is_dir() for p in folder.glob("fold_*")))


def is_monai_bundle(folder: Path) -> bool:
    """A MONAI bundle's layout (``configs/inference.*``), as opposed to a radnode model folder."""
    return any((Path(folder) / "configs" / name).is_file() for name in CONFIG_NAMES)


def params_file(folder: Path) -> Path:
    """``params.toml`` (preferred) or ``params.json`` (the older form) of a radnode model folder."""
    for name in ("params.toml", "params.json"):
        if (folder / name).is_file():
            return folder / name
    raise ModelFolderError(f"{folder} has no params.toml or params.json describing the model's input")


def read_params(folder: Path) -> dict[str, Any]:
    """The parameters file's tables as read, unchecked: for the training scripts that rewrite it;
    a pipeline reads its parameters with ``load_params``."""
    path = params_file(folder)
    try:
        if path.suffix == ".toml":
            with open(path, "rb") as handle:
                return tomllib.load(handle)
        params: dict[str, Any] = json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{folder}: the parameters file is not valid: {exc}") from exc
    if not isinstance(params, dict):
        raise ModelFolderError(f"{path} is not valid: it must hold tables of keys, not {type(params).__name__}")
    return params


class ParamsTable(BaseModel):
    """One table of a parameters file (``[input]``): typed keys, and no others."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The keys the file sets, for a table whose unset keys (None) keep the code's defaults."""
        return self.model_dump(exclude_none=True)


class ModelParams(ParamsTable):
    """A whole parameters file of one kind of model folder; each pipeline declares its own."""


Params = TypeVar("Params", bound=ModelParams)


def load_params(folder: Path, kind: type[Params]) -> Params:
    """The folder's ``params.toml`` (or ``params.json``) checked against ``kind``.

    A key ``kind`` does not declare, a wrong type or a missing required key is refused with
    the file and every bad key named, one line each, in config.toml's words.
    """
    folder = Path(folder)
    raw = read_params(folder)
    try:
        return kind.model_validate(raw)
    except ValidationError as error:
        raise ModelFolderError(not_valid(str(params_file(folder)), problem_lines(error))) from None


def _true_or_false(value: Any, info: ValidationInfo) -> Any:
    """TOML's true and false only: 1 or "yes" is a mistake to point out, not a boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"{info.field_name} must be true or false, got {value!r}")
    return value


#: A switch of a parameters file: ``true`` or ``false``, nothing that merely converts to one.
Switch = Annotated[bool, BeforeValidator(_true_or_false)]


def _low_below_high(value: tuple[float, float]) -> tuple[float, float]:
    if not value[0] < value[1]:
        raise ValueError(f"low must be below high, got {list(value)}")
    return value


#: A ``[low, high]`` pair of a parameters file (an HU clip, an intensity range): low below high.
Interval = Annotated[tuple[float, float], AfterValidator(_low_below_high)]


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


#: Weights files, whatever their names (a folder's params may list several, e.g. an ensemble).
WEIGHTS_SUFFIXES = frozenset({".ts", ".pt", ".pth"})


def folder_digest(folder: Path) -> str:
    """sha256 over every weights file and the parameter and config files of the folder and the
    sub-folders it loads, so every output names the exact weights used."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if path.suffix in WEIGHTS_SUFFIXES or (path.name.startswith(("model.", "params.", "inference."))
                                               and path.suffix in {".toml", ".json", ".yaml", ".yml"}):
            digest.update(str(relative).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()

