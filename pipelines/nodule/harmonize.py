"""One detector for every reconstruction: a sharp-kernel series is softened to a standard kernel's
noise before anything is found or measured in it.

A sharp kernel carries several times a smooth one's fine noise, and every fixed HU threshold of
the candidate stage and the measurement answers to it (a mass boxed whole on B40f was boxed only
through a ground-glass rim on B70f). Kernel names are vendor-specific, so the kernel is read from
the image: the **noise index**, a robust SD of an in-plane high-pass over soft tissue. A series
above ``SHARP_NOISE_HU`` is smoothed in-plane with the smallest of ``SIGMAS_MM`` reaching
``TARGET_NOISE_HU``; slices are never mixed. Results are still written on the original images.
The measured noise indices: docs/nodule.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipelines.processes import usable_cores
from pipelines.threads import map_on_cores
from pipelines.volume import Volume

#: Above this noise index (HU) a series is a sharp reconstruction: a standard kernel's is 15-17.
SHARP_NOISE_HU = 20.0
#: A sharp series is smoothed until its noise index is at most this (a standard kernel's).
TARGET_NOISE_HU = 15.0
#: In-plane Gaussian sigmas (mm) tried in turn; the largest is used if none reaches the target.
SIGMAS_MM = (0.5, 0.7, 1.0, 1.4, 2.0)
#: Slices, evenly spaced, on which the noise index is measured.
NOISE_SLICES = 24
#: Soft tissue (HU), where the noise index is measured: free of lung edges and bone.
SOFT_TISSUE_HU = (-100.0, 150.0)


@dataclass(frozen=True)
class Harmonized:
    """What the detector sees: the series, softened when it was sharp, and how."""

    volume: Volume
    #: the in-plane Gaussian applied (mm), 0 when the series was left as it is
    sigma_mm: float
    #: noise index (HU) of the series as acquired and as the detector sees it
    noise_hu: float
    seen_noise_hu: float


def harmonize(volume: Volume) -> Harmonized:
    """``volume`` as the detector should see it: softened to ``TARGET_NOISE_HU`` when sharp.

    The sigma is chosen on the sampled slices; only the chosen one smooths the whole series."""
    pixel_mm = (volume.spacing[1], volume.spacing[0])  # (row, column) spacing
    sample = _sample(volume.array)
    noise = noise_index(sample)
    if noise <= SHARP_NOISE_HU:
        return Harmonized(volume, 0.0, noise, noise)
    for sigma in SIGMAS_MM:
        seen = noise_index(_softened(sample, sigma, pixel_mm))
        if seen <= TARGET_NOISE_HU:
            break
    softened = dataclasses.replace(volume, array=_softened(volume.array, sigma, pixel_mm))
    return Harmonized(softened, sigma, noise, seen)


def noise_index(slices: np.ndarray) -> float:
    """The robust SD (HU) of the in-plane high-pass of ``slices`` (k, j, i) over soft tissue; 0
    without soft tissue."""
    high_pass = slices - ndi.uniform_filter(slices, size=(1, 3, 3))
    tissue = (slices > SOFT_TISSUE_HU[0]) & (slices < SOFT_TISSUE_HU[1])
    if not tissue.any():
        return 0.0
    return float(1.4826 * np.median(np.abs(high_pass[tissue])))


def _sample(array: np.ndarray) -> np.ndarray:
    """Up to ``NOISE_SLICES`` evenly spaced slices of ``array``, as float32."""
    picked = np.linspace(0, array.shape[0] - 1, min(NOISE_SLICES, array.shape[0]))
    sample: np.ndarray = array[np.round(picked).astype(int)].astype(np.float32)
    return sample


def _softened(array: np.ndarray, sigma_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``array`` (float32) with each slice smoothed by an in-plane Gaussian of ``sigma_mm``.

    No slice needs another, so slabs of slices are filtered at once on every core, each into its
    part of the result."""
    sigmas = (0.0, sigma_mm / pixel_mm[0], sigma_mm / pixel_mm[1])
    smoothed = np.empty(array.shape, dtype=np.float32)
    bounds = np.linspace(0, len(array), min(len(array), 4 * usable_cores()) + 1).astype(int)

    def smooth(slab: tuple[int, int]) -> None:
        ndi.gaussian_filter(array[slab[0]:slab[1]], sigmas, output=smoothed[slab[0]:slab[1]])

    map_on_cores(smooth, list(zip(bounds[:-1], bounds[1:])))
    return smoothed
