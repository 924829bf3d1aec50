"""Low-contrast detectability (LCD) of the CT denoiser against classical denoisers, on the MITA-LCD phantom.

PSNR rewards smoothing; a reader needs the faint, small lesions that smoothing erases. This bench
measures, for each dose (10, 55, 100 %) and each insert of the MITA-LCD phantom (CCT189: 3 mm 14 HU,
5 mm 7 HU, 7 mm 5 HU, 10 mm 3 HU), how well the Laguerre-Gauss channelised Hotelling observer
(``training/denoise/lcd.py``, checked against the FDA toolbox by ``bench/lcd_observer.py``)
tells signal-present from signal-absent images after each of these methods:

- ``input``: the images as they are;
- ``oracle Gaussian``: ``scipy.ndimage.gaussian_filter`` with, per dose, the sigma (of
  ``evaluate.GAUSSIAN_SIGMAS``, 0.5-3 px) of the best PSNR against the noise-free truth inside the
  phantom (5 mm from its edge: the air and the edge carry no low-contrast task);
- ``BM3D``: ``evaluate.bm3d_denoise`` told the noise power spectrum of the same dose's
  signal-absent images minus their noise-free truth (an oracle too); it runs on the square that
  holds every ROI the observer and the noise measure read, plus ``BM3D_MARGIN_PX`` of context, at
  about 2 s an image on one core (the rest of the image stays the input, which nothing reads);
- ``model s``: the project's denoiser (``pipelines.denoise.inference.Denoiser``, float32 on the
  CPU) at strength s, ``input + s (denoised - input)``, the blend of the pipeline's ``strength``.

Per method and dose it prints the mean AUC over the readers and d'_snr, and the noise SD (HU) in the
central water ROI of the signal-absent images (``lcd_phantom.central_water_sd``, 16 mm radius), so
that a strength's cost in detectability sits beside what it gains in noise. ``--out`` gets every
number, reader by reader. The observer uses the toolbox's protocol: 10 readers, each a half/half
train/test split with the toolbox's seeds (``measure_lcd(..., n_readers=10, seed=0)``), on the
inserts ``find_inserts`` finds in the toolbox's truth.

Data: the small data set of the FDA LCD-CT toolbox, DIDSR/LCD_CT at commit fe94e61 (CC0): FBP
reconstructions, 10 signal-present and 10 signal-absent 256 x 256 images per dose, and the
noise-free truth. Its geometry, read off that truth, is pediatricIQphantoms' 150 mm CCT189 on a
165 mm field of view, so the denoiser is told 0.645 mm pixels (``lcd_phantom.PIXEL_MM``), not the
1.33 mm of the toolbox's adult ``CT_setup.m``. With 5 test images per class a reader's AUC moves in
steps of 0.04 and readers share images, so these AUCs scatter by about 0.1: ``--simulated N``
repeats the table on N images per class of ``lcd_phantom``'s simulated phantom (the project's noise
simulator, sharp family, seeds ``SIMULATED_SEED + dose`` used nowhere else), noise calibrated to
the toolbox's FBP at 100 % dose. Commands, from the repository root (the first once):

    mkdir -p /work/lcd_ct && git -C /work/.mirror/DIDSR+LCD_CT/repo archive fe94e61 | tar -x -C /work/lcd_ct
    OMP_NUM_THREADS=1 python -m bench.denoise_lcd --toolbox /work/lcd_ct --weights pipelines/denoise/weights \\
        --simulated 100 --bm3d-doses 10,55 --out /tmp/denoise_lcd.json

``--family`` passes a kernel family to a denoiser that takes one (default: none, the model
decides); ``--bm3d-doses`` limits the slow BM3D to some doses (1.8 s an image on one core: 2 min
for the toolbox's 60 images, 18 min for 600 simulated ones). The command above takes 16 min on one
core (12 of them BM3D's) and 1.9 GB of memory.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pipelines.denoise.inference import Denoiser
from pipelines.denoise.kernels import FAMILIES
from training.denoise import lcd_phantom
from training.denoise.evaluate import GAUSSIAN_SIGMAS, WINDOW, bm3d_denoise, gaussian
from training.denoise.lcd import (
    MITA_INSERT_HU,
    TOOLBOX_DOSES,
    Array,
    Insert,
    LcdResult,
    find_inserts,
    measure_lcd,
    roi_half_width,
    toolbox_images,
    toolbox_truth,
)

#: The model's strengths: 1 is its full effect, 0 would be the input.
STRENGTHS = (1.0, 0.75, 0.5, 0.25)
METHODS = ("input", "oracle Gaussian", "BM3D", *(f"model {s}" for s in STRENGTHS))
#: The simulated study's seeds are this plus the dose (percent): held out, used nowhere else.
SIMULATED_SEED = 7_130_500
#: The simulated study's noise texture. Its input's AUCs come near the toolbox's published FBP
#: curves (``lcd_v_dose.png``, its large data set: 10 mm 3 HU 0.69, 0.90, 0.95 and 7 mm 5 HU 0.78,
#: 0.97, 0.99 at 10, 55, 100 %), the medium family's stay far below (0.52-0.80), though the
#: toolbox's NPS peaks at 0.25 cycles/mm, nearer medium's 0.20 than sharp's 0.54.
SIMULATED_FAMILY = "sharp"
#: Pixels of context BM3D gets around the ROIs it is scored on (its blocks are 8 pixels wide).
BM3D_MARGIN_PX = 8
#: The Gaussian's PSNR counts the phantom from this far inside its edge (mm).
INTERIOR_MARGIN_MM = 5.0


@dataclass(frozen=True)
class ImageSet:
    """One study at one dose: both classes (N, Y, X) in HU and their noise-free truths (Y, X)."""

    data: str
    dose_percent: int
    present: Array
    absent: Array
    truth: Array
    background: Array

    def stack(self) -> Array:
        """Both classes in one stack, signal-present first: every method runs on it once."""
        return np.concatenate([self.present, self.absent])

    def truths(self) -> Array:
        """The noise-free image of each image of ``stack``."""
        return np.concatenate([np.broadcast_to(self.truth, self.present.shape),
                               np.broadcast_to(self.background, self.absent.shape)])

    def split(self, stack: Array) -> tuple[Array, Array]:
        """A method's output stack back into (signal-present, signal-absent)."""
        return stack[: len(self.present)], stack[len(self.present):]


@dataclass(frozen=True)
class MethodResult:
    """One method on one image set: the observer's rows, the water noise and the time it took."""

    method: str
    rows: list[LcdResult]
    noise_sd_hu: float
    seconds: float
    details: dict[str, Any]


# --- Data ---------------------------------------------------------------------------------------


def without_inserts(truth: Array) -> Array:
    """The toolbox's truth less its discs: every pixel within an insert's contrast of water is water.

    The toolbox has no signal-absent truth; its discs are the only structure inside the cylinder,
    and the cylinder's partial-volume edge lies at least 62 HU from water (its truth is stored in
    sixteenths of 1000 HU there), so nothing else is touched.
    """
    return np.where(np.abs(truth) <= max(MITA_INSERT_HU), lcd_phantom.WATER_HU, truth)


def toolbox_sets(toolbox: Path) -> list[ImageSet]:
    """The toolbox's FBP images at each dose with its truth."""
    truth = toolbox_truth(toolbox)
    background = without_inserts(truth)
    return [ImageSet("toolbox", dose, *toolbox_images(toolbox, "fbp", dose), truth, background) for dose in TOOLBOX_DOSES]


def simulated_sets(n_per_class: int, seed: int = SIMULATED_SEED) -> list[ImageSet]:
    """``lcd_phantom``'s study at each dose, ``n_per_class`` images per class, held-out seeds
    (``seed`` + dose)."""
    truth, background = lcd_phantom.cct189_truth(), lcd_phantom.cct189_background()
    return [
        ImageSet("simulated", dose,
                 *lcd_phantom.simulated_study(n_per_class, dose / 100.0, SIMULATED_FAMILY, seed + dose),
                 truth, background)
        for dose in TOOLBOX_DOSES
    ]


# --- Methods ------------------------------------------------------------------------------------


def interior(background: Array) -> np.ndarray:
    """The phantom's pixels at least ``INTERIOR_MARGIN_MM`` inside its edge."""
    inside = background > (lcd_phantom.AIR_HU + lcd_phantom.WATER_HU) / 2.0
    mask: np.ndarray = ndimage.binary_erosion(inside, iterations=round(INTERIOR_MARGIN_MM / lcd_phantom.PIXEL_MM))
    return mask


def interior_psnr(images: Array, truths: Array, mask: np.ndarray) -> float:
    """PSNR (dB) inside the phantom, peak the width of ``evaluate.WINDOW`` as the model card's."""
    mse = float(np.mean((images[:, mask] - truths[:, mask]) ** 2))
    return 10.0 * math.log10((WINDOW[1] - WINDOW[0]) ** 2 / mse)


def oracle_gaussian(images: ImageSet) -> tuple[Array, dict[str, Any]]:
    """The Gaussian of the best interior PSNR on these very images, and every sigma's PSNR."""
    stack, truths, mask = images.stack(), images.truths(), interior(images.background)
    psnr = {sigma: interior_psnr(gaussian(stack, sigma), truths, mask) for sigma in GAUSSIAN_SIGMAS}
    best = max(psnr, key=psnr.__getitem__)
    return gaussian(stack, best), {"sigma_px": best, "psnr_db_by_sigma": {str(s): p for s, p in psnr.items()}}


def bm3d_window(inserts: Sequence[Insert], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The square BM3D runs on: every insert's ROI and the central water ROI, plus the margin."""
    half = roi_half_width(inserts)
    centre = ((shape[-2] - 1) / 2.0, (shape[-1] - 1) / 2.0)
    water = math.ceil(lcd_phantom.CENTRAL_ROI_RADIUS_MM / lcd_phantom.PIXEL_MM)
    reach = max(max(abs(i.centre[0] - centre[0]), abs(i.centre[1] - centre[1])) + half for i in inserts)
    reach = max(reach, water) + BM3D_MARGIN_PX
    rows = slice(max(0, math.floor(centre[0] - reach)), min(shape[-2], math.ceil(centre[0] + reach) + 1))
    cols = slice(max(0, math.floor(centre[1] - reach)), min(shape[-1], math.ceil(centre[1] + reach) + 1))
    return rows, cols


def oracle_bm3d(images: ImageSet, window: tuple[slice, slice]) -> Array:
    """BM3D on ``window`` of every image, told the noise spectrum of the signal-absent images."""
    rows, cols = window
    noise = (images.absent - images.background)[:, rows, cols]
    stack = images.stack()
    out = stack.copy()
    out[:, rows, cols] = bm3d_denoise(stack[:, rows, cols], noise)
    return out


def family_keywords(denoiser: Denoiser, family: str | None) -> dict[str, str]:
    """``{"family": family}`` for a denoiser whose call takes one; nothing when none is asked for.

    Asking a denoiser that cannot take a family for one is refused rather than ignored: the table
    would otherwise claim a family the model never saw.
    """
    if family is None:
        return {}
    if "family" not in inspect.signature(denoiser.__call__).parameters:
        raise SystemExit(f"--family {family}: this Denoiser takes no kernel family")
    return {"family": family}


def model_outputs(denoiser: Denoiser, images: ImageSet, family: str | None) -> dict[str, Array]:
    """The model at each strength of ``STRENGTHS``: one forward pass, blended with the input."""
    stack = images.stack()
    pixel = (lcd_phantom.PIXEL_MM, lcd_phantom.PIXEL_MM)
    denoised = denoiser(stack.astype(np.float32), pixel, **family_keywords(denoiser, family)).astype(np.float64)
    return {f"model {s}": stack + s * (denoised - stack) for s in STRENGTHS}


# --- Measuring ----------------------------------------------------------------------------------


def scored(images: ImageSet, method: str, stack: Array, inserts: Sequence[Insert], seconds: float,
           details: dict[str, Any] | None = None) -> MethodResult:
    """The observer and the water noise on one method's output."""
    present, absent = images.split(stack)
    rows = measure_lcd(present, absent, inserts, recon=method, dose_percent=images.dose_percent)
    return MethodResult(method, rows, lcd_phantom.central_water_sd(absent), seconds, details or {})


def run_set(images: ImageSet, inserts: Sequence[Insert], denoiser: Denoiser, family: str | None,
            bm3d_doses: Sequence[int]) -> list[MethodResult]:
    """Every method on one image set, each timed."""
    results = [scored(images, "input", images.stack(), inserts, 0.0)]
    start = time.perf_counter()
    smoothed, details = oracle_gaussian(images)
    results.append(scored(images, "oracle Gaussian", smoothed, inserts, time.perf_counter() - start, details))
    if images.dose_percent in bm3d_doses:
        start = time.perf_counter()
        out = oracle_bm3d(images, bm3d_window(inserts, images.present.shape))
        results.append(scored(images, "BM3D", out, inserts, time.perf_counter() - start))
    start = time.perf_counter()
    outputs = model_outputs(denoiser, images, family)
    seconds = time.perf_counter() - start
    results.extend(scored(images, method, out, inserts, seconds) for method, out in outputs.items())
    return results


def report_rows(images: ImageSet, results: list[MethodResult]) -> list[dict[str, Any]]:
    """One JSON record per method and insert, and one per method for the noise and the time."""
    records: list[dict[str, Any]] = []
    for result in results:
        records.append({"data": images.data, "dose_percent": images.dose_percent, "method": result.method,
                        "noise_sd_hu": result.noise_sd_hu, "seconds": result.seconds, **result.details,
                        "inserts": [insert_record(row) for row in result.rows]})
    return records


def insert_record(row: LcdResult) -> dict[str, Any]:
    return {"insert_hu": row.insert_hu, "insert_diameter_mm": lcd_phantom.INSERT_DIAMETER_MM[row.insert_hu],
            "insert_extent_px": row.insert_extent_px, "channel_width_px": row.channel_width_px,
            "roi_size_px": row.roi_size_px, "auc": row.auc, "auc_reader_std": row.auc_std, "snr": row.snr,
            "aucs": list(row.aucs), "snrs": list(row.snrs)}


# --- Printing -----------------------------------------------------------------------------------

CELL = 14


def print_table(title: str, records: list[dict[str, Any]]) -> None:
    """Rows: dose and insert, then the noise SD; columns: methods. Cells: AUC (d')."""
    print(f"\n{title}: mean AUC over readers (d'_snr); noise SD (HU) in the central water ROI")
    print(f"{'dose':>5} {'insert':>11} " + " ".join(f"{m:>{CELL}}" for m in METHODS))
    for dose in TOOLBOX_DOSES:
        by_method = {r["method"]: r for r in records if r["dose_percent"] == dose}
        for k, hu in enumerate(MITA_INSERT_HU):
            name = f"{lcd_phantom.INSERT_DIAMETER_MM[hu]:g} mm/{hu:g} HU"
            cells = [cell(by_method.get(m), hu) for m in METHODS]
            print(f"{f'{dose} %' if k == 0 else '':>5} {name:>11} " + " ".join(f"{c:>{CELL}}" for c in cells))
        noise = [f"{by_method[m]['noise_sd_hu']:.1f}" if m in by_method else "-" for m in METHODS]
        print(f"{'':>5} {'noise SD':>11} " + " ".join(f"{c:>{CELL}}" for c in noise))
    sigmas = ", ".join(f"{r['dose_percent']} %: {r['sigma_px']:g} px" for r in records if "sigma_px" in r)
    print(f"oracle Gaussian sigma: {sigmas} (grid {min(GAUSSIAN_SIGMAS):g}-{max(GAUSSIAN_SIGMAS):g} px)")


def cell(record: dict[str, Any] | None, hu: float) -> str:
    if record is None:
        return "-"
    row = next(row for row in record["inserts"] if row["insert_hu"] == hu)
    return f"{row['auc']:.3f} ({row['snr']:5.2f})"


# --- Main ---------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toolbox", type=Path, required=True, help="the unpacked LCD_CT folder (holds data/small_dataset)")
    parser.add_argument("--weights", type=Path, required=True, help="the denoiser's model folder")
    parser.add_argument("--simulated", type=int, default=0, metavar="N",
                        help="also the simulated phantom, N images per class (0: not)")
    parser.add_argument("--family", choices=FAMILIES, help="kernel family for a denoiser that takes one (default: it decides)")
    parser.add_argument("--bm3d-doses", default=",".join(str(d) for d in TOOLBOX_DOSES),
                        help="doses (percent, comma-separated) BM3D runs at; empty: none")
    parser.add_argument("--seed", type=int, default=SIMULATED_SEED,
                        help="the simulated study's seeds are this plus the dose: another judges a candidate on new images")
    parser.add_argument("--out", type=Path, help="write every number here (JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    torch.set_num_threads(1)
    bm3d_doses = [int(d) for d in args.bm3d_doses.split(",") if d.strip()]
    denoiser = Denoiser.load(args.weights, "cpu", half_precision=False)
    started = time.perf_counter()
    sets = toolbox_sets(args.toolbox)
    inserts = find_inserts(sets[0].truth)
    tables = {"toolbox": sets}
    if args.simulated:
        tables["simulated"] = simulated_sets(args.simulated, args.seed)
        if lcd_phantom.phantom_inserts() != inserts:
            raise SystemExit("the simulated phantom's inserts differ from the toolbox's")
    records: dict[str, list[dict[str, Any]]] = {}
    for data, image_sets in tables.items():
        records[data] = [r for images in image_sets
                         for r in report_rows(images, run_set(images, inserts, denoiser, args.family, bm3d_doses))]
        count = len(image_sets[0].present)
        print_table(f"{data}: {count} + {count} images per dose", records[data])
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s")
    if args.out is not None:
        report = {"toolbox": str(args.toolbox), "toolbox_commit": "fe94e61", "weights": str(args.weights),
                  "family": args.family, "pixel_mm": lcd_phantom.PIXEL_MM, "simulated_per_class": args.simulated,
                  "simulated_family": SIMULATED_FAMILY, "simulated_seed": args.seed, "bm3d_doses": bm3d_doses,
                  "strengths": list(STRENGTHS), "seconds": elapsed, "results": records}
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
