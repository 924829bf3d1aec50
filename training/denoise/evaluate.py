"""Measure the denoiser on every held-out kernel and write the numbers the model card quotes.

    python -m training.denoise.evaluate --weights pipelines/denoise/weights

prints one table per held-out kernel (``data.HELD_OUT_BY_KERNEL``: Siemens B40f and B70f of
patient A0002, GE STANDARD of LIDC-IDRI-0003) and writes every number to
``<weights>/evaluation.json``. Per kernel, at simulated quarter and tenth dose (``noise``: the
scan's kVp, its tube-current modulation, electronic noise):

1. PSNR and SSIM in the HU window ``WINDOW`` against the full-dose image, for the noisy input,
   the oracle Gaussian (the sigma best on these very slices), BM3D with the true noise power
   spectrum (another oracle; on ``BM3D_ROI`` crops of a few slices, because it takes about 40 s
   per 512 x 512 slice) and the model. The model and the Gaussian are also scored on the same
   crops so that the BM3D column compares like with like.
2. Noise texture: the radially averaged noise power spectrum (NPS) of the error (output minus
   full dose) in uniform soft tissue, and how far its peak frequency moved from the input
   noise's peak. A denoiser that only removes high frequencies moves the peak down: the image
   looks plastic.
3. Bias: the largest deviation of the mean HU of any 15 mm soft-tissue square from the same
   square of the input (the bias rule: at most 2 HU, ``local_mean_deviation``), and the mean-HU
   change of lung, soft tissue and bone against full dose; and the rule against a known truth, the mean
   over draws that do not share the full-dose image's noise (``known_truth_deviation``).

Then, without simulation, the model on the real series as they are (bias rule) and on the real
sharp B70f reconstruction (noise before and after, edge sharpness, a line profile).

A ship rule compares a candidate with the shipped weights on the same noise:

    python -m training.denoise.evaluate --weights DIR --baseline pipelines/denoise/weights \
        --kernels-only --out DIR/kernels.json

gives part 1 and 2 only, with the baseline's rows beside the model's and BM3D computed once.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from pipelines.denoise.inference import DEFAULT_MODEL_DIR, Denoiser
from training.data_folder import DATA_ROOT
from training.denoise.data import (
    HELD_OUT,
    HELD_OUT_BY_KERNEL,
    HELD_OUT_SHARP,
    Scan,
    full_dose_photons,
    load_scan,
)
from training.denoise.noise import (
    ELECTRONIC_NOISE_COUNTS,
    PARALLEL,
    Beam,
    SliceScan,
    uniform_noise_std,
    uniform_region_mask,
    water_attenuation_per_mm,
)
from training.record import training_command

#: HU window of the metrics: lung to dense bone, data range 2000 HU.
WINDOW = (-1000.0, 1000.0)
DOSES = {"quarter": 0.25, "tenth": 0.1}
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
#: Seed of the held-out noise; different from any training seed's stream by construction.
EVALUATION_SEED = 20240
#: At most this many slices per held-out scan, evenly spread (LIDC-IDRI-0003 has 140).
MAX_SLICES = 30
#: BM3D runs on this many slices per scan, on a centred crop of this size (pixels).
BM3D_SLICES, BM3D_ROI = 4, 256
#: Region definitions on the (lightly smoothed) full-dose image, eroded away from edges.
REGIONS = {"lung": (-950.0, -600.0, 3), "soft tissue": (0.0, 100.0, 3), "bone": (300.0, 3000.0, 1)}
#: The bias rule: squares of this side, counted when every pixel of them is soft tissue.
BIAS_SQUARE_MM, SOFT_TISSUE_HU = 15.0, (-100.0, 200.0)
#: The known-truth bias measurement (``known_truth_deviation``): the full-dose slices smoothed by
#: this Gaussian (mm) are the truth, and this many draws at this dose fraction are averaged (32:
#: with 8 the maximum read the noise the network leaves;
#: training/denoise/LOG.md, "The known-truth measurement's noise floor").
TRUTH_SMOOTHING_MM, TRUTH_DRAWS, TRUTH_DOSE = 1.0, 32, 0.25
#: Where the noise floor after ``TRUTH_DRAWS`` exceeds this (HU, a sixth of the 1.5 HU target on
#: B70f, whose 32-draw maxima moved 0.31 HU from stream to stream), the draws go on, four times as
#: many each step, to at most ``TRUTH_MOST_DRAWS`` (LOG, "The bias target judged on 128 draws").
TRUTH_FLOOR_HU, TRUTH_MOST_DRAWS = 0.25, 128
#: Water cylinder of the bias rule: 32 cm across in a 512 x 512 slice of 0.7 mm pixels (36 cm
#: field of view).
PHANTOM_DIAMETER_MM, PHANTOM_PIXEL_MM = 320.0, 0.7
#: Photons per ray at 120 kVp: about 40 HU of noise in the centre, a quarter-dose abdomen. The
#: other voltages get the photons that leave the same count behind the cylinder's centre, as
#: automatic exposure control does (more mAs at low kV); their HU noise then differs only
#: through water's attenuation at that kV.
PHANTOM_PHOTONS_120KVP = 2.5e5
#: The water cylinder's noise texture: the family of a standard body kernel.
PHANTOM_FAMILY = "medium"
#: Square ROIs (pixels) in which the noise power spectrum is measured.
NPS_ROI = 32
#: A horizontal line on the held-out slice ``PROFILE_SLICE``: heart -> lung -> chest wall.
PROFILE_SLICE, PROFILE_ROW, PROFILE_COLUMNS = 15, 160, (300, 460)


def windowed(hu: np.ndarray) -> np.ndarray:
    clipped: np.ndarray = np.clip(hu, *WINDOW)
    return clipped


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of one slice in ``WINDOW``: both images clipped to it, peak = window width."""
    mse = float(np.mean((windowed(image) - windowed(reference)) ** 2))
    return float(10 * np.log10((WINDOW[1] - WINDOW[0]) ** 2 / mse))


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of one slice in ``WINDOW`` (skimage defaults: 7x7 uniform window)."""
    return float(structural_similarity(windowed(image), windowed(reference), data_range=WINDOW[1] - WINDOW[0]))


def mean_metrics(images: np.ndarray, references: np.ndarray) -> dict[str, float]:
    return {
        "psnr_db": float(np.mean([psnr(a, b) for a, b in zip(images, references)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(images, references)])),
    }


def gaussian(images: np.ndarray, sigma: float) -> np.ndarray:
    """The classical baseline: an in-plane Gaussian filter of ``sigma`` pixels, slice by slice."""
    return np.stack([ndimage.gaussian_filter(image, sigma) for image in images])


def best_gaussian_sigma(noisy: np.ndarray, clean: np.ndarray) -> float:
    """The sigma in ``GAUSSIAN_SIGMAS`` with the highest mean PSNR on these slices (an oracle)."""
    scores = {s: mean_metrics(gaussian(noisy, s), clean)["psnr_db"] for s in GAUSSIAN_SIGMAS}
    return max(scores, key=scores.__getitem__)


def bm3d_denoise(noisy: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """BM3D for correlated noise, given the noise's power spectrum averaged over ``noise``.

    BM3D is an evaluation-only dependency (``pip install radnode[evaluation]``). It is told the
    true spectrum of the simulated noise, so it is an upper bound of what BM3D can do.
    """
    try:
        if not hasattr(np, "trapz"):  # bm3d 4.0 calls np.trapz, which numpy 2.4 removed
            np.trapz = np.trapezoid  # type: ignore[attr-defined]
        import bm3d  # type: ignore[import-untyped]  # bm3d ships no type hints (no py.typed)
    except ImportError as exc:
        raise RuntimeError("BM3D needs the evaluation extra: pip install 'radnode[evaluation]'") from exc
    scale = 1000.0  # HU -> the units BM3D works in (any scale works if the PSD matches)
    periodogram = np.mean([np.abs(np.fft.fft2(n / scale)) ** 2 for n in noise], axis=0)
    # A few periodograms scatter by 100 % per frequency; smoothing (periodic) gives the spectrum.
    psd = ndimage.gaussian_filter(periodogram, 2.0, mode="wrap")
    return np.stack([bm3d.bm3d(image / scale, psd) * scale for image in noisy]).astype(np.float32)


def region_masks(full_dose: np.ndarray) -> dict[str, np.ndarray]:
    """Lung, soft tissue and bone of each slice, from the full-dose image, away from edges."""
    smooth = ndimage.uniform_filter(full_dose, size=(1, 3, 3))
    return {
        name: ndimage.binary_erosion((smooth > low) & (smooth < high), structure=np.ones((1, 3, 3)), iterations=erode)
        for name, (low, high, erode) in REGIONS.items()
    }


def region_bias(images: np.ndarray, full_dose: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean HU of each region minus the full-dose mean of the same pixels."""
    return {name: float(images[m].mean() - full_dose[m].mean()) for name, m in masks.items()}


def local_mean_deviation(output: np.ndarray, source: np.ndarray, pixel_spacing_mm: float) -> dict[str, float]:
    """The bias rule's measure: the largest |mean(output) - mean(source)| over 15 mm squares (at most 2 HU).

    A square counts when all its pixels are soft tissue in the 5 x 5 smoothed ``source`` (the
    image the denoiser was given): the region a radiologist puts an ROI in to read a tissue's
    HU. A square that cuts an organ's edge measures how the edge is drawn (sharpness, which
    PSNR, SSIM and the edge profile measure), not the tissue's HU. Box means are linear, so the
    deviation of every square is one box filter of the difference. Returns the maximum, the
    99th percentile and how many squares (centres) were measured.
    """
    side = int(round(BIAS_SQUARE_MM / pixel_spacing_mm))
    size = (1, side, side)
    smooth = ndimage.uniform_filter(source.astype(np.float32), size=(1, 5, 5))
    tissue = (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    counted = ndimage.minimum_filter(tissue, size, mode="constant", cval=False)
    deviation = np.abs(ndimage.uniform_filter((output - source).astype(np.float64), size, mode="constant"))
    counted[:, : side // 2 + 1], counted[:, -(side // 2 + 1) :] = False, False
    counted[:, :, : side // 2 + 1], counted[:, :, -(side // 2 + 1) :] = False, False
    if not counted.any():
        raise ValueError("no 15 mm soft-tissue square in these slices")
    values = deviation[counted]
    return {"max_hu": float(values.max()), "p99_hu": float(np.percentile(values, 99)), "squares": int(counted.sum())}


def water_cylinder() -> np.ndarray:
    """The bias rule's phantom: uniform water (0 HU) in air, one slice."""
    yy, xx = (np.mgrid[:512, :512] - 255.5) * PHANTOM_PIXEL_MM
    return np.where(np.hypot(yy, xx) <= PHANTOM_DIAMETER_MM / 2, 0.0, -1000.0).astype(np.float32)


def water_phantom_deviation(denoiser: Denoiser, kvp: float, draws: int, seed: int) -> dict[str, float]:
    """The 15 mm rule on the water cylinder at ``kvp``: mean over ``draws`` noise draws.

    One draw cannot tell bias from noise (the noise's own 15 mm box mean is several HU), so the
    rule is applied to the mean over draws (``systematic_deviation``).
    """
    scan = SliceScan.of(water_cylinder(), PHANTOM_PIXEL_MM, kvp)
    photons = PHANTOM_PHOTONS_120KVP * np.exp(
        (water_attenuation_per_mm(kvp) - water_attenuation_per_mm(120)) * PHANTOM_DIAMETER_MM)
    generator = torch.Generator().manual_seed(seed)
    noisy = np.stack([
        (scan.hu + scan.acquisition_noise(photons, PHANTOM_FAMILY, generator, ELECTRONIC_NOISE_COUNTS))[None]
        for _ in range(draws)
    ]).astype(np.float32)
    return systematic_deviation(denoiser, noisy, PHANTOM_PIXEL_MM, PHANTOM_FAMILY)


def systematic_deviation(denoiser: Denoiser, noisy: np.ndarray, pixel_spacing_mm: float,
                         family: str) -> dict[str, float]:
    """The 15 mm rule applied to the mean over draws (axis 0) of the denoised images and inputs."""
    outputs = np.stack([denoiser(draw, (pixel_spacing_mm, pixel_spacing_mm), family) for draw in noisy])
    return local_mean_deviation(outputs.mean(0), noisy.mean(0), pixel_spacing_mm)


def known_truth_deviation(denoiser: Denoiser, scan: Scan, seed: int, draws: int = TRUTH_DRAWS,
                          most_draws: int = TRUTH_MOST_DRAWS) -> dict[str, float]:
    """The 15 mm rule against a known truth (training/denoise/LOG.md, "Bias against a known truth, and the mean-restore scale").

    A real full-dose image carries its own noise, which every simulated draw shares and a good
    denoiser removes, so comparing with it measures that noise too. Here the truth is the
    full-dose slices smoothed by ``TRUTH_SMOOTHING_MM``; each draw is a quarter-dose scan
    simulated from it, and its ideal output is the truth plus the noise's low frequencies that
    the mean correction returns by design (``G(n)``). A perfect denoiser scores 0, and
    subtracting each draw's known ``G(n)`` takes most of the noise out of the estimate.

    Two references, from the same draws (training/denoise/LOG.md,
    "The input's own systematic error as the reference"): the bias rule compares with *the
    input's* local mean, whose expectation is truth + b, b the simulation's own systematic error
    (``SliceScan.expected_acquisition_error``, computed exactly). ``max_hu`` and ``p99_hu`` are
    against it (ideal truth + b + G(n - b)), the rule's figure; ``truth_max_hu`` and
    ``truth_p99_hu`` against the noise-free truth (ideal truth + G(n)). They differ by the fine
    part b - G(b), whose own maximum is ``input_fine_error_max_hu``.

    Also returns ``noise_floor_hu``: the same maximum of half the difference between the means of
    the first and the last half of the draws, which has the estimate's noise and none of its
    bias, so it says how much of the maximum noise alone could read. Where that floor exceeds
    ``TRUTH_FLOOR_HU``, the same noise stream goes on to four times the draws, up to
    ``most_draws`` ("noise floor: extension rule"); ``draws`` in the result says how many.
    """
    if draws < 2 or draws % 2:
        raise ValueError(f"draws must be even and at least 2 (two halves give the noise floor), got {draws}")
    spacing = scan.pixel_spacing_mm
    truth = gaussian(scan.hu, TRUTH_SMOOTHING_MM / spacing)
    photons = scan_photons(scan, seed)
    generator = torch.Generator().manual_seed(seed)
    sims = [SliceScan.of(hu, spacing, scan.kvp) for hu in truth]
    dose = [scan.slice_photons(photons, k) * TRUTH_DOSE for k in range(len(sims))]
    restore_px = denoiser.preprocessing.restore_mean_sigma_mm / spacing

    def returned(images: np.ndarray) -> np.ndarray | float:
        """What the mean correction gives back of ``images``: their low frequencies."""
        return ndimage.gaussian_filter(images, (0.0, restore_px, restore_px), mode="nearest") if restore_px else 0.0

    expected_error = np.stack([sim.expected_acquisition_error(d, scan.filter_name, ELECTRONIC_NOISE_COUNTS)
                               for sim, d in zip(sims, dose, strict=True)])
    fine_error = expected_error - returned(expected_error)

    def summed(count: int) -> np.ndarray:
        """Sum over ``count`` new draws of (output - ideal against the truth)."""
        total = np.zeros(truth.shape, dtype=np.float64)
        for _ in range(count):
            noise = np.stack([sim.acquisition_noise(d, scan.filter_name, generator, ELECTRONIC_NOISE_COUNTS)
                              for sim, d in zip(sims, dose, strict=True)]).astype(np.float32)
            total += denoiser(truth + noise, (spacing, spacing), scan.filter_name) - (truth + returned(noise))
        return total

    def scored(first: np.ndarray, second: np.ndarray, count: int) -> dict[str, float]:
        against_truth = local_mean_deviation(truth + (first + second) / count, truth, spacing)
        return {**local_mean_deviation(truth + (first + second) / count - fine_error, truth, spacing),
                "truth_max_hu": against_truth["max_hu"], "truth_p99_hu": against_truth["p99_hu"],
                "input_fine_error_max_hu": local_mean_deviation(truth + fine_error, truth, spacing)["max_hu"],
                "noise_floor_hu": local_mean_deviation(truth + (first - second) / count, truth, spacing)["max_hu"],
                "draws": count}

    first, second = summed(draws // 2), summed(draws // 2)
    result = scored(first, second, draws)
    while result["noise_floor_hu"] > TRUTH_FLOOR_HU and draws * 4 <= most_draws:
        first = first + second + summed(draws)  # draws 1 .. 2n of the 4n
        second = summed(2 * draws)  # draws 2n+1 .. 4n
        draws *= 4
        result = scored(first, second, draws)
    return result


def noise_power_peak(errors: np.ndarray, uniform: np.ndarray, pixel_spacing_mm: float) -> float:
    """Peak frequency (mm^-1) of the radially averaged NPS of ``errors`` in uniform tissue.

    ROIs of ``NPS_ROI`` pixels lie on a grid and are used when wholly inside ``uniform``; each is
    mean-subtracted, and the spectra are averaged before the radial average.
    """
    spectra = []
    for k in range(len(errors)):
        for r in range(0, errors.shape[1] - NPS_ROI + 1, NPS_ROI // 2):
            for c in range(0, errors.shape[2] - NPS_ROI + 1, NPS_ROI // 2):
                if uniform[k, r : r + NPS_ROI, c : c + NPS_ROI].all():
                    roi = errors[k, r : r + NPS_ROI, c : c + NPS_ROI].astype(np.float64)
                    spectra.append(np.abs(np.fft.fft2(roi - roi.mean())) ** 2)
    if not spectra:
        raise ValueError("no uniform soft-tissue ROI to measure the noise power spectrum in")
    nps = np.mean(spectra, axis=0)
    freq = np.fft.fftfreq(NPS_ROI, d=pixel_spacing_mm)
    radius = np.hypot(*np.meshgrid(freq, freq, indexing="ij"))
    step = freq[1]
    bins = np.round(radius / step).astype(int)
    radial = np.bincount(bins.ravel(), nps.ravel()) / np.bincount(bins.ravel())
    usable = radial[1 : NPS_ROI // 2 + 1]  # skip DC, stop at Nyquist along an axis
    return float((np.argmax(usable) + 1) * step)


def simulate_doses(scan: Scan, photons: float, seed: int, beam: Beam = PARALLEL) -> dict[str, np.ndarray]:
    """Every slice of ``scan`` at each of ``DOSES``: its kernel, kVp, tube current, electronics
    (and ``beam``'s spread of photons over rays)."""
    generator = torch.Generator().manual_seed(seed)
    out = {name: np.empty_like(scan.hu) for name in DOSES}
    for k, hu in enumerate(scan.hu):
        sim = SliceScan.of(hu, scan.pixel_spacing_mm, scan.kvp)
        for name, fraction in DOSES.items():
            out[name][k] = sim.reduced_dose(scan.slice_photons(photons, k), fraction, scan.filter_name, generator,
                                            ELECTRONIC_NOISE_COUNTS, beam)
    return out


def scan_photons(scan: Scan, seed: int, beam: Beam = PARALLEL) -> float:
    return full_dose_photons(scan, torch.Generator().manual_seed(seed), beam)


def evaluation_slices(scan: Scan, most: int = MAX_SLICES) -> Scan:
    """At most ``most`` slices of a scan, evenly spread."""
    step = max(1, int(np.ceil(len(scan.hu) / most)))
    return scan.subset(slice(None, None, step))


def centre_crop(images: np.ndarray, size: int) -> np.ndarray:
    r0, c0 = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, r0 : r0 + size, c0 : c0 + size]


def kernel_report(denoiser: Denoiser, scan: Scan, seed: int, with_bm3d: bool = True,
                  baseline: Denoiser | None = None, beam: Beam = PARALLEL) -> dict[str, Any]:
    """Quality, texture and bias of every method at every dose on one held-out scan; with a
    ``baseline`` (the shipped weights, say) its rows too, on the same noise and the same BM3D;
    ``beam``: the simulation's spread of photons over rays."""
    full = scan.hu
    spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
    photons = scan_photons(scan, seed, beam)
    low_dose = simulate_doses(scan, photons, seed, beam)
    masks = region_masks(full)
    uniform = np.stack([uniform_region_mask(s) for s in full])
    bm3d_pick = np.linspace(0, len(full) - 1, BM3D_SLICES).round().astype(int)
    report: dict[str, Any] = {"slices": len(full), "kvp": scan.kvp, "full_dose_photons_per_ray": round(photons)}
    for dose, noisy in low_dose.items():
        sigma = best_gaussian_sigma(noisy, full)
        outputs = {"noisy": noisy, f"oracle gaussian (sigma {sigma} px)": gaussian(noisy, sigma),
                   "model": denoiser(noisy, spacing, scan.filter_name)}
        if baseline is not None:
            outputs["baseline"] = baseline(noisy, spacing, scan.filter_name)
        rows: dict[str, dict[str, Any]] = {}
        for name, images in outputs.items():
            rows[name] = {
                **mean_metrics(images, full),
                "nps_peak_per_mm": noise_power_peak(images - full, uniform, scan.pixel_spacing_mm),
                "max_15mm_mean_deviation_hu": local_mean_deviation(images, noisy, scan.pixel_spacing_mm)["max_hu"],
                "region_bias_hu": region_bias(images, full, masks),
            }
        if with_bm3d:
            crop: Callable[[np.ndarray], np.ndarray] = lambda a: centre_crop(a[bm3d_pick], BM3D_ROI)  # noqa: E731
            reference = crop(full)
            bm3d_out = bm3d_denoise(crop(noisy), crop(noisy) - reference)
            rows["bm3d (oracle PSD)"] = {"crop": mean_metrics(bm3d_out, reference)}
            for name, images in outputs.items():
                rows[name]["crop"] = mean_metrics(crop(images), reference)
        input_peak = rows["noisy"]["nps_peak_per_mm"]
        for name in outputs:
            rows[name]["nps_peak_shift"] = rows[name]["nps_peak_per_mm"] / input_peak - 1
        report[dose] = rows
    report["region_pixels"] = {name: int(m.sum()) for name, m in masks.items()}
    report["bm3d_slices"] = [int(k) for k in bm3d_pick] if with_bm3d else []
    return report


def real_series_bias(denoiser: Denoiser, scan: Scan) -> dict[str, float]:
    """The bias rule on a real series exactly as it was acquired: no simulated noise."""
    spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
    return local_mean_deviation(denoiser(scan.hu, spacing, scan.filter_name), scan.hu, scan.pixel_spacing_mm)


def edge_width(profile: np.ndarray, half_window: int = 6) -> float:
    """10-90 % rise distance (pixels) of the steepest edge in a profile.

    The two levels are the means of the three samples at each end of a window around the edge,
    so noise on a plateau does not move them much.
    """
    k = int(np.argmax(np.abs(np.diff(profile))))
    window = profile[max(k - half_window, 0) : k + half_window + 2].astype(np.float64)
    if window[-1] < window[0]:
        window = -window
    low, high = window[:3].mean(), window[-3:].mean()
    rising = np.maximum.accumulate(window)  # monotone, so each level is crossed once
    positions = np.arange(len(window), dtype=np.float64)
    crossings = [float(np.interp(low + q * (high - low), rising, positions)) for q in (0.1, 0.9)]
    return crossings[1] - crossings[0]


def real_noise_check(denoiser: Denoiser, sharp: Scan, smooth: np.ndarray) -> dict[str, Any]:
    """The model on the real B70f series: noise down, edges kept (same grid as the B40f series)."""
    denoised = denoiser(sharp.hu, (sharp.pixel_spacing_mm, sharp.pixel_spacing_mm), sharp.filter_name)
    before, after, reference = [], [], []
    for k in range(len(sharp.hu)):
        mask = uniform_region_mask(smooth[k])
        if mask.sum() < 400:
            continue
        before.append(uniform_noise_std(sharp.hu[k], mask))
        after.append(uniform_noise_std(denoised[k], mask))
        reference.append(uniform_noise_std(smooth[k], mask))
    edges = _strong_edges(smooth)
    row = slice(*PROFILE_COLUMNS)
    profiles = {
        "B70f": sharp.hu[PROFILE_SLICE, PROFILE_ROW, row],
        "B70f denoised": denoised[PROFILE_SLICE, PROFILE_ROW, row],
        "B40f": smooth[PROFILE_SLICE, PROFILE_ROW, row],
    }
    return {
        "slices_measured": len(before),
        "noise_std_hu": {
            "B70f": float(np.median(before)),
            "B70f denoised": float(np.median(after)),
            "B40f (same scan, smooth kernel)": float(np.median(reference)),
        },
        "edge_gradient_retained": {
            "B70f denoised": _gradient_ratio(denoised, sharp.hu, edges),
            "B40f (same scan, smooth kernel)": _gradient_ratio(smooth, sharp.hu, edges),
        },
        "profile": {
            "slice": PROFILE_SLICE, "row": PROFILE_ROW, "columns": list(PROFILE_COLUMNS),
            "edge_width_10_90_px": {name: edge_width(p) for name, p in profiles.items()},
            "values_hu": {name: [round(float(v)) for v in p] for name, p in profiles.items()},
        },
    }


def _strong_edges(smooth: np.ndarray) -> np.ndarray:
    """The 2 % strongest in-plane gradients of the smooth-kernel image: real edges, not noise."""
    magnitude = _gradient(smooth)
    edges: np.ndarray = magnitude > np.percentile(magnitude, 98)
    return edges


def _gradient(images: np.ndarray) -> np.ndarray:
    magnitude: np.ndarray = np.hypot(ndimage.sobel(images, axis=1), ndimage.sobel(images, axis=2))
    return magnitude


def _gradient_ratio(images: np.ndarray, reference: np.ndarray, edges: np.ndarray) -> float:
    return float(_gradient(images)[edges].mean() / _gradient(reference)[edges].mean())


def print_tables(kernels: dict[str, dict[str, Any]]) -> None:
    """One markdown table per kernel and dose, as the model card shows them."""
    for kernel, report in kernels.items():
        for dose in DOSES:
            rows = report[dose]
            print(f"\n{kernel}, {dose} dose ({report['slices']} slices; BM3D columns on "
                  f"{BM3D_SLICES} crops of {BM3D_ROI} px)")
            print("| method | PSNR | SSIM | PSNR crop | SSIM crop | NPS peak (mm^-1) | peak shift "
                  "| max 15 mm bias (HU) |")
            print("|---|---|---|---|---|---|---|---|")
            for name, row in rows.items():
                crop = row.get("crop", {})
                if "psnr_db" not in row:
                    print(f"| {name} | | | {crop['psnr_db']:.2f} | {crop['ssim']:.4f} | | | |")
                    continue
                print(f"| {name} | {row['psnr_db']:.2f} | {row['ssim']:.4f} | "
                      f"{crop.get('psnr_db', float('nan')):.2f} | {crop.get('ssim', float('nan')):.4f} | "
                      f"{row['nps_peak_per_mm']:.3f} | {row['nps_peak_shift']:+.0%} | "
                      f"{row['max_15mm_mean_deviation_hu']:.2f} |")


def kernel_comparison(denoiser: Denoiser, scans: dict[str, Scan], args: argparse.Namespace, command: str) -> None:
    """The per-kernel tables alone (with ``--baseline``'s rows), printed and written to ``--out``."""
    if args.out is None:
        raise SystemExit("--kernels-only writes its own file: give --out (evaluation.json is the full evaluation)")
    baseline = Denoiser.load(args.baseline, "cpu") if args.baseline else None
    kernels = {kernel: kernel_report(denoiser, evaluation_slices(scan), args.seed, not args.no_bm3d, baseline)
               for kernel, scan in scans.items()}
    args.out.write_text(json.dumps({"command": command, "held_out": HELD_OUT_BY_KERNEL, "seed": args.seed,
                                    "kernels": kernels}, indent=2) + "\n")
    print_tables(kernels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--out", type=Path, help="JSON to write (default: <weights>/evaluation.json)")
    parser.add_argument("--no-bm3d", action="store_true", help="skip BM3D (the slow part)")
    parser.add_argument("--baseline", type=Path,
                        help="with --kernels-only: a second model folder (the shipped one) on the same noise")
    parser.add_argument("--kernels-only", action="store_true",
                        help="only the per-kernel tables (what a ship rule compares), not the bias measurements")
    parser.add_argument("--seed", type=int, default=EVALUATION_SEED,
                        help="the held-out noise's seed: another one judges a candidate on draws not yet seen")
    parser.add_argument("--kernels", nargs="+", choices=list(HELD_OUT_BY_KERNEL), default=list(HELD_OUT_BY_KERNEL),
                        help="only these held-out kernels (a candidate that changes one family's weights)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    denoiser = Denoiser.load(args.weights, "cpu")
    scans = {kernel: load_scan(args.data, HELD_OUT_BY_KERNEL[kernel]) for kernel in args.kernels}
    if args.kernels_only:
        kernel_comparison(denoiser, scans, args, training_command("training.denoise.evaluate", argv))
        return
    if args.baseline:
        raise SystemExit("--baseline compares the kernel tables: add --kernels-only")
    kernels = {kernel: kernel_report(denoiser, evaluation_slices(scan), args.seed, not args.no_bm3d)
               for kernel, scan in scans.items()}
    report: dict[str, Any] = {
        "command": training_command("training.denoise.evaluate", argv),
        "held_out": HELD_OUT_BY_KERNEL,
        "window_hu": list(WINDOW),
        "seed": args.seed,
        "electronic_noise_counts": ELECTRONIC_NOISE_COUNTS,
        "kernels": kernels,
        "real_series_15mm_bias": {kernel: real_series_bias(denoiser, scan) for kernel, scan in scans.items()},
        "known_truth_15mm_bias": {kernel: known_truth_deviation(denoiser, evaluation_slices(scan), args.seed)
                                   for kernel, scan in scans.items()},
        "real_noise_B70f": real_noise_check(denoiser, scans["B70f"], load_scan(args.data, HELD_OUT_BY_KERNEL["B40f"]).hu)
        if "B70f" in scans else None,
        "seconds": round(time.monotonic() - started),
    }
    out = args.out or args.weights / "evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(kernels)
    print("\nreal series, no simulation: 15 mm bias", json.dumps(report["real_series_15mm_bias"], indent=1))
    print(f"known truth, quarter dose, {TRUTH_DRAWS}-{TRUTH_MOST_DRAWS} draws: 15 mm bias",
          json.dumps(report["known_truth_15mm_bias"], indent=1))
    if report["real_noise_B70f"] is not None:
        print(json.dumps({k: v for k, v in report["real_noise_B70f"].items() if k != "profile"}, indent=1))
    print(f"({HELD_OUT} and {HELD_OUT_SHARP} are one acquisition; {report['seconds']} s)")


if __name__ == "__main__":
    main()
