"""Measure the denoiser on the held-out scan and write the numbers the model card quotes.

    python -m pipelines.denoise.evaluate --weights pipelines/denoise/weights

1. Quality at simulated quarter and tenth dose on every slice of the held-out B40f series: PSNR
   and SSIM in the HU window ``WINDOW`` of the noisy input, of a Gaussian filter (sigma tuned on
   simulated training slices, and, as the strongest possible Gaussian, the sigma that is best on
   the held-out slices themselves) and of the model.
2. Mean-HU bias in lung, soft tissue and bone against the full-dose image.
3. Real noise: the model on the real sharp-kernel B70f reconstruction of the same scan, no
   simulation. Noise (std in uniform soft tissue) before and after, a line profile across edges,
   and how much of the strong edges' gradient survives.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from pipelines.denoise.data import (
    DEFAULT_DATA_ROOT, HELD_OUT, HELD_OUT_SHARP, TRAINING, Scan, full_dose_photons, load_scan,
)
from pipelines.denoise.inference import DEFAULT_MODEL_DIR, Denoiser
from pipelines.denoise.noise import SliceScan, uniform_noise_std, uniform_region_mask

#: HU window of the metrics: lung to dense bone, data range 2000 HU.
WINDOW = (-1000.0, 1000.0)
DOSES = {"quarter": 0.25, "tenth": 0.1}
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
#: Seed of the held-out noise; different from any training seed's stream by construction.
EVALUATION_SEED = 20240
#: Every n-th slice of a long training scan is used to tune the Gaussian baseline.
TUNING_STRIDE = 10
#: Region definitions on the (lightly smoothed) full-dose image, eroded away from edges.
REGIONS = {"lung": (-950.0, -600.0, 3), "soft tissue": (0.0, 100.0, 3), "bone": (300.0, 3000.0, 1)}
#: A horizontal line on the held-out slice ``PROFILE_SLICE``: heart -> lung -> chest wall.
PROFILE_SLICE, PROFILE_ROW, PROFILE_COLUMNS = 15, 160, (300, 460)


def windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip(hu, *WINDOW)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB) of one slice in ``WINDOW``: both images clipped to it, peak = window width."""
    mse = float(np.mean((windowed(image) - windowed(reference)) ** 2))
    return 10 * np.log10((WINDOW[1] - WINDOW[0]) ** 2 / mse)


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
    """The sigma in ``GAUSSIAN_SIGMAS`` with the highest mean PSNR on these slices."""
    scores = {s: mean_metrics(gaussian(noisy, s), clean)["psnr_db"] for s in GAUSSIAN_SIGMAS}
    return max(scores, key=scores.__getitem__)


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


def simulate_doses(scan: Scan, photons: float, seed: int) -> dict[str, np.ndarray]:
    """Every slice of ``scan`` at each of ``DOSES``, with the scan's own kernel texture."""
    generator = torch.Generator().manual_seed(seed)
    out = {name: np.empty_like(scan.hu) for name in DOSES}
    for k, hu in enumerate(scan.hu):
        sim = SliceScan.of(hu, scan.pixel_spacing_mm)
        for name, fraction in DOSES.items():
            out[name][k] = sim.reduced_dose(photons, fraction, scan.filter_name, generator)
    return out


def scan_photons(scan: Scan, seed: int) -> float:
    return full_dose_photons(scan, torch.Generator().manual_seed(seed))


def tuned_gaussian_sigmas(data_root: Path, seed: int) -> dict[str, float]:
    """Gaussian sigma per dose, chosen on simulated training slices (never the held-out scan)."""
    noisy: dict[str, list[np.ndarray]] = {name: [] for name in DOSES}
    clean: list[np.ndarray] = []
    for name in TRAINING:
        scan = load_scan(data_root, name)
        subset = Scan(scan.name, scan.hu[::TUNING_STRIDE], scan.pixel_spacing_mm, scan.kernel)
        for dose, images in simulate_doses(subset, scan_photons(scan, seed), seed).items():
            noisy[dose].extend(images)
        clean.extend(subset.hu)
    return {dose: best_gaussian_sigma(np.stack(noisy[dose]), np.stack(clean)) for dose in DOSES}


def quality(denoiser: Denoiser, full_dose: np.ndarray, low_dose: dict[str, np.ndarray],
            tuned_sigmas: dict[str, float]) -> tuple[dict, dict]:
    """PSNR/SSIM table and HU-bias table for every dose."""
    masks = region_masks(full_dose)
    table, bias = {}, {}
    for dose, noisy in low_dose.items():
        oracle_sigma = best_gaussian_sigma(noisy, full_dose)
        outputs = {
            "noisy": noisy,
            f"gaussian (sigma {tuned_sigmas[dose]} px, tuned on training)": gaussian(noisy, tuned_sigmas[dose]),
            f"best gaussian (sigma {oracle_sigma} px, best on held-out)": gaussian(noisy, oracle_sigma),
            "model": denoiser(noisy),
        }
        table[dose] = {name: mean_metrics(images, full_dose) for name, images in outputs.items()}
        bias[dose] = {name: region_bias(images, full_dose, masks) for name, images in outputs.items()}
    bias["full-dose mean HU"] = {name: float(full_dose[m].mean()) for name, m in masks.items()}
    bias["pixels"] = {name: int(m.sum()) for name, m in masks.items()}
    return table, bias


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


def real_noise_check(denoiser: Denoiser, sharp: np.ndarray, smooth: np.ndarray) -> dict:
    """The model on the real B70f series: noise down, edges kept (same grid as the B40f series)."""
    denoised = denoiser(sharp)
    before, after, reference = [], [], []
    for k in range(len(sharp)):
        mask = uniform_region_mask(smooth[k])
        if mask.sum() < 400:
            continue
        before.append(uniform_noise_std(sharp[k], mask))
        after.append(uniform_noise_std(denoised[k], mask))
        reference.append(uniform_noise_std(smooth[k], mask))
    edges = _strong_edges(smooth)
    row = slice(*PROFILE_COLUMNS)
    profiles = {
        "B70f": sharp[PROFILE_SLICE, PROFILE_ROW, row],
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
            "B70f denoised": _gradient_ratio(denoised, sharp, edges),
            "B40f (same scan, smooth kernel)": _gradient_ratio(smooth, sharp, edges),
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
    return magnitude > np.percentile(magnitude, 98)


def _gradient(images: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(images, axis=1), ndimage.sobel(images, axis=2))


def _gradient_ratio(images: np.ndarray, reference: np.ndarray, edges: np.ndarray) -> float:
    return float(_gradient(images)[edges].mean() / _gradient(reference)[edges].mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, help="JSON to write (default: <weights>/evaluation.json)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    denoiser = Denoiser.load(args.weights, "cpu")
    held_out, sharp = load_scan(args.data, HELD_OUT), load_scan(args.data, HELD_OUT_SHARP)
    photons = scan_photons(held_out, EVALUATION_SEED)
    sharp_photons = scan_photons(sharp, EVALUATION_SEED)
    low_dose = simulate_doses(held_out, photons, EVALUATION_SEED)
    sigmas = tuned_gaussian_sigmas(args.data, EVALUATION_SEED)
    table, bias = quality(denoiser, held_out.hu, low_dose, sigmas)
    report = {
        "command": "python -m pipelines.denoise.evaluate --weights " + str(args.weights),
        "held_out": HELD_OUT,
        "slices": len(held_out.hu),
        "window_hu": list(WINDOW),
        "seed": EVALUATION_SEED,
        "noise_model_check": {
            "full_dose_photons_per_ray_from_B40f_with_hann": round(photons),
            "full_dose_photons_per_ray_from_B70f_with_ramp": round(sharp_photons),
        },
        "gaussian_sigma_tuned_on_training": sigmas,
        "quality": table,
        "hu_bias": bias,
        "real_noise_B70f": real_noise_check(denoiser, sharp.hu, held_out.hu),
        "seconds": round(time.monotonic() - started),
    }
    out = args.out or args.weights / "evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("noise_model_check", "quality", "hu_bias")}, indent=1))
    print(json.dumps({k: v for k, v in report["real_noise_B70f"].items() if k != "profile"}, indent=1))
    print("edge widths", report["real_noise_B70f"]["profile"]["edge_width_10_90_px"])


if __name__ == "__main__":
    main()
