"""Long CT series for the benchmarks, made from the real slices in ../shared/data."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-chest" / "cptac-luad-C3N-00247"


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
