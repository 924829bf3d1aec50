"""A simulated MITA-LCD (CCT189) phantom study, so that low-contrast detectability runs without the toolbox.

The denoiser is judged by the LG-CHO of ``lcd.py`` on the FDA LCD-CT toolbox's images
(DIDSR/LCD_CT @fe94e61, CC0), but CI does not have them. This module makes a study like theirs
with the project's own CT noise simulator (``noise.py``): the noise-free phantom, with and
without its four low-contrast discs, plus independent noise draws at a dose fraction.

Geometry, read off the toolbox's own ground truth (``data/small_dataset/fbp/ground_truth.mhd``),
not off its phantom-creation scripts: those describe the adult set-up (200 mm phantom, discs 40 mm
from the centre, 340 mm field of view on 512 pixels), but the small data set was made with
DIDSR/pediatricIQphantoms' ``CCT189`` at its default size. Its truth has a water cylinder of
232.6 pixels across, disc centres 46 pixels from the image centre and disc areas of 4.7, 7.8, 10.9
and 15.5 pixels' diameter: a 150 mm phantom with the discs at 0.4 of its radius (30 mm) and at their
standard 3, 5, 7 and 10 mm, on a field of view of 110 % of the phantom (165 mm / 256 = 0.645 mm
pixels), pediatricIQphantoms' rule. The adult geometry is ``cct189_truth``'s arguments away.

Noise: ``noise.SliceScan`` projects the noise-free phantom once and reconstructs the noise of
independent Poisson scans of it, at ``dose_fraction`` of the full-dose photons, with a kernel
family's texture; each realisation is the truth plus one such noise image. The full-dose photons
per family (``FULL_DOSE_PHOTONS``) are calibrated (``calibrated_photons``) so that the water noise
at 100 % dose is the toolbox's FBP at 100 % (``TOOLBOX_FULL_DOSE_WATER_SD_HU``); 10 % and 55 %
then follow from the photon statistics, as the toolbox's do (measured 75.6 and 32.5 HU, 3.15 and
1.36 times 100 %'s, against sqrt(10) and sqrt(1/0.55)).

What differs from the toolbox's images: the discs are not blurred by a reconstruction kernel
(only the noise is reconstructed), the beam is parallel rather than fan-shaped, and the noise
texture is a family's (``noise.FAMILY_APODIZATION``) rather than MIRT's 'hanning,2.05' window. No
family has the toolbox's texture: its noise power (32-pixel ROIs of the central water) peaks at
0.25 cycles/mm with half of it below 0.44; the sharp family's peaks at 0.54 (half below 0.54),
the medium family's at 0.20 (0.39).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from pipelines.denoise.kernels import FAMILIES
from training.denoise.lcd import Array, Insert, find_inserts
from training.denoise.noise import ELECTRONIC_NOISE_COUNTS, SliceScan

#: The toolbox's small data set: a 150 mm water cylinder on a 165 mm field of view of 256 pixels.
PHANTOM_DIAMETER_MM = 150.0
FIELD_OF_VIEW_MM = 165.0
MATRIX_PX = 256
PIXEL_MM = FIELD_OF_VIEW_MM / MATRIX_PX
#: Distance of the disc centres from the phantom's centre: 0.4 of its radius (40 mm at 200 mm).
INSERT_DISTANCE_MM = 30.0
#: Subsamples per pixel side for the partial-volume fractions, as MIRT's ``ellipse_im`` oversamples.
SUPERSAMPLING = 4
#: HU of air outside the phantom and of its water.
AIR_HU, WATER_HU = -1000.0, 0.0


@dataclass(frozen=True)
class Disc:
    """One low-contrast insert: diameter (mm), contrast to water (HU), and direction (degrees,
    counter-clockwise from the image's +x axis, with +y up the image as in MIRT)."""

    diameter_mm: float
    hu: float
    angle_deg: float


#: CCT189's discs in the toolbox's order (``lcd.MITA_INSERT_HU``): 3 mm 14 HU top right, 5 mm
#: 7 HU top left, 7 mm 5 HU bottom left, 10 mm 3 HU bottom right.
DISCS = (Disc(3.0, 14.0, 45.0), Disc(5.0, 7.0, 135.0), Disc(7.0, 5.0, 225.0), Disc(10.0, 3.0, 315.0))
#: The nominal diameter (mm) of each insert by its HU, for naming results.
INSERT_DIAMETER_MM = {disc.hu: disc.diameter_mm for disc in DISCS}

#: Noise SD (HU) of the toolbox's FBP images at 100 % dose in the central water ROI
#: (``central_water_sd``, 16 mm radius) of its 10 signal-absent images (each 23.0-24.9 HU).
TOOLBOX_FULL_DOSE_WATER_SD_HU = 23.99
#: Full-dose photons per ray for each kernel family (``noise.FAMILIES``) that give
#: ``TOOLBOX_FULL_DOSE_WATER_SD_HU`` at 100 % dose: ``calibrated_photons(family=...)`` gives
#: 185 613, 14 365 and 12 190 (to about 1 %, the precision of the SD of 100 images). The sharp
#: family needs thirteen times the photons of the others for the same SD because on 0.645 mm
#: pixels it passes noise power up to the Nyquist frequency (0.78 cycles/mm), which the medium
#: and smooth windows cut. So few photons make the electronic noise count at low dose: at 10 %
#: the sharp family's water SD is 78 HU (the toolbox's 75.6), the medium family's 99 HU.
FULL_DOSE_PHOTONS = {"sharp": 185_600.0, "medium": 14_360.0, "smooth": 12_190.0}
#: Radius of the central water ROI the noise is measured in: clear of the discs, whose nearest
#: edge is 25 mm from the centre, by more than the reach of a denoiser's smoothing.
CENTRAL_ROI_RADIUS_MM = 16.0


# --- The noise-free phantom ---------------------------------------------------------------------


def pixel_centres_mm(size: int, pixel_mm: float, supersampling: int) -> tuple[Array, Array]:
    """(x, y) in mm of the subsample centres of a ``size`` x ``size`` image, origin at its centre.

    x grows along columns and y up the rows (row 0 is the top), MIRT's orientation, so the discs
    land where the toolbox's truth has them. Shape (size * s, size * s) each.
    """
    offsets = (np.arange(size * supersampling) + 0.5) / supersampling - size / 2.0
    x = offsets * pixel_mm
    return np.broadcast_to(x[None, :], (x.size, x.size)), np.broadcast_to(-x[:, None], (x.size, x.size))


def coverage(inside: NDArray[np.bool_], supersampling: int) -> Array:
    """The share of each pixel's subsamples that lie inside: the partial-volume fraction."""
    size = inside.shape[0] // supersampling
    return np.asarray(inside.reshape(size, supersampling, size, supersampling).mean(axis=(1, 3)), np.float64)


def cct189_background(
    size: int = MATRIX_PX, pixel_mm: float = PIXEL_MM, *, diameter_mm: float = PHANTOM_DIAMETER_MM
) -> Array:
    """The noise-free phantom without its discs (HU): water in the cylinder, air around it.

    The signal-absent class of a study: the same object as ``cct189_truth`` less the discs.
    """
    x, y = pixel_centres_mm(size, pixel_mm, SUPERSAMPLING)
    water = coverage(np.hypot(x, y) < diameter_mm / 2.0, SUPERSAMPLING)
    return AIR_HU + (WATER_HU - AIR_HU) * water


def cct189_truth(
    size: int = MATRIX_PX,
    pixel_mm: float = PIXEL_MM,
    *,
    diameter_mm: float = PHANTOM_DIAMETER_MM,
    insert_distance_mm: float = INSERT_DISTANCE_MM,
) -> Array:
    """The noise-free MITA-LCD phantom (HU): the background plus the four discs, anti-aliased.

    Each disc adds its contrast times the share of a pixel it covers, as MIRT's ellipses add their
    attenuation. The defaults are the toolbox's small data set; the adult phantom of the toolbox's
    ``CT_setup.m`` is ``cct189_truth(256, 340 / 256, diameter_mm=200, insert_distance_mm=40)``.
    """
    image = cct189_background(size, pixel_mm, diameter_mm=diameter_mm)
    x, y = pixel_centres_mm(size, pixel_mm, SUPERSAMPLING)
    for disc in DISCS:
        cx = insert_distance_mm * math.cos(math.radians(disc.angle_deg))
        cy = insert_distance_mm * math.sin(math.radians(disc.angle_deg))
        image += disc.hu * coverage(np.hypot(x - cx, y - cy) < disc.diameter_mm / 2.0, SUPERSAMPLING)
    return image


def phantom_inserts() -> tuple[Insert, ...]:
    """The observer's inserts (``lcd.find_inserts``) in the truth rounded to whole HU.

    The toolbox stores its truth as integers, and the extent of a faint disc depends on it: the
    10 mm 3 HU disc's partial pixels above 2 HU reach 16 pixels across, those that round to 3 HU
    14. Rounded, this truth gives the toolbox's inserts exactly (centres and extents), so the
    observer's ROIs and channels are the same on both studies.
    """
    return find_inserts(np.round(cct189_truth()))


# --- Noisy realisations -------------------------------------------------------------------------


def realisations(
    truth: Array,
    n: int,
    dose_fraction: float,
    family: str,
    seed: int,
    *,
    full_dose_photons: float | None = None,
    pixel_mm: float = PIXEL_MM,
) -> Array:
    """``n`` noisy images (n, Y, X) of a noise-free ``truth`` at ``dose_fraction`` of full dose.

    Each is the truth plus the reconstructed noise of an independent scan with ``dose_fraction``
    of ``full_dose_photons`` (default: the family's ``FULL_DOSE_PHOTONS``) and the detector's
    electronic noise (``noise.ELECTRONIC_NOISE_COUNTS``, the same per reading at every dose, as on
    a scanner). ``SliceScan.reduced_dose`` is not used: it adds only the noise that takes an image
    already carrying full-dose noise down to the fraction (variance ``1/f - 1`` times full
    dose's), which on a noise-free truth would be too little noise, and none at all at 100 %.
    ``family`` names the noise texture (``kernels.FAMILIES``); ``seed`` fixes the draws.
    """
    if not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}: one of {', '.join(FAMILIES)}")
    photons = dose_fraction * (FULL_DOSE_PHOTONS[family] if full_dose_photons is None else full_dose_photons)
    scan = SliceScan.of(truth, pixel_mm)
    generator = torch.Generator().manual_seed(seed)
    draws = [scan.acquisition_noise(photons, family, generator, ELECTRONIC_NOISE_COUNTS) for _ in range(n)]
    return np.asarray(truth[None] + np.stack(draws), np.float64)


def simulated_study(n_per_class: int, dose_fraction: float, family: str, seed: int) -> tuple[Array, Array]:
    """(signal-present, signal-absent) stacks of ``n_per_class`` images each, toolbox geometry.

    The two classes get independent noise: their seeds are two children of ``seed``
    (``numpy.random.SeedSequence.spawn``), so no draw of one class repeats in the other, and a
    study at another ``seed`` shares no draw with this one.
    """
    present_seed, absent_seed = (int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2))
    present = realisations(cct189_truth(), n_per_class, dose_fraction, family, present_seed)
    absent = realisations(cct189_background(), n_per_class, dose_fraction, family, absent_seed)
    return present, absent


# --- Noise measure and calibration --------------------------------------------------------------


def central_water_sd(images: Array, pixel_mm: float = PIXEL_MM, radius_mm: float = CENTRAL_ROI_RADIUS_MM) -> float:
    """The noise SD (HU) in the phantom's central water disc of ``radius_mm``, pooled over images.

    Each image's own variance about its own mean (ddof 1), averaged, then the root: a denoiser's
    shift of the mean HU is not noise, and one image's SD scatters by a few percent.
    """
    _, rows, cols = images.shape
    r, c = np.mgrid[:rows, :cols]
    inside = np.hypot((r - (rows - 1) / 2.0) * pixel_mm, (c - (cols - 1) / 2.0) * pixel_mm) < radius_mm
    return math.sqrt(float(np.mean(np.var(images[:, inside], axis=1, ddof=1))))


def calibrated_photons(
    target_sd_hu: float = TOOLBOX_FULL_DOSE_WATER_SD_HU, family: str = "sharp", n: int = 100, seed: int = 20_240_301
) -> float:
    """Full-dose photons per ray whose water noise (``central_water_sd``) is ``target_sd_hu``.

    The Poisson variance scales as one over the photons, so one simulation at a reference count
    nearly gives the answer; the electronic noise, whose share does not scale so, is what a second
    simulation at that answer corrects.
    """
    photons = 1e5
    background = cct189_background()
    for _ in range(2):
        sd = central_water_sd(realisations(background, n, 1.0, family, seed, full_dose_photons=photons))
        photons *= (sd / target_sd_hu) ** 2
    return photons
