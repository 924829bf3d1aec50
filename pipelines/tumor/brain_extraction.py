"""Brain extraction: which voxels of a brain MR series are brain, for skull-on and skull-stripped series.

The model was trained on skull-stripped images and calls scalp fat and skull base "tumor" on a
skull-on series, so every study is reduced to its brain first and nothing outside it is reported.
A skull-stripped series (one constant background) keeps everything else, holes filled. A skull-on
one goes through a classical morphological pipeline at any thickness and orientation: the head by
Otsu, a tissue band as ratios to the head centre's median (MR has no offset, so one band fits T1,
T1c, T2, FLAIR), an in-plane erosion cutting brain from scalp, geodesic reconstruction, enclosed
CSF filled (as HD-BET and BraTS masks hold it). Radii are physical. Steps: docs/tumor.md.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import convex_hull_image

from pipelines.components import component_sizes
from pipelines.distance import inside_distance

#: A series with at least this share of voxels at exactly 0 (or its minimum) may be skull-stripped.
STRIPPED_BACKGROUND_SHARE = 0.2
#: No brain is larger (mL): a "stripped" foreground beyond it is a head with its air zeroed.
MAX_BRAIN_ML = 2500.0
#: In-plane spacing (mm) the skull-on pipeline works at (never finer than the series).
WORK_SPACING_MM = 1.5
#: Depth (mm) of the head's centre used to learn the brain's intensity.
CORE_DEPTH_MM = 25.0
#: Tissue band, as ratios to the median intensity of the head's centre.
BAND = (0.65, 1.55)
#: In-plane erosion (mm) that separates the brain from the scalp.
ERODE_MM = 4.5
#: Depth (mm, 3D) under the head's surface where the brain can begin: scalp and skull are thicker.
SCALP_MM = 12.0
#: Closing radius (mm) that takes sulcal CSF at the surface into the brain.
CLOSE_MM = 3.0
#: Gaussian smoothing (mm) of the mask's outline: the brain's surface is smooth at the scale of its
#: sulci (masks of the field run over them), a voxel-wise threshold is not.
OUTLINE_SMOOTH_MM = 3.5
#: Gaussian smoothing (mm) of the image before thresholding, against noise and texture.
SMOOTH_MM = 1.0


def extract_brain(image: sitk.Image) -> sitk.Image:
    """0/1 brain mask (UInt8) on the grid of ``image``, skull-on or skull-stripped."""
    array = np.asarray(sitk.GetArrayViewFromImage(image))
    background = stripped_background(array, float(np.prod(image.GetSpacing())) / 1000.0)
    if background is not None:
        result = sitk.GetImageFromArray(_fill_holes(array != background).astype(np.uint8))
        result.CopyInformation(image)
        return result
    work = _working_grid(image)
    mask = sitk.GetImageFromArray(skull_on_brain(work).astype(np.float32))
    mask.CopyInformation(work)
    # Linear interpolation of the 0/1 mask, cut at one half: a smooth outline on the fine grid.
    back = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask_on_image: sitk.Image = sitk.Cast(back >= 0.5, sitk.sitkUInt8)
    return mask_on_image


def stripped_background(array: np.ndarray, voxel_ml: float) -> float | None:
    """The background value of a skull-stripped series, or None for a skull-on one.

    Stripped: exact zeros (or the minimum, in a z-scored image) fill at least
    ``STRIPPED_BACKGROUND_SHARE`` of the volume and what is left is no larger than a brain
    (``MAX_BRAIN_ML``); a skull-on series whose scanner zeroed the air still holds a head.
    """
    if array.size == 0:
        return None
    candidates = {0.0: float(np.mean(array == 0)), float(array.min()): float(np.mean(array == array.min()))}
    value, share = max(candidates.items(), key=lambda item: item[1])
    if share < STRIPPED_BACKGROUND_SHARE or (1 - share) * array.size * voxel_ml > MAX_BRAIN_ML:
        return None
    return value


def _working_grid(image: sitk.Image) -> sitk.Image:
    """``image`` as float32 at no finer than ``WORK_SPACING_MM``, same orientation and extent."""
    spacing = [max(WORK_SPACING_MM, s) for s in image.GetSpacing()]
    size = [max(int(round(n * s / t)), 1) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    origin = image.TransformContinuousIndexToPhysicalPoint(
        [(t / s - 1) / 2 for s, t in zip(image.GetSpacing(), spacing)])
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         origin, spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)


def _radius(mm: float, spacing: tuple[float, ...]) -> list[int]:
    """Kernel radius in voxels per image axis (x, y, z) for a physical radius; 0 on thick axes."""
    return [int(mm // s) for s in spacing]


def _ball(radius_xyz: list[int], spacing: tuple[float, ...]) -> np.ndarray:
    """Ellipsoidal structuring element (z, y, x) of the given physical radius."""
    rz, ry, rx = radius_xyz[2], radius_xyz[1], radius_xyz[0]
    z, y, x = np.ogrid[-rz:rz + 1, -ry:ry + 1, -rx:rx + 1]
    sx, sy, sz = spacing
    r = max(radius_xyz[0] * sx, radius_xyz[1] * sy, radius_xyz[2] * sz, 1e-6)
    return (x * sx) ** 2 + (y * sy) ** 2 + (z * sz) ** 2 <= r ** 2 + 1e-6


def skull_on_brain(work: sitk.Image) -> np.ndarray:
    """Brain mask (z, y, x bool) of a skull-on series on its working grid."""
    spacing = work.GetSpacing()
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(work, SMOOTH_MM))
    head = _head(work)
    if not head.any():
        return head
    core = ndimage.binary_erosion(head, _ball(_radius(CORE_DEPTH_MM, spacing), spacing))
    if core.sum() < 100:
        core = head
    level = float(np.median(smooth[core]))
    depth = inside_distance(head, spacing[::-1])
    band = head & (depth >= SCALP_MM) & (smooth >= BAND[0] * level) & (smooth <= BAND[1] * level)
    seed = ndimage.binary_erosion(band, _ball(_radius(ERODE_MM, spacing), spacing))
    components, count = ndimage.label(seed)
    if count == 0:
        return np.zeros_like(head)
    overlap = component_sizes(components, count, core)
    sizes = component_sizes(components, count)
    best = 1 + int(np.argmax(overlap + 1e-3 * sizes))
    brain = components == best
    brain = ndimage.binary_dilation(brain, _ball(_radius(ERODE_MM, spacing), spacing)) & band
    brain = _largest(brain)
    brain = _fill_holes(brain)
    close = _ball(_radius(CLOSE_MM, spacing), spacing)
    brain = ndimage.binary_closing(np.pad(brain, [(s, s) for s in close.shape]), close)[
        tuple(slice(s, -s) for s in close.shape)]
    brain = _fill_holes(brain & head)
    if OUTLINE_SMOOTH_MM > 0:
        smooth_mask = ndimage.gaussian_filter(brain.astype(np.float32),
                                              [OUTLINE_SMOOTH_MM / s for s in spacing[::-1]])
        brain = np.asarray(smooth_mask >= 0.5)
    return brain


def _head(work: sitk.Image) -> np.ndarray:
    """The head: Otsu foreground, its largest component, each slice its convex hull.

    The hull, not the filled foreground: the dark skull and sinuses open the scalp's ring in
    some slices, and the brain's depth must be measured from the scalp, not from the bone.
    """
    foreground = _largest(sitk.GetArrayFromImage(sitk.OtsuThreshold(work, 0, 1)).astype(bool))
    return np.stack([convex_hull_image(plane) if plane.any() else plane for plane in foreground])


def _largest(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = component_sizes(components, count)
    return np.asarray(components == 1 + int(np.argmax(sizes)))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D and in every slice (array axis 0): a slice-wise hole open in 3D is still CSF."""
    filled = ndimage.binary_fill_holes(mask)
    return np.stack([ndimage.binary_fill_holes(plane) for plane in filled])
