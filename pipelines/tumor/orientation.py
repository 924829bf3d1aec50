"""One storage order for every contrast, so that how a scanner ordered its voxels changes nothing.

The voxel at each patient position does not depend on storage order, yet brain extraction (slice
by slice), registration (sampling by index) and resampling (from the first corner) each saw another
study in each order (issue #65). So every contrast is put in ``CANONICAL`` order first
(``canonical``: permuted and flipped only, no voxel value changes) and its geometry rounded to
``GEOMETRY_DECIMALS``, since decimal DICOM positions leave flipped-back origins a hair apart and
registration answers to that. Results go back to the reference series' own order (``to_source``)
by permutation alone. The measurements behind the rounding: docs/tumor.md.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: Columns to the patient's left, rows to posterior, slices to superior (an axial series as most
#: scanners store it).
CANONICAL = "LPS"
#: Decimals kept of the origin (mm), spacing (mm) and direction cosines in that order.
GEOMETRY_DECIMALS = (1, 5, 5)
#: Geometry tolerance (mm, and direction cosines) within which a grid taken back is the source's:
#: the rounding above (0.05 mm) and the spacing's rounding carried across the grid, with margin.
TOLERANCE = 0.1


def canonical(image: sitk.Image) -> sitk.Image:
    """``image`` with its axes permuted and flipped into ``CANONICAL`` order, its geometry rounded
    to ``GEOMETRY_DECIMALS``; values unchanged."""
    oriented: sitk.Image = sitk.DICOMOrient(image, CANONICAL)
    origin, spacing, direction = GEOMETRY_DECIMALS
    oriented.SetOrigin(tuple(round(v, origin) for v in oriented.GetOrigin()))
    oriented.SetSpacing(tuple(round(v, spacing) for v in oriented.GetSpacing()))
    oriented.SetDirection(tuple(round(v, direction) for v in oriented.GetDirection()))
    return oriented


def to_source(array: np.ndarray, canonical_grid: sitk.Image, source: sitk.Image) -> np.ndarray:
    """``array`` on ``canonical_grid`` (the source put in ``CANONICAL`` order) back in the source's
    own storage order, as a (k, j, i) array of the source's shape."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(canonical_grid)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(source.GetDirection())
    back = sitk.DICOMOrient(image, code)
    if not same_grid(back, source):
        raise ValueError(f"the {CANONICAL} grid does not map back onto the source grid; "
                         "this series' orientation is not a permutation of the axes")
    result: np.ndarray = sitk.GetArrayFromImage(back)
    return result


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """The same voxels at the same patient positions: size, spacing, origin and direction."""
    return (a.GetSize() == b.GetSize()
            and bool(np.allclose(a.GetSpacing(), b.GetSpacing(), atol=TOLERANCE))
            and bool(np.allclose(a.GetOrigin(), b.GetOrigin(), atol=TOLERANCE))
            and bool(np.allclose(a.GetDirection(), b.GetDirection(), atol=TOLERANCE)))
