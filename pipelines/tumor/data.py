"""The real brain MR this project trains and evaluates on (``../shared/data/mr-brain``).

- ``BRATS``: BraTS-GLI-00001, four co-registered skull-stripped contrasts at 1 mm, no labels.
  It carries a real glioma without a mask; training inserts synthetic tumors elsewhere and
  leaves its own lesion out of the loss.
- ``TCGA``: TCGA-FG-6692 after BraTS-style preprocessing (``raw_bet``: co-registered,
  skull-stripped, 1 mm) with the ``fusion/mav`` majority vote of five BraTS algorithms as a
  pseudo-reference (labels 1 necrosis/non-enhancing core, 2 edema, 4 enhancing). Held out: never
  seen in training, used for synthetic-insertion Dice and for Dice against the fusion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

DEFAULT_DATA_ROOT = Path(os.environ.get("RADNODE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@dataclass(frozen=True)
class Subject:
    """Files of one subject: contrast role -> NIfTI path, and an optional label map."""

    name: str
    contrasts: dict[str, str]
    labels: str | None = None


BRATS = Subject(
    "BraTS-GLI-00001",
    {role: f"mr-brain/brats-gli-00001/BraTS-GLI-00001-000/BraTS-GLI-00001-000-{suffix}.nii.gz"
     for role, suffix in (("t1c", "t1c"), ("t1", "t1n"), ("t2", "t2w"), ("flair", "t2f"))},
)
TCGA = Subject(
    "TCGA-FG-6692",
    {role: f"mr-brain/tcga-fg-6692/OtherEXampleFromTCIA_brainles/raw_bet/OtherEXampleFromTCIA_{suffix}_bet.nii.gz"
     for role, suffix in (("t1c", "t1c"), ("t1", "t1"), ("t2", "t2"), ("flair", "fla"))},
    labels="mr-brain/tcga-fg-6692/OtherEXampleFromTCIA_brainles/fusion/mav.nii.gz",
)


def load_images(subject: Subject, root: Path = DEFAULT_DATA_ROOT) -> dict[str, sitk.Image]:
    """The subject's contrasts as float32 SimpleITK images (LPS, as ITK reads NIfTI)."""
    images = {}
    for role, relative in subject.contrasts.items():
        path = Path(root) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: point RADNODE_DATA at the shared data folder")
        images[role] = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    return images


def load_labels(subject: Subject, root: Path = DEFAULT_DATA_ROOT) -> sitk.Image:
    if subject.labels is None:
        raise ValueError(f"{subject.name} has no label map")
    return sitk.ReadImage(str(Path(root) / subject.labels))
