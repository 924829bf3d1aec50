"""Rigid alignment of each contrast of a study onto the reference contrast.

The patient moves between series, so DICOM geometry alone leaves millimetres of misalignment: each
contrast is registered rigidly (Euler, Mattes mutual information as intensities differ, a pyramid)
from the scanner geometry, not image centres (fields of view differ). A tumor from misaligned
channels is wrong without looking wrong, so edges must align (``MIN_EDGE_ALIGNMENT``), heads
overlap within the common field of view (``MIN_OVERLAP``) and motion stay within bounds; a failed
check raises ``RegistrationError`` and the contrast is left out. Series on one grid of one frame
of reference are not registered: that could only add error. Figures: docs/tumor.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Dice of the head masks below which an alignment is refused.
MIN_OVERLAP = 0.85
#: Edge alignment below which an alignment is refused (about 3 mm off; 1/3 = no relation).
MIN_EDGE_ALIGNMENT = 0.5
#: Grid (mm) and smoothing (mm) of the edge check: the model's scale, not the scanner's.
CHECK_SPACING = 2.0
CHECK_SMOOTHING_MM = 1.5
#: Largest plausible patient motion between series of one session.
MAX_ROTATION_DEG = 25.0
MAX_TRANSLATION_MM = 40.0
#: Pyramid: voxel size (mm) the reference is shrunk to at each level, and Gaussian smoothing
#: (voxels of that level). The finest level is 1.5 mm: finer costs seconds per contrast and
#: changes the result by a tenth of a millimetre on the test data.
LEVELS_MM = (6.0, 3.0, 1.5)
SMOOTHING = (2.0, 1.0, 0.0)
SAMPLING = 0.05
SEED = 1234


class RegistrationError(RuntimeError):
    """A contrast could not be aligned to the reference; the message says which and how badly.

    ``problems`` are the failed checks alone ("head overlap 0.41 < 0.85"), short enough for the
    note that tells a report's reader why the contrast was left out.
    """

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            f"the {name} series could not be aligned to the reference ({'; '.join(problems)}): check that "
            "it belongs to the same patient and session and covers the head, or leave it out of the route"
        )


@dataclass(frozen=True)
class Alignment:
    """The rigid transform (reference point -> moving point) and the quality measures it achieved."""

    transform: sitk.Euler3DTransform
    overlap: float
    edge_alignment: float

    @property
    def rotation_deg(self) -> float:
        matrix = np.array(self.transform.GetMatrix()).reshape(3, 3)
        return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(matrix) - 1) / 2))))

    @property
    def translation_mm(self) -> float:
        """Displacement of the reference's centre, the motion a reader would see."""
        center = np.array(self.transform.GetCenter())
        return float(np.linalg.norm(np.array(self.transform.TransformPoint(center.tolist())) - center))


def head_mask(image: sitk.Image) -> sitk.Image:
    """Foreground of an MR volume: nonzero if skull-stripped, else above the Otsu threshold."""
    array = sitk.GetArrayViewFromImage(image)
    if np.mean(array == 0) >= 0.2:
        mask: sitk.Image = sitk.Cast(image != 0, sitk.sitkUInt8)
    else:
        mask = sitk.OtsuThreshold(image, 0, 1)
    return mask


def overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Dice of the reference's head mask and the moving head mask carried onto the reference,
    over the part of the reference inside the moving series' field of view."""
    carried = sitk.Resample(head_mask(moving), fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    b = sitk.GetArrayFromImage(carried).astype(bool)
    field = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    field.CopyInformation(moving)
    covered = sitk.GetArrayFromImage(
        sitk.Resample(field, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)).astype(bool)
    a = sitk.GetArrayFromImage(head_mask(fixed)).astype(bool) & covered
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 0.0


def _coarse_grid(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` resampled to ``spacing`` mm (never finer than it is), same orientation and extent."""
    new_spacing = [max(spacing, s) for s in image.GetSpacing()]
    size = [max(int(round(n * s / t)), 1) for n, s, t in zip(image.GetSize(), image.GetSpacing(), new_spacing)]
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), new_spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)


def edge_alignment(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Edge-strength-weighted mean squared cosine between the two images' gradients over the brain."""
    grid = _coarse_grid(fixed, CHECK_SPACING)
    carried = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), grid, transform, sitk.sitkLinear, 0.0)
    inside = sitk.GetArrayFromImage(sitk.BinaryErode(head_mask(grid), [2, 2, 2])).astype(bool)
    g1, g2 = (np.stack(np.gradient(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(im, CHECK_SMOOTHING_MM))))
              for im in (grid, carried))
    n1, n2 = (g1**2).sum(axis=0), (g2**2).sum(axis=0)
    weight = np.sqrt(n1 * n2) * inside
    if weight.sum() == 0:
        return 0.0
    cosine2 = (g1 * g2).sum(axis=0) ** 2 / (n1 * n2 + 1e-12)
    return float((cosine2 * weight).sum() / weight.sum())


def register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    """Rigid transform taking reference (fixed) points to moving points, by mutual information."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    size = np.array(fixed.GetSize()) - 1
    center = fixed.TransformContinuousIndexToPhysicalPoint((size / 2.0).tolist())
    initial = sitk.Euler3DTransform()
    initial.SetCenter(center)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    finest = min(fixed.GetSpacing())
    method.SetShrinkFactorsPerLevel([max(1, round(level / finest)) for level in LEVELS_MM])
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    result = method.Execute(fixed, moving)
    final = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetBackTransform()
                                  if isinstance(result, sitk.CompositeTransform) else result)
    return final


def align(fixed: sitk.Image, moving: sitk.Image, name: str) -> Alignment:
    """Register ``moving`` (contrast ``name``) to the reference and check the result."""
    transform = register(fixed, moving)
    alignment = Alignment(transform=transform, overlap=overlap(fixed, moving, transform),
                          edge_alignment=edge_alignment(fixed, moving, transform))
    problems = []
    if alignment.edge_alignment < MIN_EDGE_ALIGNMENT:
        problems.append(f"edge alignment {alignment.edge_alignment:.2f} < {MIN_EDGE_ALIGNMENT}")
    if alignment.overlap < MIN_OVERLAP:
        problems.append(f"head overlap {alignment.overlap:.2f} < {MIN_OVERLAP}")
    if alignment.rotation_deg > MAX_ROTATION_DEG:
        problems.append(f"rotation {alignment.rotation_deg:.1f} deg > {MAX_ROTATION_DEG}")
    if alignment.translation_mm > MAX_TRANSLATION_MM:
        problems.append(f"shift {alignment.translation_mm:.1f} mm > {MAX_TRANSLATION_MM}")
    if problems:
        raise RegistrationError(name, problems)
    return alignment
