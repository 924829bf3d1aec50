"""One storage order for every contrast, so that how a scanner ordered its voxels changes nothing.

The same acquisition can be stored with its rows, columns or slices in either direction, or rows
and columns swapped: the voxel at each patient position is the same, so the answer must be. Yet
brain extraction fills holes slice by slice along the array's first axis, registration samples
voxels by index with a fixed seed, and a grid resampled from the array's first corner lands on
other points: each saw another study in each storage order (issue #65: FLAIR left out in two
orders and used in two others, edema 28-42 mL).

Every contrast is therefore put in one storage order, ``CANONICAL``, before any stage
(``canonical``): axes permuted and flipped only (``DICOMOrient``), no interpolation, so no voxel
value changes. Its geometry is then rounded to ``GEOMETRY_DECIMALS``: DICOM writes positions as
decimal text (often 4 decimals), so one acquisition stored in two orders has origins up to
0.0002 mm apart once flipped back (TCGA-FG-6692, eight orders), and registration is sensitive
enough to that to give other masks (edema 21.0 against 25.8 mL). Rounding the origin to 0.1 mm
(a shift of at most 0.05 mm, a twentieth of a voxel) makes them one grid unless a coordinate
lies within 0.0002 mm of a rounding boundary (about 1 in 250 per coordinate; on that study the
nearest was 0.006 mm away; 0.01 mm rounding put the FLAIR's z astride a boundary).
Results are computed on the reference contrast in that order and taken back to the reference
series' own order (``to_source``) for the SEG, the SR and the key images, again by permutation
alone.
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
