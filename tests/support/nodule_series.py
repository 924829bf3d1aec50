"""Series the nodule-detection tests send or run: real chest CT, a tiny one, a water phantom."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

CHEST = Path("ct-chest") / "lung-pet-ct-dx-A0002"


def chest_files(data_dir: Path, kernel: str = "B40f") -> list[Path]:
    """The held-out chest series, in slice order (so that a prefix is a contiguous slab)."""
    files = (data_dir / CHEST / kernel).glob("*.dcm")
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def rewrite_series(sources: list[Path], folder: Path, hu: np.ndarray | None = None, **attributes: str) -> list[Path]:
    """Copies of ``sources`` as a new series of the same study; ``hu[k]`` replaces slice k's pixels
    (written uncompressed); ``attributes`` are set on every slice (a new StudyInstanceUID...)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    datasets = sorted((pydicom.dcmread(p) for p in sources), key=lambda d: float(d.ImagePositionPatient[2]))
    paths = []
    for k, source in enumerate(datasets):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        if hu is not None:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()
            stored = (hu[k] - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
            info = np.iinfo(source.pixel_array.dtype)
            ds.PixelData = np.clip(np.round(stored), info.min, info.max).astype(source.pixel_array.dtype).tobytes()
        paths.append(folder / f"{k:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


def water_phantom(data_dir: Path, folder: Path) -> list[Path]:
    """The chest series' geometry filled with a 30 cm water cylinder in air: a CT without lungs."""
    files = chest_files(data_dir)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    rows, cols = int(first.Rows), int(first.Columns)
    j, i = np.mgrid[:rows, :cols]
    spacing = float(first.PixelSpacing[0])
    inside = ((j - rows / 2) ** 2 + (i - cols / 2) ** 2) * spacing**2 < 150.0**2
    plane = np.where(inside, 0.0, -1000.0)
    return rewrite_series(files, folder, np.repeat(plane[None], len(files), axis=0))
