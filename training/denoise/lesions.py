"""Faint round lesions drawn into training patches, so the network learns to keep them.

A network fitted for the mean squared error on anatomy alone shrinks fine, low-contrast structure
towards its surroundings: that is what the error-optimal estimate does when such structure is rare
in training. It is what both the low-contrast detectability study (a 3 mm, 14 HU disc read a little
worse than through a Gaussian) and the 15 mm bias squares measure (training/denoise/LOG.md, "Bias against a
known truth"). Drawing discs of liver- and brain-lesion contrast into the clean slice, in input and
target alike, makes keeping them part of the error the network is fitted to.

The noise was simulated from the slice without the disc; a disc of a few tens of HU changes the
photon counts by well under a per cent, so the same noise stands for the slice with it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from training.denoise.lcd_phantom import coverage

#: Lesion diameters drawn log-uniformly (mm): the LCD phantom's 3-10 mm and a little either side.
DIAMETER_RANGE_MM = (2.0, 12.0)
#: Contrast magnitudes drawn log-uniformly (HU), either sign: from a faint brain lesion to a liver metastasis.
CONTRAST_RANGE_HU = (2.0, 30.0)
#: At most this many lesions per patch (at least one, drawn uniformly).
MAX_PER_PATCH = 3
#: A lesion's centre must lie in soft tissue of the clean slice (HU), as a liver or brain lesion does.
SOFT_TISSUE_HU = (-100.0, 200.0)
#: The reconstruction's own blur of a disc's edge (mm): the full-dose slices are FBP images.
EDGE_BLUR_MM = 0.4
#: Subsamples per pixel side for the disc's partial-volume edge.
SUPERSAMPLING = 4


def disc(size: int, centre_px: tuple[float, float], diameter_px: float) -> NDArray[np.float32]:
    """A disc's share of each pixel of a ``size`` x ``size`` patch (partial volume at the edge)."""
    offsets = (np.arange(size * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    inside = np.hypot(rows - centre_px[0], cols - centre_px[1]) < diameter_px / 2.0
    return np.asarray(coverage(inside, SUPERSAMPLING), np.float32)


def lesion_image(clean: NDArray[np.float32], pixel_mm: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """One to ``MAX_PER_PATCH`` faint discs centred in the patch's soft tissue (HU, to add to the patch).

    Zero where the patch has no soft tissue. Diameter and contrast are drawn log-uniformly, the
    sign with equal chance (hypodense and hyperdense lesions both occur).
    """
    size = clean.shape[0]
    lesions = np.zeros_like(clean, dtype=np.float32)
    candidates = np.argwhere((clean > SOFT_TISSUE_HU[0]) & (clean < SOFT_TISSUE_HU[1]))
    if not len(candidates):
        return lesions
    for _ in range(int(rng.integers(1, MAX_PER_PATCH + 1))):
        row, col = candidates[rng.integers(len(candidates))] + 0.5
        diameter_px = math.exp(rng.uniform(*np.log(DIAMETER_RANGE_MM))) / pixel_mm
        contrast = math.exp(rng.uniform(*np.log(CONTRAST_RANGE_HU))) * (1.0 if rng.random() < 0.5 else -1.0)
        lesions += contrast * disc(size, (row, col), diameter_px)
    return np.asarray(gaussian_filter(lesions, EDGE_BLUR_MM / pixel_mm), np.float32)
