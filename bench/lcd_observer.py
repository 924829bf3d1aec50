"""Our LG-CHO (training/denoise/lcd.py) against the FDA LCD-CT toolbox, on the toolbox's images.

Before the low-contrast detectability observer judges our denoiser, it must give the toolbox's
own numbers on the toolbox's own data: the small MITA-LCD data set of DIDSR/LCD_CT (commit
fe94e61, CC0), FBP and DL-denoised reconstructions at 10, 55 and 100 % dose, 10 signal-present
and 10 signal-absent 256 x 256 images each. This script runs our observer on all of them and
prints, per reconstruction, dose and insert, our mean AUC and d'_snr over the 10 readers beside
the toolbox's for the same setting, and the largest differences; ``--out`` gets every number,
reader by reader.

The toolbox's numbers come from running the toolbox's own Python package (``src/lcdct``,
``measure_LCD`` with ``observers=['LG_CHO_2D']``, ``n_reader=10``, ``pct_split=0.5``) in a
separate virtual environment; nothing here imports it, and neither it nor its data enter this
repository. Its readers' train/test splits are random unless ``seed_split`` is fixed, so the
reference fixes it and this script uses the same seed: the splits are then the same, and the
numbers must agree reader by reader. They do, but for the toolbox's float32 arithmetic: its
DL_denoised files hold HU + 1000 + 32768 in a MET_SHORT header, so they read as about -32770 HU
(the observer removes each ROI's mean, so the offset itself changes nothing) and the float32 ROI
means of such numbers are off by up to 0.002 HU. Measured (seed 0, 10 readers): every reader's AUC
equal, d'_snr within 1e-6 on FBP and 0.015 on DL_denoised; with float32 means as the toolbox's,
within 1e-13. At seed 7 with 50 readers, 4 of 1200 reader AUCs (all DL_denoised) differ by one
test pair (0.04), the same rounding; mean AUCs within 0.001. The toolbox's docs publish no numbers for the small data set (its
figure is for the large one, its tests assert no values), so running it is the only reference.
Commands, from the repository root (the first two once):

    mkdir -p /work/lcd_ct && git -C /work/.mirror/DIDSR+LCD_CT/repo archive fe94e61 | tar -x -C /work/lcd_ct
    /usr/bin/python3 -m venv /work/lcdvenv
    /work/lcdvenv/bin/pip install numpy scipy scikit-image SimpleITK pandas matplotlib scikit-learn
    python -m bench.lcd_observer --print-reference-script > /work/lcd_ct_reference.py
    OMP_NUM_THREADS=1 PYTHONPATH=/work/lcd_ct/src /work/lcdvenv/bin/python /work/lcd_ct_reference.py \\
        /work/lcd_ct 0 10 > /work/lcd_ct_reference.json
    OMP_NUM_THREADS=1 python -m bench.lcd_observer --toolbox /work/lcd_ct \\
        --reference /work/lcd_ct_reference.json --out /tmp/lcd_observer.json

(arguments of the reference script: toolbox folder, ``seed_split``, ``n_reader``). Rows are
matched by the insert's position in the toolbox's list (14, 7, 5, 3 HU), not by the toolbox's
``insert_HU`` column, which its Python ``measure_LCD`` fills with the last insert's HU (3) for
every row. Without ``--reference`` only our numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.denoise.lcd import (
    N_READERS,
    TOOLBOX_DOSES,
    TOOLBOX_RECONS,
    TRAIN_FRACTION,
    LcdResult,
    find_inserts,
    measure_lcd,
    toolbox_images,
    toolbox_truth,
)

#: The driver run in the toolbox's environment: the toolbox's own loaders, ground truth and
#: ``measure_LCD``, every reader's AUC and SNR written as JSON (printed by --print-reference-script).
REFERENCE_SCRIPT = '''"""The LCD-CT toolbox's own LG-CHO on its small data set: every reader's AUC and SNR as JSON.

Run with the toolbox's package on PYTHONPATH: python lcd_ct_reference.py TOOLBOX SEED N_READER
"""
import json
import sys
from pathlib import Path

import numpy as np
from lcdct.LCD import measure_LCD
from lcdct.utils import load_dataset, read_mhd

toolbox, seed, n_reader = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = toolbox / "data" / "small_dataset"
truth = read_mhd(str(base / "fbp" / "ground_truth.mhd")).astype(np.float32) - 1000
rows = []
for recon in ("fbp", "DL_denoised"):
    for dose in (10, 55, 100):
        sp, sa = load_dataset(base / recon / f"dose_{dose:03d}", offset=1000)
        res = measure_LCD(sp, sa, truth, observers=["LG_CHO_2D"], n_reader=n_reader, pct_split=0.5, seed_split=seed)
        for k in range(len(res) // n_reader):
            chunk = res.iloc[k * n_reader:(k + 1) * n_reader]
            rows.append({"recon": recon, "dose": dose, "insert_index": k,
                         "toolbox_insert_HU": float(chunk["insert_HU"].iloc[0]),
                         "toolbox_insert_diameter_pix": float(chunk["insert_diameter_pix"].iloc[0]),
                         "auc": [float(v) for v in chunk["auc"]], "snr": [float(v) for v in chunk["snr"]]})
print(json.dumps({"toolbox_commit": "fe94e61", "seed_split": seed, "n_reader": n_reader, "pct_split": 0.5,
                  "rows": rows}, indent=1))
'''

Key = tuple[str, int, int]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toolbox", type=Path, help="the unpacked LCD_CT folder (holds data/small_dataset)")
    parser.add_argument("--reference", type=Path, help="JSON written by the reference script in the toolbox's venv")
    parser.add_argument("--out", type=Path, help="write every number here (JSON)")
    parser.add_argument("--seed", type=int, default=0, help="split seed when there is no --reference (else its seed)")
    parser.add_argument("--print-reference-script", action="store_true", help="print the toolbox-side script and exit")
    args = parser.parse_args(argv)
    if not args.print_reference_script and args.toolbox is None:
        parser.error("--toolbox is required")
    return args


def load_reference(path: Path) -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    """The reference's settings and its rows by (recon, dose, insert index)."""
    reference = json.loads(path.read_text())
    if float(reference["pct_split"]) != TRAIN_FRACTION:
        raise SystemExit(f"the reference used pct_split {reference['pct_split']}, we use {TRAIN_FRACTION}")
    rows = {(row["recon"], int(row["dose"]), int(row["insert_index"])): row for row in reference["rows"]}
    return reference, rows


def measure_all(toolbox: Path, seed: int, n_readers: int) -> dict[Key, LcdResult]:
    """Our observer on every reconstruction, dose and insert of the toolbox's small data set."""
    inserts = find_inserts(toolbox_truth(toolbox))
    results: dict[Key, LcdResult] = {}
    for recon in TOOLBOX_RECONS:
        for dose in TOOLBOX_DOSES:
            present, absent = toolbox_images(toolbox, recon, dose)
            rows = measure_lcd(present, absent, inserts, recon=recon, dose_percent=dose, n_readers=n_readers, seed=seed)
            for index, row in enumerate(rows):
                results[(recon, dose, index)] = row
    return results


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(ours: LcdResult, theirs: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the report: our numbers, the toolbox's and their differences."""
    row: dict[str, Any] = {
        "recon": ours.recon, "dose_percent": ours.dose_percent, "insert_hu": ours.insert_hu,
        "insert_extent_px": ours.insert_extent_px, "channel_width_px": ours.channel_width_px,
        "roi_size_px": ours.roi_size_px, "auc": ours.auc, "auc_reader_std": ours.auc_std, "snr": ours.snr,
        "aucs": list(ours.aucs), "snrs": list(ours.snrs),
    }
    if theirs is not None:
        row.update({
            "toolbox_auc": mean(theirs["auc"]), "toolbox_snr": mean(theirs["snr"]),
            "toolbox_aucs": theirs["auc"], "toolbox_snrs": theirs["snr"],
            "toolbox_insert_extent_px": theirs["toolbox_insert_diameter_pix"] / 2,
            "auc_difference": ours.auc - mean(theirs["auc"]),
            "largest_reader_auc_difference": max(abs(a - b) for a, b in zip(ours.aucs, theirs["auc"])),
            "largest_reader_snr_difference": max(abs(a - b) for a, b in zip(ours.snrs, theirs["snr"])),
        })
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    """One table per reconstruction: insert by dose, ours | toolbox."""
    for recon in TOOLBOX_RECONS:
        print(f"\n{recon}: mean AUC (d'_snr) over readers, ours | toolbox")
        print(f"{'insert':>16} " + " ".join(f"{f'dose {dose} %':>33}" for dose in TOOLBOX_DOSES))
        for hu in sorted({row["insert_hu"] for row in rows}, reverse=True):
            cells = []
            for dose in TOOLBOX_DOSES:
                row = next(r for r in rows if r["recon"] == recon and r["dose_percent"] == dose and r["insert_hu"] == hu)
                theirs = f"{row['toolbox_auc']:.3f} ({row['toolbox_snr']:5.2f})" if "toolbox_auc" in row else "-"
                cells.append(f"{row['auc']:.3f} ({row['snr']:5.2f}) | {theirs:>15}")
            extent = next(r["insert_extent_px"] for r in rows if r["insert_hu"] == hu)
            print(f"{f'{hu:g} HU, {extent} px':>16} " + " ".join(f"{cell:>33}" for cell in cells))


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The largest differences from the toolbox over all rows."""
    compared = [row for row in rows if "toolbox_auc" in row]
    if not compared:
        return {}
    return {
        "largest_mean_auc_difference": max(abs(row["auc_difference"]) for row in compared),
        "largest_reader_auc_difference": max(row["largest_reader_auc_difference"] for row in compared),
        "largest_reader_snr_difference": max(row["largest_reader_snr_difference"] for row in compared),
        "largest_mean_snr_difference": max(abs(row["snr"] - row["toolbox_snr"]) for row in compared),
        "extent_mismatches": float(sum(row["insert_extent_px"] != row["toolbox_insert_extent_px"] for row in compared)),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    if args.print_reference_script:
        sys.stdout.write(REFERENCE_SCRIPT)
        return
    reference: dict[str, Any] = {}
    theirs: dict[Key, dict[str, Any]] = {}
    seed, n_readers = args.seed, N_READERS
    if args.reference is not None:
        reference, theirs = load_reference(args.reference)
        seed, n_readers = int(reference["seed_split"]), int(reference["n_reader"])
    ours = measure_all(args.toolbox, seed, n_readers)
    rows = [compare(result, theirs.get(key) if theirs else None) for key, result in ours.items()]
    print_table(rows)
    totals = summary(rows)
    for name, value in totals.items():
        print(f"{name}: {value:.3g}")
    if args.out is not None:
        report = {"toolbox": str(args.toolbox), "toolbox_commit": reference.get("toolbox_commit"), "seed_split": seed,
                  "n_readers": n_readers, "train_fraction": TRAIN_FRACTION, "summary": totals, "rows": rows}
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
