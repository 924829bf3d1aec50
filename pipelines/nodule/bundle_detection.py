"""A MONAI detection bundle (``lung_nodule_ct_detection``) run as published, boxes back on the CT.

Preprocessing, ``RetinaNetInferer`` with its ``detector_ops`` and postprocessing run as configured
(``pipelines.bundle_runner``). radnode adds only the CT as the bundle's loader gives it, the boxes
read in the postprocessing's box mode and world frame and turned into SEG segments and SR groups,
and a reporting threshold: the bundle's ``score_thresh`` keeps candidates for FROC and defines no
finding, so a site must set ``report_threshold`` (refused at start without it, no default). None of
radnode's own postprocessing (lung mask, nested-box fusion, HU measurement) runs on its boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.bundle import BundleError
from pipelines.bundle_runner import BundleRunner, affine_lps
from pipelines.nodule.measure import voxel_window
from pipelines.volume import Volume

#: The detector's own box mode (``RetinaNetDetector`` returns StandardMode boxes).
DETECTOR_BOX_MODE = "xyzxyz"


@dataclass(frozen=True)
class BundleBox:
    """One box the bundle returned: LPS corners (low, high), score and class index."""

    low_lps: np.ndarray
    high_lps: np.ndarray
    score: float
    label: int

    @property
    def center_lps(self) -> np.ndarray:
        center: np.ndarray = (self.low_lps + self.high_lps) / 2.0
        return center

    @property
    def size_mm(self) -> np.ndarray:
        size: np.ndarray = self.high_lps - self.low_lps
        return size


@dataclass
class BundleDetector:
    """A loaded detection bundle: ``detect(volume)`` gives its postprocessed boxes in LPS."""

    runner: BundleRunner
    report_threshold: float
    box_mode: str
    #: True when the postprocessing's world coordinates are LPS (affine_lps_to_ras undone).
    world_lps: bool
    box_key: str
    score_key: str
    label_key: str

    @classmethod
    def load(cls, folder: Path, device: str, report_threshold: float | None) -> BundleDetector:
        runner = BundleRunner.load(folder, device)
        where = runner.bundle.folder
        if report_threshold is None:
            raise BundleError(
                f"{where}: the bundle defines no threshold for reporting a nodule (its score_thresh keeps "
                "candidates); set report_threshold in [pipelines.nodule-detection] options"
            )
        config = runner.bundle.config
        if "num_classes" in config and int(runner.bundle.parser.get_parsed_content("num_classes")) != 1:
            raise BundleError(f"{where}: num_classes is not 1; radnode reports one class, lung nodule")
        to_world = _find(runner.postprocessing, "AffineBoxToWorldCoordinated")
        if to_world is None:
            raise BundleError(
                f"{where}: postprocessing has no AffineBoxToWorldCoordinated; radnode places boxes from "
                "world coordinates, not from the resampled image's voxel indices"
            )
        converter = _find(runner.postprocessing, "ConvertBoxModed", last=True)
        mode = converter.converter.dst_mode if converter is not None else DETECTOR_BOX_MODE
        inferer = runner.inferer
        detector = getattr(inferer, "detector", None)
        box_key = str(getattr(detector, "target_box_key", "box"))
        label_key = str(getattr(detector, "target_label_key", "label"))
        score_key = str(getattr(detector, "pred_score_key", f"{label_key}_scores"))
        world_lps = bool(to_world.affine_lps_to_ras) == (runner.input_space == "RAS")
        return cls(runner, float(report_threshold), _mode_name(mode), world_lps, box_key, score_key, label_key)

    def detect(self, volume: Volume) -> list[BundleBox]:
        """Every box the bundle's postprocessing returns, best first (the caller applies the threshold)."""
        from monai.data.box_utils import convert_box_mode

        array_xyz = np.transpose(volume.array, (2, 1, 0))
        image = self.runner.loader_image(array_xyz, affine_lps(volume.origin, volume.spacing, volume.direction))
        result = self.runner.run(image)
        boxes = torch.as_tensor(result[self.box_key]).float().cpu()
        if len(boxes) == 0:
            return []
        corners = np.asarray(convert_box_mode(boxes, src_mode=self.box_mode, dst_mode=DETECTOR_BOX_MODE))
        low, high = corners[:, :3].astype(np.float64), corners[:, 3:].astype(np.float64)
        if not self.world_lps:
            low, high = low * [-1, -1, 1], high * [-1, -1, 1]
        low, high = np.minimum(low, high), np.maximum(low, high)
        scores = torch.as_tensor(result[self.score_key]).float().cpu().numpy()
        labels = torch.as_tensor(result[self.label_key]).cpu().numpy().astype(int)
        order = np.argsort(-scores, kind="stable")
        return [BundleBox(low[n], high[n], float(scores[n]), int(labels[n])) for n in order]

    @property
    def label(self) -> str:
        return self.runner.label


def box_mask(volume: Volume, box: BundleBox) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """The source voxels whose centres lie in the box: (window, mask); None when none do."""
    corners = np.array([[x, y, z] for x in (box.low_lps[0], box.high_lps[0])
                        for y in (box.low_lps[1], box.high_lps[1]) for z in (box.low_lps[2], box.high_lps[2])])
    index = volume.lps_to_kji(corners)
    start = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, volume.array.shape)
    if np.any(stop <= start):
        return None
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(start, stop)], indexing="ij")
    lps = volume.kji_to_lps(np.stack(grids, axis=-1).astype(np.float64))
    mask = np.all((lps >= box.low_lps) & (lps <= box.high_lps), axis=-1)
    if not mask.any():
        return None
    return voxel_window(start, stop), mask


def _find(compose: Any, name: str, last: bool = False) -> Any:
    found = [t for t in getattr(compose, "transforms", ()) if type(t).__name__ == name]
    return (found[-1] if last else found[0]) if found else None


def _mode_name(mode: Any) -> str:
    """A box mode class or instance as its string name (``xyzxyz``, ``cccwhd``, ...)."""
    from monai.data.box_utils import get_boxmode

    return str(get_boxmode(mode).get_name(3))
