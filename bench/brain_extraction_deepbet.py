"""Brain extraction on skull-on T1c: the node's own classical extractor against deepbet, scan by scan.

``pipelines.tumor.brain_extraction.extract_brain`` (classical, morphological) is run side by side
with deepbet (Fisch et al. 2024, MIT; PyPI ``deepbet``, its two TorchScript models ship in the wheel)
called the way its authors call it: ``deepbet.bet.BrainExtraction`` (what ``run_bet`` builds) on a
NIfTI file, default threshold 0.5, no dilation, on the CPU. deepbet's API works on files, so each
image is written to a temporary NIfTI (``SimpleITK.WriteImage``) and its mask read back; the check
that it comes back on the input's grid and orientation is its share inside the head (it should be ~1).

- **TCGA-FG-6692** (../shared/data/mr-brain, the one clinical skull-on T1c whose header is true,
  26 slices of 5.5 mm): Dice of each mask against HD-BET's mask of it.
- **clinical T1c with tumor core** (``training.tumor.clinical_t1c``: 8 held-out volumes
  from the shared data, 30 training volumes from ``--clinical``; 22-26 slices of about 6 mm, on the
  geometry that module recovers): the share of tumor-core voxels inside each extracted brain (a
  mask that cuts the tumor off loses it; higher is better) and the brain's volume in mL (an adult
  brain is about 1000-1600 mL; volumes outside 800-1900 mL are flagged).
- **already stripped** (the 1 mm BraTS-preprocessed TCGA T1c, ``raw_bet``): the share of non-zero
  voxels each method keeps (both should keep nearly all).

Seconds are wall clock per scan, one thread for both methods (``--threads``: torch's threads and
SimpleITK's; run with ``OMP_NUM_THREADS=1`` too, so that numpy/scipy's libraries use one as well);
deepbet's include writing and reading its NIfTI files, its model load is counted once, apart.

    pip install deepbet
    OMP_NUM_THREADS=1 python -m bench.brain_extraction_deepbet --clinical /work/clinical --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.preprocess import dice
from training.data_folder import DATA_ROOT
from training.tumor.clinical_t1c import (
    ClinicalScan,
    head_mask,
    heldout_scans,
    load_scan,
    training_scans,
)

TCGA_T1C = ("mr-brain/tcga-fg-6692/MRHR_T1_AX_POST_GAD_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_"
            "MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz")
TCGA_HDBET_MASK = "mr-brain/tcga-fg-6692/brain-mask-hdbet/t1c_brain_mask.nii.gz"
TCGA_STRIPPED = "mr-brain/tcga-fg-6692/OtherEXampleFromTCIA_brainles/raw_bet/OtherEXampleFromTCIA_t1c_bet.nii.gz"
#: A brain volume (mL) outside this range is flagged as implausible for an adult.
PLAUSIBLE_ML = (800.0, 1900.0)

Extractor = Callable[[sitk.Image], np.ndarray]


@dataclass
class Row:
    """One scan: what each method made of it. Shares are of the reference voxels (tumor core,
    non-zero voxels) inside the mask; ``*_in_head`` is the share of the mask inside the head."""

    scan: str
    group: str            # tcga | heldout | training | stripped
    grid: str             # slices x spacing
    own_seconds: float
    deepbet_seconds: float
    own_ml: float
    deepbet_ml: float
    own_in_head: float
    deepbet_in_head: float
    dice_own_deepbet: float
    own_inside: float | None = None      # tumor core (clinical) or non-zero voxels (stripped) inside
    deepbet_inside: float | None = None
    own_dice_hdbet: float | None = None  # TCGA only
    deepbet_dice_hdbet: float | None = None
    reference_ml: float | None = None    # HD-BET's brain (TCGA) or the non-zero voxels (stripped)


class Deepbet:
    """deepbet's ``BrainExtraction``, loaded once, run on one image through temporary NIfTI files."""

    def __init__(self, threads: int) -> None:
        try:
            import torch
            from deepbet.bet import BrainExtraction
            from deepbet.utils import is_file_broken
        except ImportError as error:
            raise SystemExit(f"deepbet is not installed ({error}): pip install deepbet") from error
        torch.set_num_threads(threads)
        self._is_file_broken = is_file_broken
        started = time.perf_counter()
        self._bet = BrainExtraction(no_gpu=True)
        self.load_seconds = time.perf_counter() - started
        self._tmp = tempfile.TemporaryDirectory(prefix="deepbet-bench-")

    def __call__(self, image: sitk.Image) -> np.ndarray:
        folder = Path(self._tmp.name)
        source, target = str(folder / "image.nii.gz"), str(folder / "mask.nii.gz")
        sitk.WriteImage(image, source)
        if self._is_file_broken(source):   # run_bet would skip the file with a warning
            raise RuntimeError(f"deepbet would skip {source} as broken (under 100 kB?)")
        self._bet.run(source, mask_path=target)
        mask = sitk.ReadImage(target)
        _same_grid(mask, image)
        return np.asarray(sitk.GetArrayFromImage(mask) > 0)

    def close(self) -> None:
        self._tmp.cleanup()


def _same_grid(mask: sitk.Image, image: sitk.Image) -> None:
    """Raise unless ``mask`` lies on ``image``'s grid (size, spacing, origin, axes; NIfTI's float precision)."""
    same = (mask.GetSize() == image.GetSize()
            and np.allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-4)
            and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
            and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-4))
    if not same:
        raise RuntimeError(f"deepbet's mask is not on the input's grid: {mask.GetSize()} {mask.GetSpacing()} "
                           f"{mask.GetOrigin()} vs {image.GetSize()} {image.GetSpacing()} {image.GetOrigin()}")


def own(image: sitk.Image) -> np.ndarray:
    """The node's extractor; its mask is 0/1, >= 0.5 inside."""
    return np.asarray(sitk.GetArrayFromImage(extract_brain(image)) >= 0.5)


def timed(extractor: Extractor, image: sitk.Image) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    mask = extractor(image)
    return mask, time.perf_counter() - started


def share(part: np.ndarray, whole: np.ndarray) -> float | None:
    """Share of ``whole``'s voxels inside ``part`` (None when ``whole`` is empty)."""
    total = int(whole.sum())
    return None if total == 0 else float((part & whole).sum() / total)


def measure(name: str, group: str, image: sitk.Image, deepbet: Deepbet, reference: np.ndarray | None = None,
            head: np.ndarray | None = None) -> tuple[Row, np.ndarray, np.ndarray]:
    """Both methods on ``image`` (the row, own mask, deepbet's mask); ``reference`` is the tumor core
    (clinical) or the non-zero voxels (stripped)."""
    own_mask, own_seconds = timed(own, image)
    deepbet_mask, deepbet_seconds = timed(deepbet, image)
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    head = head_mask(pixels) if head is None else head
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    size, spacing = image.GetSize(), image.GetSpacing()
    grid = f"{size[2]} x {spacing[2]:.1f} mm, {size[0]}x{size[1]} of {spacing[0]:.2f} mm"
    row = Row(name, group, grid, own_seconds, deepbet_seconds, float(own_mask.sum() * voxel_ml),
              float(deepbet_mask.sum() * voxel_ml), share(head, own_mask) or 0.0, share(head, deepbet_mask) or 0.0,
              dice(own_mask, deepbet_mask))
    if reference is not None:
        row.own_inside, row.deepbet_inside = share(own_mask, reference), share(deepbet_mask, reference)
        if group == "stripped":
            row.reference_ml = float(reference.sum() * voxel_ml)
    return row, own_mask, deepbet_mask


def tcga(deepbet: Deepbet) -> Row:
    image = sitk.ReadImage(str(DATA_ROOT / TCGA_T1C), sitk.sitkFloat32)
    hdbet = sitk.ReadImage(str(DATA_ROOT / TCGA_HDBET_MASK))
    truth = np.asarray(sitk.GetArrayFromImage(hdbet) > 0)
    row, own_mask, deepbet_mask = measure("TCGA-FG-6692", "tcga", image, deepbet)
    row.own_dice_hdbet, row.deepbet_dice_hdbet = dice(own_mask, truth), dice(deepbet_mask, truth)
    row.reference_ml = float(truth.sum() * np.prod(image.GetSpacing()) / 1000.0)
    return row


def stripped(deepbet: Deepbet) -> Row:
    image = sitk.ReadImage(str(DATA_ROOT / TCGA_STRIPPED), sitk.sitkFloat32)
    nonzero = np.asarray(sitk.GetArrayFromImage(image) != 0)
    return measure("TCGA-FG-6692 raw_bet (1 mm, stripped)", "stripped", image, deepbet, nonzero, head=nonzero)[0]


def clinical(scans: Sequence[ClinicalScan], group: str, deepbet: Deepbet) -> list[Row]:
    rows = []
    for scan in scans:
        image, core = load_scan(scan)
        rows.append(measure(scan.name, group, image, deepbet, np.asarray(sitk.GetArrayFromImage(core) > 0))[0])
        print_row(rows[-1])
    return rows


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _flag(ml: float) -> str:
    return "" if PLAUSIBLE_ML[0] <= ml <= PLAUSIBLE_ML[1] else " (!)"


HEADER = ("| scan | grid | own inside | deepbet inside | own mL | deepbet mL | own s | deepbet s "
          "| own in head | deepbet in head | Dice own-deepbet |")


def print_row(row: Row) -> None:
    print(f"| {row.scan} | {row.grid} | {_fmt(row.own_inside)} | {_fmt(row.deepbet_inside)} | "
          f"{row.own_ml:.0f}{_flag(row.own_ml)} | {row.deepbet_ml:.0f}{_flag(row.deepbet_ml)} | "
          f"{row.own_seconds:.2f} | {row.deepbet_seconds:.2f} | {row.own_in_head:.3f} | {row.deepbet_in_head:.3f} | "
          f"{row.dice_own_deepbet:.3f} |", flush=True)


def summarize(rows: Sequence[Row], load_seconds: float) -> dict[str, Any]:
    """Median/min tumor-inside share per method and group, flagged volumes, TCGA Dice, seconds and their ratio."""
    summary: dict[str, Any] = {"deepbet_load_seconds": load_seconds}
    clinical_rows = [r for r in rows if r.group in ("heldout", "training")]
    for label, group in (("heldout", ["heldout"]), ("training", ["training"]), ("clinical", ["heldout", "training"])):
        chosen = [r for r in clinical_rows if r.group in group]
        for method in ("own", "deepbet"):
            inside = [v for r in chosen if (v := getattr(r, f"{method}_inside")) is not None]
            volumes = [getattr(r, f"{method}_ml") for r in chosen]
            if inside:
                summary[f"{label}_{method}_inside_median"] = statistics.median(inside)
                summary[f"{label}_{method}_inside_min"] = min(inside)
                summary[f"{label}_{method}_ml_median"] = statistics.median(volumes)
                summary[f"{label}_{method}_ml_flagged"] = [r.scan for r, ml in zip(chosen, volumes) if _flag(ml)]
    for row in rows:
        if row.group == "tcga":
            summary["tcga_own_dice_hdbet"] = row.own_dice_hdbet
            summary["tcga_deepbet_dice_hdbet"] = row.deepbet_dice_hdbet
    skull_on = [r for r in rows if r.group != "stripped"]
    own_median = statistics.median(r.own_seconds for r in skull_on)
    deepbet_median = statistics.median(r.deepbet_seconds for r in skull_on)
    summary.update(own_seconds_median=own_median, deepbet_seconds_median=deepbet_median,
                   seconds_ratio_deepbet_over_own=deepbet_median / own_median)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print("\nSummary (tumor core inside the brain mask; skull-on scans' seconds)")
    for label in ("heldout", "training", "clinical"):
        for method in ("own", "deepbet"):
            key = f"{label}_{method}"
            if f"{key}_inside_median" in summary:
                flagged = summary[f"{key}_ml_flagged"]
                print(f"  {label:<9} {method:<8} inside median {summary[f'{key}_inside_median']:.4f}  "
                      f"min {summary[f'{key}_inside_min']:.4f}  brain median {summary[f'{key}_ml_median']:.0f} mL  "
                      f"outside {PLAUSIBLE_ML[0]:.0f}-{PLAUSIBLE_ML[1]:.0f} mL: {len(flagged)} {flagged or ''}")
    if "tcga_own_dice_hdbet" in summary:
        print(f"  TCGA-FG-6692 Dice vs HD-BET: own {summary['tcga_own_dice_hdbet']:.4f}, "
              f"deepbet {summary['tcga_deepbet_dice_hdbet']:.4f}")
    print(f"  seconds per scan (median): own {summary['own_seconds_median']:.2f}, "
          f"deepbet {summary['deepbet_seconds_median']:.2f} (model load {summary['deepbet_load_seconds']:.2f} once); "
          f"deepbet / own = {summary['seconds_ratio_deepbet_over_own']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clinical", type=Path, default=None,
                        help="root of the fetched training repositories (clinical_t1c.SOURCES); held out only without")
    parser.add_argument("--out", type=Path, default=None, help="write every row and the summary as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch and SimpleITK threads, for both methods")
    parser.add_argument("--no-stripped", action="store_true", help="skip the already-stripped 1 mm case")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    deepbet = Deepbet(args.threads)
    try:
        print(f"deepbet model load {deepbet.load_seconds:.2f} s (once); {args.threads} thread(s) for both methods\n")
        print(HEADER)
        print("|" + "---|" * HEADER.count(" | ") + "---|")
        rows = [tcga(deepbet)]
        print_row(rows[0])
        rows += clinical(heldout_scans(), "heldout", deepbet)
        if args.clinical is not None:
            rows += clinical(training_scans(args.clinical), "training", deepbet)
        if not args.no_stripped:
            rows.append(stripped(deepbet))
            print_row(rows[-1])
    finally:
        deepbet.close()
    tcga_row = rows[0]
    print(f"\nTCGA-FG-6692: HD-BET brain {_fmt(tcga_row.reference_ml, 0)} mL; Dice vs HD-BET own "
          f"{_fmt(tcga_row.own_dice_hdbet, 4)}, deepbet {_fmt(tcga_row.deepbet_dice_hdbet, 4)}. 'inside' is the "
          "tumor core's share (clinical) or the non-zero voxels' share (stripped); (!) marks implausible volumes.")
    summary = summarize(rows, deepbet.load_seconds)
    print_summary(summary)
    if args.out is not None:
        args.out.write_text(json.dumps({"rows": [asdict(r) for r in rows], "summary": summary}, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
