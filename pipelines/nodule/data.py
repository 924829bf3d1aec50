"""The real chest CTs used to train and validate the reference detector, and their real tumours.

Split (one patient each way; there are only two): the CPTAC-LUAD scan (99 x 3 mm slices) is the
training scan, and lung-pet-ct-dx-A0002 (30 x 8 mm slices, both reconstruction kernels) is held
out for validation. Holding out A0002 keeps its expert-annotated tumour as an independent test
of a real lesion; training on B70f and validating on B40f of the same patient would not be
held out at all. The training scan is also used slab-averaged to 6 and 9 mm, so the thick
slices of the held-out scan are not new to the model.
"""

from __future__ import annotations

import dataclasses
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from pipelines.volume import Volume, load_series

TRAINING = "ct-chest/cptac-luad-C3N-00247"
HELD_OUT = ("ct-chest/lung-pet-ct-dx-A0002/B40f", "ct-chest/lung-pet-ct-dx-A0002/B70f")
ANNOTATIONS = Path(__file__).resolve().parent / "annotations"
#: Slab averaging factors applied to the training scan (1 = as acquired).
SLAB_FACTORS = (1, 2, 3)


def load(data_dir: Path, name: str) -> Volume:
    folder = data_dir / name
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no DICOM files in {folder}: is ../shared/data complete?")
    return load_series(files)


def tumor_boxes(data_dir: Path, name: str, volume: Volume) -> list[np.ndarray]:
    """Real tumours of a scan as LPS boxes, ``array([[min x, y, z], [max x, y, z]])``."""
    if name.startswith("ct-chest/lung-pet-ct-dx-A0002"):
        return [_voc_box(data_dir / "ct-chest/lung-pet-ct-dx-A0002/annotations", volume)]
    own = ANNOTATIONS / f"{Path(name).name}.toml"
    if own.is_file():
        with open(own, "rb") as handle:
            table = tomllib.load(handle)
        return [np.array([t["lps_min"], t["lps_max"]], dtype=np.float64) for t in table["tumor"]]
    return []


def _voc_box(folder: Path, volume: Volume) -> np.ndarray:
    """The union of the per-slice PASCAL VOC boxes (pixel columns/rows) of the slices annotated."""
    corners = []
    for k, uid in enumerate(volume.sop_instance_uids):
        path = folder / f"{uid}.xml"
        if not path.is_file():
            continue
        for item in ET.parse(path).getroot().iter("bndbox"):
            x0, y0, x1, y1 = (float(item.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
            for kk in (k - 0.5, k + 0.5):
                corners += [volume.index_to_lps([kk, y, x]) for y in (y0 - 0.5, y1 + 0.5) for x in (x0 - 0.5, x1 + 0.5)]
    if not corners:
        raise FileNotFoundError(f"no annotation in {folder} matches a slice of this series")
    points = np.array(corners)
    return np.array([points.min(axis=0), points.max(axis=0)])


def slab_average(volume: Volume, factor: int) -> Volume:
    """Thicker slices made from the real ones: means of ``factor`` adjacent slices."""
    if factor == 1:
        return volume
    count = volume.array.shape[0] // factor
    array = volume.array[: count * factor].reshape(count, factor, *volume.array.shape[1:]).mean(axis=1)
    shift = volume.direction[:, 2] * volume.spacing[2] * (factor - 1) / 2.0
    return dataclasses.replace(
        volume,
        array=array.astype(np.float32),
        spacing=(volume.spacing[0], volume.spacing[1], volume.spacing[2] * factor),
        origin=volume.origin + shift,
        sources=volume.sources[: count * factor : factor],
        frames=volume.frames[: count * factor : factor],
    )
