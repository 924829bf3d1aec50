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

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from training.data_folder import DATA_ROOT


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


def load_images(subject: Subject, root: Path = DATA_ROOT) -> dict[str, sitk.Image]:
    """The subject's contrasts as float32 SimpleITK images (LPS, as ITK reads NIfTI)."""
    images = {}
    for role, relative in subject.contrasts.items():
        path = Path(root) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: point RADNODE_DATA at the shared data folder")
        images[role] = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    return images


def load_labels(subject: Subject, root: Path = DATA_ROOT) -> sitk.Image:
    if subject.labels is None:
        raise ValueError(f"{subject.name} has no label map")
    return sitk.ReadImage(str(Path(root) / subject.labels))


#: The raw, skull-on clinical series of TCGA-FG-6692 as the scanner wrote them (5.5 mm slices).
CLINICAL_DIR = "mr-brain/tcga-fg-6692"
CLINICAL = {
    "t1c": "MRHR_T1_AX_POST_GAD_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz",
    "t1": "T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz",
    "t2": "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz",
    "flair": "MRHR_FLAIR_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz",
}
#: HD-BET's brain mask of the clinical T1c (same grid): the brain extraction reference.
CLINICAL_BRAIN_MASK = "mr-brain/tcga-fg-6692/brain-mask-hdbet/t1c_brain_mask.nii.gz"
#: The six BraTS-2015 cases (skull-stripped, z-scored, expert labels), by the source's split.
BRATS2015_DIR = "mr-brain/brats2015-deepmedic"
BRATS2015_CASES = (
    "train/brats_2013_pat0005_1", "train/brats_2013_pat0006_1",
    "validation/brats_2013_pat0003_1", "validation/brats_2013_pat0004_1",
    "test/brats_2013_pat0001_1", "test/brats_2013_pat0002_1",
)


def load_clinical(role: str, root: Path = DATA_ROOT) -> sitk.Image:
    """One raw skull-on clinical series of TCGA-FG-6692 as float32 (LPS)."""
    path = Path(root) / CLINICAL_DIR / CLINICAL[role]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point RADNODE_DATA at the shared data folder")
    image: sitk.Image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    return image


def load_brats2015(case: str, root: Path = DATA_ROOT) -> dict[str, sitk.Image]:
    """One BraTS-2015 case: ``t1c``, ``flair`` (float32), ``brainmask`` and ``labels`` (BraTS-2015 1-4)."""
    folder = Path(root) / BRATS2015_DIR / case
    files = {"t1c": "T1c_subtrMeanDivStd.nii.gz", "flair": "Flair_subtrMeanDivStd.nii.gz",
             "brainmask": "brainmask.nii.gz", "labels": "OTMultiClass.nii.gz"}
    images = {}
    for key, name in files.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: point RADNODE_DATA at the shared data folder")
        image = sitk.ReadImage(str(path))
        images[key] = sitk.Cast(image, sitk.sitkFloat32) if key in ("t1c", "flair") else image
    return images
