"""Noise power spectra (NPS) measured in flat soft tissue of real CT slices, shared by the pipelines.

The standard estimate (e.g. ICRU Report 87; Boedeker et al., Med Phys 2007): square ROIs where the
anatomy is flat, each less its smooth trend, ``NPS(u, v) = |DFT(ROI)|^2 * pixel area / pixel
count`` averaged over the ROIs, then over rings of the frequency plane. The nodule pipeline's
kernel change (``training.nodule.reconstruction``) measures its kernels with it, and the
denoiser's noise model (``training.denoise.nps``) compares simulated with real noise by it:
``flat_tiles`` picks the ROIs on a real slice, ``tiles`` cuts the same ones from any image of that
slice (such as simulated noise alone), so both are measured on the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: ROI side (pixels) and the soft-tissue window a noise ROI must lie in (HU), its structure
#: (range of the ROI smoothed by ``STRUCTURE_SIGMA_PX`` after the plane fit) below ``FLAT_HU``.
ROI_PX = 32
TISSUE_HU = (-150.0, 150.0)
STRUCTURE_SIGMA_PX = 3.0
FLAT_HU = 15.0


def tiles(image: np.ndarray) -> np.ndarray:
    """The slice cut into non-overlapping ``ROI_PX`` squares, row by row: (n, ROI_PX, ROI_PX)."""
    rows, cols = (s // ROI_PX for s in image.shape)
    grid = image[: rows * ROI_PX, : cols * ROI_PX].reshape(rows, ROI_PX, cols, ROI_PX).swapaxes(1, 2)
    cut: np.ndarray = grid.reshape(-1, ROI_PX, ROI_PX).astype(np.float64)
    return cut


def flat_tiles(hu_slice: np.ndarray) -> np.ndarray:
    """Which of ``tiles(hu_slice)`` lie in flat soft tissue: a boolean per tile.

    A patient's NPS is only noise where the anatomy is flat; a tile that holds an edge, air or
    bone passes its structure into the spectrum, so it is left out."""
    cut = tiles(hu_slice)
    inside = (cut.min(axis=(1, 2)) > TISSUE_HU[0] - 200) & (cut.max(axis=(1, 2)) < TISSUE_HU[1] + 200)
    inside &= (cut.mean(axis=(1, 2)) > TISSUE_HU[0]) & (cut.mean(axis=(1, 2)) < TISSUE_HU[1])
    smooth = ndi.gaussian_filter(detrend(cut[inside]), (0, STRUCTURE_SIGMA_PX, STRUCTURE_SIGMA_PX))
    keep: np.ndarray = inside.copy()
    keep[inside] = np.ptp(smooth[:, ROI_PX // 4: -ROI_PX // 4, ROI_PX // 4: -ROI_PX // 4], axis=(1, 2)) < FLAT_HU
    return keep


def noise_rois(hu_slice: np.ndarray) -> np.ndarray:
    """Detrended ``ROI_PX`` tiles of one slice that lie in flat soft tissue: (n, ROI_PX, ROI_PX)."""
    kept: np.ndarray = detrend(tiles(hu_slice)[flat_tiles(hu_slice)])
    return kept


def detrend(rois: np.ndarray) -> np.ndarray:
    """ROIs less their least-squares quadratic surface: slow anatomy is not noise."""
    j, i = np.mgrid[:ROI_PX, :ROI_PX] / ROI_PX - 0.5
    design = np.stack([np.ones_like(i), i, j, i * i, j * j, i * j], axis=-1).reshape(-1, 6)
    flat = rois.reshape(len(rois), ROI_PX * ROI_PX)
    fit = flat @ np.linalg.pinv(design).T @ design.T
    residual: np.ndarray = (flat - fit).reshape(rois.shape)
    return residual


def rois_nps(rois: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The radial NPS of detrended ROIs: (frequency cycles/mm, HU^2 mm^2), rings one DFT step wide
    (``1 / (ROI_PX * pixel_mm)``) up to the Nyquist frequency."""
    if not len(rois):
        raise ValueError("no flat soft-tissue ROI in these slices: no NPS to measure")
    power = np.mean(np.abs(np.fft.fft2(rois)) ** 2, axis=0) * pixel_mm**2 / ROI_PX**2
    step = 1.0 / (ROI_PX * pixel_mm)
    radius = radial_frequency((ROI_PX, ROI_PX), pixel_mm)
    ring = np.rint(radius / step).astype(int)
    count = np.bincount(ring.ravel())
    keep = (count > 0) & (np.arange(len(count)) <= ROI_PX // 2)
    frequency = np.bincount(ring.ravel(), radius.ravel())[keep] / count[keep]
    return frequency, np.bincount(ring.ravel(), power.ravel())[keep] / count[keep]


def measure_nps(hu: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """One series' radial NPS on its own frequency grid: (frequency cycles/mm, HU^2 mm^2, ROIs),
    over the flat soft-tissue ROIs of every slice of ``hu`` (slices, rows, columns)."""
    rois = np.concatenate([noise_rois(s) for s in hu])
    frequency, nps = rois_nps(rois, pixel_mm)
    return frequency, nps, len(rois)


def radial_frequency(shape: Sequence[int], pixel_mm: float) -> np.ndarray:
    """|f| (cycles/mm) of each element of a 2-D DFT of ``shape``."""
    v = np.fft.fftfreq(shape[0], pixel_mm)[:, None]
    u = np.fft.fftfreq(shape[1], pixel_mm)[None, :]
    radius: np.ndarray = np.hypot(u, v)
    return radius
