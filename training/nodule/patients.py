"""The five real chest CT patients and their real lesions, for leave-one-patient-out work.

| patient | series | lesions (reference) |
|---|---|---|
| lidc-idri-0001..0003 | ``ct/`` of each | LIDC consensus (>= 2 of 4 readers, ``lidc``); other marks: ignored regions |
| lung-pet-ct-dx-A0002 | B40f and B70f (one acquisition, two kernels) | the annotated adenocarcinoma (``data.tumor_boxes``) |
| cptac-luad-C3N-00247 | as acquired | the developer-marked tumour (``annotations/``) |

A lesion is an LPS box with a long axis; the LIDC ones also carry the consensus mask's volume.
Holding out a patient holds out all of its series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR
from pipelines.volume import Volume
from training.nodule import data, lidc

#: The shipped scorer's folds, one folder per patient: the scorers that never saw that patient, at
#: that fold's threshold (``train_scorer`` writes them to ``OUT/folds/``; kept here, not shipped).
SCORER_FOLDS = Path(__file__).resolve().parent / "scorer_folds"


def folds_of(scorer_dir: Path) -> Path:
    """The per-patient folds of a scorer folder: ``SCORER_FOLDS`` for the shipped scorer, the
    ``folds/`` that ``train_scorer`` wrote beside any other."""
    return SCORER_FOLDS if scorer_dir.resolve() == DEFAULT_SCORER_DIR.resolve() else scorer_dir / "folds"


#: patient -> its series folders under the shared data.
PATIENTS: dict[str, tuple[str, ...]] = {
    "lidc-idri-0001": ("ct-chest/lidc-idri-0001/ct",),
    "lidc-idri-0002": ("ct-chest/lidc-idri-0002/ct",),
    "lidc-idri-0003": ("ct-chest/lidc-idri-0003/ct",),
    "lung-pet-ct-dx-A0002": data.HELD_OUT,
    "cptac-luad-C3N-00247": (data.TRAINING,),
}


@dataclass(frozen=True)
class RealLesion:
    label: str
    lps_box: np.ndarray  # [[min x y z], [max x y z]]
    diameter_mm: float
    volume_mm3: float | None = None


@dataclass
class Series:
    """One real series with its lesions and the regions where a detection is not scored."""

    patient: str
    name: str
    volume: Volume
    lesions: list[RealLesion]
    ignore: list[np.ndarray]  # LPS boxes


def load(data_dir: Path, patient: str, name: str, volume: Volume | None = None) -> Series:
    """A series with its lesions; ``volume`` when the caller has loaded it already."""
    volume = volume if volume is not None else data.load(data_dir, name)
    if patient.startswith("lidc-idri"):
        annotation = lidc.load_annotation(volume, data_dir / name)
        lesions = [RealLesion(f"LIDC consensus ({len({r.reader for r in les.readers})} readers)",
                              les.lps_box, les.diameter_mm, les.volume_mm3) for les in annotation.lesions]
        return Series(patient, name, volume, lesions, [r.lps_box for r in annotation.ignore])
    boxes = data.tumor_boxes(data_dir, name, volume)
    label = "annotated adenocarcinoma" if "A0002" in name else "developer-marked tumour"
    lesions = [RealLesion(label, box, _long_side_mm(data_dir, name, volume, box)) for box in boxes]
    return Series(patient, name, volume, lesions, [])


def all_series(data_dir: Path, patients: tuple[str, ...] = tuple(PATIENTS)) -> list[Series]:
    return [load(data_dir, p, name) for p in patients for name in PATIENTS[p]]


def _long_side_mm(data_dir: Path, name: str, volume: Volume, box: np.ndarray) -> float:
    """The longest in-plane side of the annotation: per-slice boxes for A0002, the box otherwise."""
    if "A0002" in name:
        return float(max(max(b[2] - b[0], b[3] - b[1]) * volume.spacing[0]
                         for _, b in data.annotated_slices(data_dir, name, volume)))
    return float(max(box[1][:2] - box[0][:2]))
