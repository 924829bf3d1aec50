"""An nnU-Net v2 results folder as radnode reads it, checked against the pipeline's options.

nnU-Net leaves a trained model as ``dataset.json`` (channels, labels, file ending), ``plans.json``
(preprocessing, network, image reader) and ``fold_N/checkpoint_final.pth``. Everything radnode
needs to know before a study comes is read here, and anything it cannot honour is refused with
config.toml's key named: a channel that no route role feeds (``options.channels``), a fold that
is not in the folder (``options.folds``), nnunetv2 not installed (``model``). How the model runs
is nnU-Net's own business (``runner``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.sr.coding import Code

from pipelines.base import SERIES_ROLE
from pipelines.model_folder import ModelFolderError
from pipelines.nnunet.contract import LabelCoding, Options
from pipelines.writers import codes
from pipelines.writers.codes import Structure

INSTALL = "python3 -m pip install 'radnode[nnunet]'"
#: dataset.json labels named like these get their codes without configuration (compared
#: lower-case, letters only); any other label is coded Tissue unless ``options.labels`` codes it.
KNOWN_LABELS: dict[str, Structure] = {
    "tumor": codes.NEOPLASM, "tumour": codes.NEOPLASM, "wholetumor": codes.NEOPLASM, "neoplasm": codes.NEOPLASM,
    "tumorcore": codes.NEOPLASM, "edema": codes.EDEMA, "oedema": codes.EDEMA, "peritumoraledema": codes.EDEMA,
    "necrosis": codes.NECROSIS, "necrotic": codes.NECROSIS, "necroticcore": codes.NECROSIS,
    "nonenhancingcore": codes.NECROSIS, "enhancingtumor": codes.ENHANCING_TUMOR,
    "enhancingtumour": codes.ENHANCING_TUMOR, "nodule": codes.LUNG_NODULE, "lungnodule": codes.LUNG_NODULE,
}
TISSUE = Code("85756007", "SCT", "Tissue")


class NnUNetFolderError(ModelFolderError):
    """The folder cannot be run with these options; ``key`` is the config key (under the pipeline's
    table) the administrator changes."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Label:
    """One ``dataset.json`` label: a SEG segment and an SR group. ``values`` are the exported label
    values that make it up: one for a plain label, several for a region (BraTS "whole tumor")."""

    name: str
    values: tuple[int, ...]
    structure: Structure


@dataclass(frozen=True)
class NnUNetFolder:
    """What radnode runs: the folder, which role feeds each channel (in channel order), the folds,
    the labels, and how nnU-Net stores images (``file_ending``)."""

    path: Path
    roles: tuple[str, ...]
    channel_names: tuple[str, ...]
    folds: tuple[int | str, ...]
    labels: tuple[Label, ...]
    file_ending: str

    @classmethod
    def read(cls, path: Path, options: Options) -> NnUNetFolder:
        dataset = _json(path / "dataset.json")
        channels = dataset.get("channel_names") or dataset.get("modality")
        if not isinstance(channels, dict) or not channels:
            raise NnUNetFolderError("model", f"{path / 'dataset.json'} names no channel_names")
        names = tuple(str(channels[key]) for key in sorted(channels, key=int))
        return cls(
            path=path,
            roles=_roles(names, options),
            channel_names=names,
            folds=_folds(path, options),
            labels=_labels(dataset, options),
            file_ending=str(dataset.get("file_ending", ".nii.gz")),
        )


def require_nnunetv2() -> None:
    """nnunetv2 importable, or the install command (the node does not depend on it otherwise)."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError as error:
        raise NnUNetFolderError("model", f"this is an nnU-Net v2 folder and nnunetv2 is not installed: {INSTALL}") from error


def _json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NnUNetFolderError("model", f"{path} is not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise NnUNetFolderError("model", f"{path} is not a JSON object")
    return data


def _roles(names: tuple[str, ...], options: Options) -> tuple[str, ...]:
    """The role of each channel, by its name or its index in ``options.channels``; a one-channel
    folder without a mapping takes the series of a series-level route."""
    if not options.channels and len(names) == 1:
        return (SERIES_ROLE,)
    unknown = [key for key in options.channels if key not in names and key not in map(str, range(len(names)))]
    if unknown:
        raise NnUNetFolderError("options.channels", f"{', '.join(map(repr, unknown))} is not a channel of this folder; "
                                f"its channels: {_listed(names)}")
    roles = []
    for index, name in enumerate(names):
        role = options.channels.get(name) or options.channels.get(str(index))
        if role is None:
            raise NnUNetFolderError("options.channels", f"channel {index} ({name!r}) has no role: map it to the "
                                    f"route role whose series feeds it, e.g. channels = {{ {name!r} = \"t1c\" }}; "
                                    f"the folder's channels: {_listed(names)}")
        roles.append(role)
    return tuple(roles)


def _folds(path: Path, options: Options) -> tuple[int | str, ...]:
    present = sorted((p.name.removeprefix("fold_") for p in path.glob("fold_*") if (p / options.checkpoint).is_file()),
                     key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
    if not present:
        raise NnUNetFolderError("options.checkpoint", f"no fold_*/{options.checkpoint} in {path}")
    if options.folds is None:
        return tuple(int(f) if f.isdigit() else f for f in present)
    missing = [str(f) for f in options.folds if str(f) not in present]
    if missing:
        raise NnUNetFolderError("options.folds", f"fold {', '.join(missing)} has no {options.checkpoint} in {path}; "
                                f"folds present: {', '.join(present)}")
    return tuple(options.folds)


def _labels(dataset: dict[str, object], options: Options) -> tuple[Label, ...]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        raise NnUNetFolderError("model", "dataset.json names no labels")
    unknown = [name for name in options.labels if name not in labels]
    if unknown:
        raise NnUNetFolderError("options.labels", f"{', '.join(map(repr, unknown))} is not a label of this folder; "
                                f"its labels: {_listed(tuple(labels))}")
    found = []
    for name, value in labels.items():
        values = tuple(int(v) for v in value) if isinstance(value, list) else (int(str(value)),)
        if values == (0,):
            continue  # background
        found.append(Label(name, values, _structure(name, options.labels.get(name))))
    return tuple(found)


def _structure(name: str, coding: LabelCoding | None) -> Structure:
    """The label's codes: configured, known by its name, or Tissue; its label is always its name."""
    if coding is not None:
        return Structure(name, Code(*coding.category), Code(*coding.type))
    known = KNOWN_LABELS.get(re.sub(r"[^a-z]", "", name.lower()))
    if known is not None:
        return Structure(name, known.category, known.type, known.site)
    return Structure(name, TISSUE, TISSUE)


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(f"{n} ({name!r})" for n, name in enumerate(names))
