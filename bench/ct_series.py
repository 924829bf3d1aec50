"""Long CT series for the benchmarks, made from the real slices in ../shared/data."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from training.data_folder import DATA_ROOT

SOURCE = DATA_ROOT / "ct-chest" / "cptac-luad-C3N-00247"


def save_slice(ds: Dataset, folder: Path, index: int, study_uid: str, series_uid: str, z: float) -> Path:
    """Write ``ds`` as slice ``index`` of a new series at height ``z`` with a fresh SOP Instance UID."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = index + 1
    x, y, _ = ds.ImagePositionPatient
    ds.ImagePositionPatient = [x, y, z]
    ds.SliceLocation = z
    path = folder / f"{index:04d}.dcm"
    ds.save_as(path)
    return path


def source_slices() -> list[Dataset]:
    """The real chest CT's slices, ordered along z."""
    return sorted((pydicom.dcmread(p) for p in SOURCE.glob("*.dcm")),
                  key=lambda d: float(d.ImagePositionPatient[2]))


def repeated_series(folder: Path, slices: int) -> list[Path]:
    """``slices`` files of one new series: the real slices in turn, 1 mm apart along z."""
    sources = source_slices()
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    return [save_slice(copy.deepcopy(sources[i % len(sources)]), folder, i, study_uid, series_uid, -float(i))
            for i in range(slices)]
