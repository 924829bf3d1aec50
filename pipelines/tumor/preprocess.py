"""From aligned contrasts to the network's input tensor, and from its output back to a grid.

The network was trained on axis-aligned LPS volumes at the folder's ``[input] spacing``, so every
study is resampled onto such a grid and results back onto the reference series' grid, one
interpolation each way. MR has no absolute units, so each channel is z-scored over the brain (the
nonzero part of a skull-stripped series, else the head's Otsu foreground). No skull stripping is
done here (MODEL_CARD.md: the shipped model was trained on skull-stripped BraTS-style images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.components import component_sizes
from pipelines.tumor.contrasts import CHANNELS

#: A series with at least this share of exact zeros is taken as skull-stripped (zero = not brain).
STRIPPED_ZERO_FRACTION = 0.2
#: Network output channels, in order: tumor core, whole tumor, enhancing tumor.
REGIONS: Sequence[str] = ("TC", "WT", "ET")


def model_grid(reference: sitk.Image, spacing: float) -> sitk.Image:
    """An empty axis-aligned LPS grid at ``spacing`` mm covering the reference's field of view."""
    size = np.array(reference.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    points = np.array([reference.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners.astype(float)])
    low, high = points.min(axis=0), points.max(axis=0)
    shape = np.maximum(np.ceil((high - low) / spacing).astype(int) + 1, 1)
    grid = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
    grid.SetSpacing((spacing,) * 3)
    grid.SetOrigin(tuple(float(v) for v in low))
    return grid


def resample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None,
             nearest: bool = False) -> sitk.Image:
    """``image`` on ``grid`` through ``transform`` (grid point -> image point); zero outside."""
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), grid, transform or sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32
    )


def brain_mask(reference: np.ndarray) -> np.ndarray:
    """Voxels that count as brain for normalization: nonzero if skull-stripped, else head foreground."""
    if np.mean(reference == 0) >= STRIPPED_ZERO_FRACTION:
        return reference > 0
    image = sitk.GetImageFromArray(reference.astype(np.float32))
    foreground = sitk.OtsuThreshold(image, 0, 1)
    return sitk.GetArrayFromImage(foreground).astype(bool)


def zscore_channels(channels: Mapping[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """(C, z, y, x) float32 network input: z-score per present channel over ``mask``, zeros elsewhere.

    Missing contrasts stay all-zero channels, which is how training presented them.
    """
    shape = next(iter(channels.values())).shape
    stacked = np.zeros((len(CHANNELS), *shape), dtype=np.float32)
    if not mask.any():
        return stacked
    for c, role in enumerate(CHANNELS):
        if role not in channels:
            continue
        values = channels[role][mask]
        std = float(values.std())
        stacked[c][mask] = (values - float(values.mean())) / (std if std > 0 else 1.0)
    return stacked


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """BraTS labels (1 necrosis/non-enhancing core, 2 edema, 4 enhancing) from TC/WT/ET masks.

    The nesting ET in TC in WT is enforced by priority, the usual BraTS post-processing: a voxel
    called ET is core and tumor even where those channels fell below threshold.
    """
    tc, wt, et = (regions[i].astype(bool) for i in range(3))
    labels = np.zeros(tc.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    return labels


def fill_enclosed_core(labels: np.ndarray) -> np.ndarray:
    """``labels`` with holes in the core, slice by slice, labelled necrosis (1).

    In the BraTS protocol the necrotic centre is what the enhancing rim encloses; the shipped
    model finds the rim far better than the dark centre, which it calls edema. Slices are the
    array's first axis: axial planes in the pipeline's LPS order (``orientation``).
    """
    core = np.isin(labels, (1, 4))
    enclosed = np.stack([ndimage.binary_fill_holes(plane) for plane in core]) & ~core
    return np.where(enclosed, np.uint8(1), labels).astype(labels.dtype)


def drop_tumors_without_core(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every connected tumor (labels > 0, 26-connected) that holds no core voxel removed.

    A glioma's edema surrounds a core; coreless FLAIR/T2-bright tissue is far more often something
    else (white-matter disease, CSF partial volume), which the shipped model calls edema. Its
    folder asks for this (``[output] require_core``), applied only when T1c, showing the core, came.
    """
    components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    cored = np.unique(components[np.isin(labels, (1, 4))])
    return np.where(np.isin(components, cored[cored > 0]), labels, 0).astype(labels.dtype)


def drop_small_tumors(labels: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    """``labels`` without the connected tumors (labels > 0, 26-connected) smaller than ``min_ml``.

    A healthy brain must read "no tumor". The network leaves specks of a few voxels on normal
    tissue (vessels, partial volume at the cortex); a glioma this pipeline is for is larger than
    the bound the project set on false-positive volume per healthy brain (1 mL), so
    anything smaller is not reported.
    """
    if min_ml <= 0:
        return labels
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return labels
    sizes = component_sizes(components, count) * voxel_ml
    small = np.nonzero(sizes < min_ml)[0] + 1
    return np.where(np.isin(components, small), 0, labels).astype(labels.dtype)


def regions_from_labels(labels: np.ndarray) -> np.ndarray:
    """(3, ...) TC/WT/ET masks from BraTS labels 1/2/4: what the network is trained to output."""
    return np.stack([np.isin(labels, (1, 4)), labels > 0, labels == 4]).astype(np.float32)


def dice(predicted: np.ndarray, reference: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice of two masks (1.0 when both are empty), leaving out ``ignore`` voxels."""
    p, r = predicted.astype(bool), reference.astype(bool)
    if ignore is not None:
        p, r = p & ~ignore, r & ~ignore
    total = p.sum() + r.sum()
    return 1.0 if total == 0 else float(2 * (p & r).sum() / total)


def region_dice(predicted_labels: np.ndarray, reference_labels: np.ndarray,
                ignore: np.ndarray | None = None) -> dict[str, float]:
    """Dice per BraTS evaluation region (TC, WT, ET) and per written sub-region (NCR, ED) of two label maps.

    ET is both a region and a sub-region (label 4); NCR is label 1 (necrosis / non-enhancing
    core) and ED label 2 (edema), the other two segments of the SEG.
    """
    p, r = regions_from_labels(predicted_labels), regions_from_labels(reference_labels)
    scores = {name: round(dice(p[i], r[i], ignore), 4) for i, name in enumerate(REGIONS)}
    for name, label in (("NCR", 1), ("ED", 2)):
        scores[name] = round(dice(predicted_labels == label, reference_labels == label, ignore), 4)
    return scores
