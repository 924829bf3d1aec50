"""Score a tumor model folder on clinical skull-on T1c scans, through the pipeline's ``segment``.

    python -m training.tumor.clinical_eval --model DIR --clinical /work/clinical \\
        --scans fold:0 --out DIR/fold0.json
    python -m training.tumor.clinical_eval --model DIR --scans heldout --out DIR/heldout.json
    python -m training.tumor.clinical_eval --summarize fold0.json fold1.json fold2.json --out FILE

Exactly what the node does to a T1c-alone study (brain extraction, the model grid, thresholds,
post-processing), with no size floor (``min_tumor_ml`` 0), so that every floor can be scored on
one run: each predicted tumor component is recorded with its volume, its core and enhancing
volumes and whether it touches the reference core. The reference is the clinical mask, the
tumor core (TC): Dice is TC against it; a reference lesion (a connected part of the mask) is
found when a predicted tumor component touches it; a predicted component that touches none is a
false lesion.

``--scans``: ``heldout`` (the 8 held-out volumes; never for choosing anything), ``fold:K`` (the
training volumes of cross-validation fold K, ``clinical_t1c.folds``), or scan names.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from pipelines.tumor.inference import Segmenter
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import dice
from training.data_folder import DATA_ROOT
from training.tumor.clinical_t1c import ClinicalScan, folds, heldout_scans, load_scan, training_scans

#: 26-connectivity: on 6 mm slices a lesion's parts on neighbouring slices touch only diagonally.
CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class Component:
    """One connected predicted tumor (labels 1, 2, 4), in mL, and whether it touches the reference;
    ``core_overlap_ml``, its core inside the reference core, lets TC Dice be scored at any size floor."""

    ml: float
    core_ml: float
    enhancing_ml: float
    core_overlap_ml: float
    touches_reference: bool


@dataclass(frozen=True)
class Lesion:
    """One connected part of the reference core: its volume and the predicted components touching it."""

    ml: float
    touched_by: list[int]   # indices into the scan's components


def score(labels: np.ndarray, reference: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    """TC Dice, the reference lesions and the predicted components of one scan."""
    core = np.isin(labels, (1, 4))
    tumor, count = ndimage.label(labels > 0, structure=CONNECTIVITY)
    components = [Component(round(float((tumor == k).sum()) * voxel_ml, 3),
                            round(float((core & (tumor == k)).sum()) * voxel_ml, 3),
                            round(float(((labels == 4) & (tumor == k)).sum()) * voxel_ml, 3),
                            round(float((core & reference & (tumor == k)).sum()) * voxel_ml, 3),
                            bool((reference & (tumor == k)).any())) for k in range(1, count + 1)]
    parts, lesion_count = ndimage.label(reference, structure=CONNECTIVITY)
    lesions = [Lesion(round(float((parts == k).sum()) * voxel_ml, 3),
                      sorted(int(c) - 1 for c in np.unique(tumor[parts == k]) if c > 0))
               for k in range(1, lesion_count + 1)]
    return {"tc_dice": round(dice(core, reference), 4),
            "reference_ml": round(float(reference.sum()) * voxel_ml, 3),
            "core_ml": round(float(core.sum()) * voxel_ml, 3), "tumor_ml": round(float((labels > 0).sum()) * voxel_ml, 3),
            "lesions": [asdict(lesion) for lesion in lesions], "components": [asdict(c) for c in components]}


def at_floor(result: dict[str, Any], floor_ml: float) -> dict[str, Any]:
    """One scan's scores when components under ``floor_ml`` are not reported: TC Dice, the
    reference lesions found (>= 1 mL and all), and the false lesions reported."""
    kept = [c["ml"] >= floor_ml for c in result["components"]]
    core = sum(c["core_ml"] for c, k in zip(result["components"], kept) if k)
    overlap = sum(c["core_overlap_ml"] for c, k in zip(result["components"], kept) if k)
    total = core + result["reference_ml"]
    found = [any(kept[i] for i in lesion["touched_by"]) for lesion in result["lesions"]]
    large = [f for f, lesion in zip(found, result["lesions"]) if lesion["ml"] >= 1.0]
    return {"tc_dice": round(2 * overlap / total, 4) if total else 1.0,
            "lesions_1ml": len(large), "found_1ml": sum(large), "lesions": len(found), "found": sum(found),
            "false_lesions": sum(k and not c["touches_reference"] for c, k in zip(result["components"], kept))}


def summary(results: dict[str, dict[str, Any]], floor_ml: float) -> dict[str, Any]:
    """Median TC Dice, lesion-wise sensitivity (lesions >= 1 mL) and false lesions per scan at a floor."""
    scans = {name: at_floor(result, floor_ml) for name, result in results.items()}
    lesions = sum(s["lesions_1ml"] for s in scans.values())
    return {"floor_ml": floor_ml, "scans": len(scans),
            "median_tc_dice": round(float(np.median([s["tc_dice"] for s in scans.values()])), 4),
            "sensitivity_1ml": round(sum(s["found_1ml"] for s in scans.values()) / lesions, 4) if lesions else None,
            "false_lesions_per_scan": round(sum(s["false_lesions"] for s in scans.values()) / len(scans), 3),
            "per_scan": scans}


def evaluate_scan(segmenter: Segmenter, scan: ClinicalScan) -> dict[str, Any]:
    image, mask = load_scan(scan)
    started = time.time()
    labels = segment(segmenter, {"t1c": image}, {}, "t1c", min_tumor_ml=0.0)
    result = score(labels, sitk.GetArrayFromImage(mask) > 0, float(np.prod(image.GetSpacing())) / 1000.0)
    result["seconds"] = round(time.time() - started, 1)
    return result


def chosen_scans(which: list[str], clinical: Path | None, data: Path) -> list[ClinicalScan]:
    if which == ["heldout"]:
        return heldout_scans(data)
    if clinical is None:
        raise SystemExit("--clinical is required for training scans (the fetched repositories, clinical_t1c.SOURCES)")
    training = training_scans(clinical)
    if len(which) == 1 and which[0].startswith("fold:"):
        patients = folds(training)[int(which[0].removeprefix("fold:"))]
        return [scan for scan in training if scan.patient in patients]
    by_name = {scan.name: scan for scan in training}
    unknown = [name for name in which if name not in by_name]
    if unknown:
        raise SystemExit(f"--scans: {', '.join(unknown)} not among the training scans ({', '.join(by_name)})")
    return [by_name[name] for name in which]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--scans", nargs="+", help="heldout, fold:K, or training scan names")
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="JSON",
                        help="instead of scoring: the summary of earlier outputs taken together, at each --floors")
    parser.add_argument("--floors", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--clinical", type=Path, help="the fetched clinical T1c repositories")
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.summarize:
        results = {name: result for path in args.summarize for name, result in json.loads(path.read_text())["results"].items()}
        summaries = [summary(results, floor) for floor in args.floors]
        for s in summaries:
            print({key: value for key, value in s.items() if key != "per_scan"})
        args.out.write_text(json.dumps(summaries, indent=2) + "\n")
        return
    if args.model is None or not args.scans:
        raise SystemExit("--model and --scans are required to score (or --summarize earlier outputs)")
    torch.set_num_threads(args.threads)
    segmenter = Segmenter.load(args.model)
    results = {}
    for scan in chosen_scans(args.scans, args.clinical, args.data):
        results[scan.name] = evaluate_scan(segmenter, scan)
        found = sum(bool(lesion["touched_by"]) for lesion in results[scan.name]["lesions"])
        print(f"{scan.name}: TC Dice {results[scan.name]['tc_dice']:.3f}, core {results[scan.name]['core_ml']:.1f} mL "
              f"(reference {results[scan.name]['reference_ml']:.1f}), lesions found {found}/"
              f"{len(results[scan.name]['lesions'])}, {results[scan.name]['seconds']} s", flush=True)
    args.out.write_text(json.dumps({"model": str(args.model), "scans": args.scans, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
