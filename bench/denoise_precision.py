"""ct-denoise on a CPU in bfloat16 against float32: same weights, same held-out scans.

The rule "bfloat16 on a CPU" (training/denoise/LOG.md,
"Acceptance rules for the quality and bias targets") lets the network run under CPU bfloat16
autocast only where, on every held-out kernel at simulated quarter and tenth dose, PSNR moves by
at most 0.05 dB, SSIM by at most 0.001, the 15 mm bias measure by at most 0.2 HU, and the denoise
stage is at least 1.5x faster. This script measures all four in one run and prints the verdict.
It needs a CPU with native bfloat16 (AVX512-BF16 or AMX); elsewhere there is nothing to compare.

    python -m bench.denoise_precision [--data ../shared/data] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pipelines.denoise.inference import DEFAULT_MODEL_DIR, Denoiser
from pipelines.precision import native_cpu_bfloat16
from training.data_folder import DATA_ROOT
from training.denoise.data import HELD_OUT_BY_KERNEL, load_scan
from training.denoise.evaluate import (
    EVALUATION_SEED,
    evaluation_slices,
    local_mean_deviation,
    mean_metrics,
    scan_photons,
    simulate_doses,
)

#: The rule's limits (training/denoise/LOG.md, written before the first measurement).
MAX_PSNR_CHANGE_DB, MAX_SSIM_CHANGE, MAX_BIAS_CHANGE_HU, MIN_SPEED_UP = 0.05, 0.001, 0.2, 1.5


def timed(denoiser: Denoiser, noisy: np.ndarray, spacing: tuple[float, float], family: str,
          repeat: int) -> tuple[np.ndarray, float]:
    """The denoised images and the fastest of ``repeat`` runs, in seconds; the kernel family is
    passed as the pipeline passes it, so the family's own weights run and none is measured."""
    best, out = float("inf"), noisy
    for _ in range(repeat):
        started = time.perf_counter()
        out = denoiser(noisy, spacing, family)
        best = min(best, time.perf_counter() - started)
    return out, best


def compare(data: Path, repeat: int) -> dict:
    """Per kernel and dose: quality and bias of both precisions, their difference, their time."""
    denoisers = {"float32": Denoiser.load(DEFAULT_MODEL_DIR, "cpu", half_precision=False),
                 "bfloat16": Denoiser.load(DEFAULT_MODEL_DIR, "cpu", half_precision=True)}
    report: dict = {}
    for kernel, name in HELD_OUT_BY_KERNEL.items():
        scan = evaluation_slices(load_scan(data, name))
        spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
        for dose, noisy in simulate_doses(scan, scan_photons(scan, EVALUATION_SEED), EVALUATION_SEED).items():
            rows, outputs = {}, {}
            for precision, denoiser in denoisers.items():
                outputs[precision], seconds = timed(denoiser, noisy, spacing, scan.filter_name, repeat)
                rows[precision] = {
                    **mean_metrics(outputs[precision], scan.hu),
                    "max_15mm_deviation_hu": local_mean_deviation(outputs[precision], noisy,
                                                                  scan.pixel_spacing_mm)["max_hu"],
                    "seconds_per_slice": seconds / len(noisy),
                }
            difference = np.abs(outputs["bfloat16"] - outputs["float32"])
            rows["pixel_difference_hu"] = {"p99.9": float(np.percentile(difference, 99.9)),
                                           "max": float(difference.max())}
            report[f"{kernel} {dose}"] = rows
    return report


def verdict(report: dict) -> dict[str, bool]:
    """Each of the rule's four conditions over every kernel and dose."""
    def worst(key: str) -> float:
        return max(abs(rows["bfloat16"][key] - rows["float32"][key]) for rows in report.values())

    speed_up = min(rows["float32"]["seconds_per_slice"] / rows["bfloat16"]["seconds_per_slice"]
                   for rows in report.values())
    return {
        f"PSNR change {worst('psnr_db'):.3f} dB <= {MAX_PSNR_CHANGE_DB}": worst("psnr_db") <= MAX_PSNR_CHANGE_DB,
        f"SSIM change {worst('ssim'):.4f} <= {MAX_SSIM_CHANGE}": worst("ssim") <= MAX_SSIM_CHANGE,
        f"bias change {worst('max_15mm_deviation_hu'):.3f} HU <= {MAX_BIAS_CHANGE_HU}":
            worst("max_15mm_deviation_hu") <= MAX_BIAS_CHANGE_HU,
        f"slowest speed-up {speed_up:.2f}x >= {MIN_SPEED_UP}": speed_up >= MIN_SPEED_UP,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not native_cpu_bfloat16():
        raise SystemExit("this CPU has no native bfloat16 (AVX512-BF16 or AMX): the pipeline runs float32 here")
    report = compare(args.data, args.repeat)
    print(f"{'kernel, dose':<18} {'precision':<9} {'PSNR dB':>8} {'SSIM':>7} {'15mm HU':>8} {'s/slice':>8}")
    for case, rows in report.items():
        for precision in ("float32", "bfloat16"):
            row = rows[precision]
            print(f"{case:<18} {precision:<9} {row['psnr_db']:8.3f} {row['ssim']:7.4f} "
                  f"{row['max_15mm_deviation_hu']:8.2f} {row['seconds_per_slice']:8.3f}")
        print(f"{'':<18} |bf16 - f32| HU: p99.9 {rows['pixel_difference_hu']['p99.9']:.2f}, "
              f"max {rows['pixel_difference_hu']['max']:.2f}")
    outcome = verdict(report)
    print(json.dumps(outcome, indent=1))
    print("rule met" if all(outcome.values()) else "rule NOT met: the CPU stays float32")


if __name__ == "__main__":
    main()
