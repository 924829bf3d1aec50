"""The real chest CTs used to train and validate the reference detector, and their real tumours.

Split (one patient each way; there are only two): the CPTAC-LUAD scan (99 x 3 mm slices) is the
training scan, and lung-pet-ct-dx-A0002 (30 x 8 mm slices, both reconstruction kernels) is held
out for validation. Holding out A0002 keeps its expert-annotated tumour as an independent test
of a real lesion; training on B70f and validating on B40f of the same patient would not be
held out at all. The training scan is also used slab-averaged to 6 and 9 mm, so the thick
slices of the held-out scan are not new to the model.

The training scan itself is split at the midline: training sees only the patient's right half
(which holds its real tumour), and the left half is where the reporting threshold is calibrated
(``evaluate --calibrate``). A detector trained on one scan memorises that scan's background, so
its false positives there say nothing about a new scan; the unseen half of the same chest is the
closest thing to a new scan that does not touch the held-out patient.
"""

from __future__ import annotations

import dataclasses
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from pipelines.nodule.lungs import lung_mask
from pipelines.volume import Volume, load_series

TRAINING = "ct-chest/cptac-luad-C3N-00247"
HELD_OUT = ("ct-chest/lung-pet-ct-dx-A0002/B40f", "ct-chest/lung-pet-ct-dx-A0002/B70f")
ANNOTATIONS = Path(__file__).resolve().parent / "annotations"
#: Slab averaging factors applied to the training scan (1 = as acquired).
SLAB_FACTORS = (1, 2, 3)
#: Every this many lung voxels is enough to find the lungs' outer edges.
_MIDLINE_SUBSAMPLE = 25


def load(data_dir: Path, name: str) -> Volume:
    folder = data_dir / name
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no DICOM files in {folder}: is ../shared/data complete?")
    return load_series(files)


def midline_x(volume: Volume) -> float:
    """LPS x (mm) halfway between the outer edges of the two lungs: the training/calibration cut.

    Points with a larger x are on the patient's left (calibration), smaller on the right (training).
    """
    lungs = lung_mask(volume.array, slice_axis=0)
    x = volume.kji_to_lps(np.argwhere(lungs)[::_MIDLINE_SUBSAMPLE])[:, 0]
    return float((x.min() + x.max()) / 2.0)


def tumor_boxes(data_dir: Path, name: str, volume: Volume) -> list[np.ndarray]:
    """Real tumours of a scan as LPS boxes, ``array([[min x, y, z], [max x, y, z]])``."""
    if name.startswith("ct-chest/lung-pet-ct-dx-A0002"):
        return [_voc_box(data_dir, name, volume)]
    own = ANNOTATIONS / f"{Path(name).name}.toml"
    if own.is_file():
        with open(own, "rb") as handle:
            table = tomllib.load(handle)
        return [np.array([t["lps_min"], t["lps_max"]], dtype=np.float64) for t in table["tumor"]]
    return []


def annotated_slices(data_dir: Path, name: str, volume: Volume) -> list[tuple[int, np.ndarray]]:
    """A0002's per-slice PASCAL VOC boxes: (slice index, [xmin, ymin, xmax, ymax] in pixels)."""
    folder = data_dir / Path(name).parent / "annotations"
    slices = []
    for k, uid in enumerate(volume.sop_instance_uids):
        path = folder / f"{uid}.xml"
        if path.is_file():
            for item in ET.parse(path).getroot().iter("bndbox"):
                slices.append((k, np.array([_voc_coordinate(item, t) for t in ("xmin", "ymin", "xmax", "ymax")])))
    if not slices:
        raise FileNotFoundError(f"no annotation in {folder} matches a slice of this series")
    return slices


def _voc_coordinate(bndbox: ET.Element, tag: str) -> float:
    """One coordinate of a PASCAL VOC ``<bndbox>``."""
    text = bndbox.findtext(tag)
    if text is None:
        raise ValueError(f"a PASCAL VOC <bndbox> has no <{tag}>")
    return float(text)


def _voc_box(data_dir: Path, name: str, volume: Volume) -> np.ndarray:
    """The union of the per-slice PASCAL VOC boxes (pixel columns/rows) of the slices annotated."""
    corners = []
    for k, (x0, y0, x1, y1) in annotated_slices(data_dir, name, volume):
        for kk in (k - 0.5, k + 0.5):
            corners += [volume.kji_to_lps([kk, y, x]) for y in (y0 - 0.5, y1 + 0.5) for x in (x0 - 0.5, x1 + 0.5)]
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
