"""Validation of a nodule model on the held-out real CT: FROC with inserted nodules, real tumour.

``python -m training.nodule.evaluate [--model DIR] [--trials 5] [--out evaluation.json]``
``python -m training.nodule.evaluate --calibrate [--apply] [--out calibration.json]``

Calibration (``calibrate``) sets the reporting threshold without the held-out patient, on the
half of the training scan that training never saw; ``--apply`` writes it into the model
folder's ``params.toml``. Evaluation then reports the held-out numbers at that threshold.

For each held-out series (lung-pet-ct-dx-A0002, B40f and B70f) and each trial, six synthetic
nodules (``synthesis``; seeded, 4-40 mm) are inserted into the lungs away from the real tumour and
the pipeline's own detection path runs on the result (grid, detector, lung filter, fusion of
nested boxes). A detection hits a nodule when its centre lies in the nodule's box grown by
``HIT_MARGIN_MM``; each nodule counts once; a hit on the annotated real tumour is neither a true nor a false positive for the
FROC and is reported as the real-tumour sensitivity instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.model_folder import read_params
from pipelines.nodule import candidates as candidate_stage
from pipelines.nodule import scorer
from pipelines.nodule.candidate_detector import CandidateDetector, corners_lps
from pipelines.nodule.detector import DEFAULT_MODEL_DIR, Detection, NoduleDetector
from pipelines.nodule.grid import to_model_grid
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.pipeline import fuse_nested, near_lungs
from pipelines.volume import Volume
from training.data_folder import DATA_ROOT
from training.nodule import data, synthesis
from training.nodule.train import write_params

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HIT_MARGIN_MM = 2.0
NODULES_PER_SCAN = 6
EVALUATION_SEED = 20261121
LUNG_MARGIN_MM = 10.0
#: The operating point for the reporting threshold, fixed before any held-out number was seen:
#: 1 false positive per scan, the middle of the LUNA16 FROC range (1/8 to 8) and a load a reader
#: can dismiss in seconds.
CALIBRATION_FP_PER_SCAN = 1.0


@dataclass(frozen=True)
class Truth:
    """A nodule to be found: its LPS box and size."""

    lps_box: np.ndarray  # [[min], [max]]
    diameter_mm: float
    kind: str


def insert_nodules(
    volume: Volume, count: int, rng: np.random.Generator, avoid_lps: Sequence[np.ndarray] = (),
    min_mm: float = 4.0, max_mm: float = 40.0, region: np.ndarray | None = None,
) -> tuple[Volume, list[Truth]]:
    """A copy of ``volume`` with ``count`` synthetic nodules in its lungs (within ``region``, a
    boolean array shaped like the volume, when given), and where they are."""
    array = volume.array.copy()
    spacing = np.asarray(volume.spacing[::-1])
    lungs = lung_mask(array, slice_axis=0)
    if region is not None:
        lungs &= region
    avoid = []
    for box in avoid_lps:
        avoid.append((volume.lps_to_kji(box.mean(axis=0)), float(np.max(box[1] - box[0])) / 2))
    truths: list[Truth] = []
    while len(truths) < count:
        spec = synthesis.sample_spec(rng, min_mm, max_mm)
        centre = synthesis.pick_center(lungs, spacing, spec, rng, avoid)
        if centre is None:
            continue
        inserted = synthesis.insert(array, spacing, centre, spec, rng)
        corners = np.array([[k, j, i] for k in inserted.box[0::3] for j in inserted.box[1::3] for i in inserted.box[2::3]])
        lps = volume.kji_to_lps(corners)
        truths.append(Truth(np.array([lps.min(axis=0), lps.max(axis=0)]), spec.diameter_mm, spec.kind))
        avoid.append((centre, spec.diameter_mm / 2))
    return dataclasses.replace(volume, array=array), truths


def candidates(detector: NoduleDetector, volume: Volume) -> list[Detection]:
    """The pipeline's detection path without measurement: grid, detector, lung filter, fusion."""
    grid = detector.grid(volume)
    lungs = lung_mask(grid.hu, slice_axis=2)
    return fuse_nested(near_lungs(grid, lungs, detector.detect(grid), LUNG_MARGIN_MM))


@dataclass(frozen=True)
class Scorable:
    """A scan's candidates near the lungs, with the scorer's inputs: what ``candidates`` gives
    before scoring, kept so that several scorer folders (or one trained later) score the same boxes."""

    boxes: np.ndarray     # (n, 6) grid boxes
    corners: np.ndarray   # (n, 8, 3) LPS
    patches: np.ndarray   # scorer.inputs
    scalars: np.ndarray


def scorable(volume: Volume, ground_glass: bool) -> Scorable:
    """The candidate stage on ``volume`` (the one a scorer folder with ``[candidates] ground_glass``
    runs) and its candidates near the lungs; nothing here depends on a score."""
    grid = to_model_grid(volume, (candidate_stage.GRID_MM,) * 3)
    lungs = lung_mask(grid.hu, slice_axis=2)
    scan = candidate_stage.find_on_grid(grid, ground_glass=ground_glass)
    boxed = [Detection(c.box, corners_lps(scan, c), 0.0) for c in scan.candidates]
    near = {id(d) for d in near_lungs(grid, lungs, boxed, LUNG_MARGIN_MM)}
    keep = [n for n, d in enumerate(boxed) if id(d) in near]
    patches, scalars = scorer.inputs(scan, [scan.candidates[n] for n in keep])
    return Scorable(np.array([boxed[n].grid_box for n in keep]).reshape(-1, 6),
                    np.array([boxed[n].lps_corners for n in keep]).reshape(-1, 8, 3), patches, scalars)


def scored_by(detector: CandidateDetector, found: Scorable) -> list[Detection]:
    """``candidates`` of the scan ``found`` came from, scored by ``detector``'s folder: fused, best first."""
    scores = scorer.mean_score(detector.nets, found.patches, found.scalars, detector.device)
    detections = [Detection(b, c, float(s)) for b, c, s in zip(found.boxes, found.corners, scores)]
    return fuse_nested(sorted(detections, key=lambda d: -d.score))


def hits(detection: Detection, box: np.ndarray) -> bool:
    centre = detection.center_lps
    return bool(np.all(centre >= box[0] - HIT_MARGIN_MM) and np.all(centre <= box[1] + HIT_MARGIN_MM))


def score_scan(detections: list[Detection], truths: list[Truth], tumors: list[np.ndarray]) -> dict[str, Any]:
    """Per detection: (score, kind) where kind is 'tp' (first hit of a nodule), 'fp', 'tumor' or 'dup'."""
    found: dict[int, float] = {}
    marks = []
    for d in detections:  # best score first
        target = next((n for n, t in enumerate(truths) if hits(d, t.lps_box)), None)
        if target is not None:
            marks.append((d.score, "dup" if target in found else "tp"))
            found.setdefault(target, d.score)
        elif any(hits(d, box) for box in tumors):
            marks.append((d.score, "tumor"))
        else:
            marks.append((d.score, "fp"))
    tumor_score = max((d.score for d in detections if any(hits(d, b) for b in tumors)), default=0.0)
    return {"marks": marks, "found": found, "tumor_score": tumor_score}


def froc(scans: list[dict[str, Any]], truths: list[list[Truth]], rates: Sequence[float] = FP_RATES) -> dict[str, float]:
    """Sensitivity at each false-positive rate per scan (the best threshold that stays within it)."""
    total = sum(len(t) for t in truths)
    events = sorted(
        [(s, kind) for scan in scans for s, kind in scan["marks"] if kind in ("tp", "fp")], key=lambda e: -e[0]
    )
    result = {}
    for rate in rates:
        allowed = rate * len(scans)
        tp = fp = 0
        best = 0
        for _, kind in events:
            if kind == "fp":
                fp += 1
                if fp > allowed:
                    break
            else:
                tp += 1
            best = tp
        result[str(rate)] = round(best / total, 3)
    return result


def at_threshold(scans: list[dict[str, Any]], truths: list[list[Truth]], threshold: float) -> dict[str, float | dict[str, str]]:
    total = sum(len(t) for t in truths)
    tp = sum(1 for scan in scans for s, kind in scan["marks"] if kind == "tp" and s >= threshold)
    fp = sum(1 for scan in scans for s, kind in scan["marks"] if kind == "fp" and s >= threshold)
    by_size: dict[str, list[int]] = {}
    for scan, scan_truths in zip(scans, truths):
        for n, truth in enumerate(scan_truths):
            band = "4-6 mm" if truth.diameter_mm < 6 else "6-10 mm" if truth.diameter_mm < 10 else \
                "10-20 mm" if truth.diameter_mm < 20 else ">= 20 mm"
            hit = scan["found"].get(n, 0.0) >= threshold
            by_size.setdefault(band, [0, 0])
            by_size[band][0] += int(hit)
            by_size[band][1] += 1
    return {
        "threshold": threshold,
        "sensitivity": round(tp / total, 3),
        "fp_per_scan": round(fp / len(scans), 2),
        "sensitivity_by_size": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_size.items())},
    }


def threshold_for(scans: list[dict[str, Any]], fp_per_scan: float) -> float:
    """The lowest score threshold that keeps false positives within ``fp_per_scan``."""
    fps = sorted((s for scan in scans for s, kind in scan["marks"] if kind == "fp"), reverse=True)
    allowed = int(fp_per_scan * len(scans))
    return float(fps[allowed]) + 1e-3 if len(fps) > allowed else 0.05


def calibrate(model: Path, data_dir: Path, trials: int, fp_per_scan: float = CALIBRATION_FP_PER_SCAN) -> dict[str, Any]:
    """The reporting threshold, set on the half of the training scan that training never sees.

    ``train`` cuts the training scan at the lungs' midline and trains on the patient's right half
    only. Here nodules are inserted into the left lung of the same scan (as acquired and
    slab-averaged), and only detections centred left of the midline are scored; half a chest gets
    half of the per-scan false-positive budget. The held-out patient is never read.
    """
    detector = NoduleDetector.load(model, "cpu")
    rng = np.random.default_rng(EVALUATION_SEED + 1)
    volume = data.load(data_dir, data.TRAINING)
    midline = data.midline_x(volume)
    scans, truths = [], []
    for factor in data.SLAB_FACTORS:
        thick = data.slab_average(volume, factor)
        left = _left_of(thick, midline)
        for _ in range(trials):
            inserted, scan_truths = insert_nodules(thick, NODULES_PER_SCAN, rng, region=left)
            found = [d for d in candidates(detector, inserted) if d.center_lps[0] > midline]
            scans.append(score_scan(found, scan_truths, []))
            truths.append(scan_truths)
    threshold = round(threshold_for(scans, fp_per_scan / 2.0), 3)
    return {
        "calibration_region": f"{data.TRAINING}, patient's left half (LPS x > {midline:.1f} mm), "
                              f"slab factors {list(data.SLAB_FACTORS)}",
        "half_scans": len(scans),
        "nodules": sum(len(t) for t in truths),
        "target_fp_per_scan": fp_per_scan,
        "report_threshold": threshold,
        "at_threshold_per_half_scan": at_threshold(scans, truths, threshold),
    }


def _left_of(volume: Volume, midline_x: float) -> np.ndarray:
    """Voxels of ``volume`` on the patient's left of the midline (LPS x above it)."""
    axes = [np.arange(n, dtype=np.float64) for n in volume.array.shape]  # k, j, i
    step = volume.direction[0] * np.asarray(volume.spacing)  # LPS x per i, j, k step
    x = (volume.origin[0] + axes[0][:, None, None] * step[2] + axes[1][None, :, None] * step[1]
         + axes[2][None, None, :] * step[0])
    left: np.ndarray = x > midline_x
    return left


def evaluate(model: Path, data_dir: Path, trials: int) -> dict[str, Any]:
    detector = NoduleDetector.load(model, "cpu")
    rng = np.random.default_rng(EVALUATION_SEED)
    scans, truths, tumor_scores = [], [], {}
    for name in data.HELD_OUT:
        volume = data.load(data_dir, name)
        tumors = data.tumor_boxes(data_dir, name, volume)
        tumor_scores[name] = score_scan(candidates(detector, volume), [], tumors)["tumor_score"]
        for _ in range(trials):
            inserted, scan_truths = insert_nodules(volume, NODULES_PER_SCAN, rng, tumors)
            scans.append(score_scan(candidates(detector, inserted), scan_truths, tumors))
            truths.append(scan_truths)
    threshold = detector.settings.report_threshold
    return {
        "held_out": list(data.HELD_OUT),
        "scans": len(scans),
        "nodules": sum(len(t) for t in truths),
        "froc_sensitivity_at_fp_per_scan": froc(scans, truths),
        "at_report_threshold": at_threshold(scans, truths, threshold),
        "real_tumor_score": {k: round(v, 3) for k, v in tumor_scores.items()},
        "real_tumor_sensitivity": sum(v >= threshold for v in tumor_scores.values()) / len(tumor_scores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--calibrate", action="store_true",
                        help="set the reporting threshold on the training scan's unseen half (see calibrate), "
                             "print it, then stop")
    parser.add_argument("--apply", action="store_true",
                        help="with --calibrate: write the threshold into the model folder's params.toml")
    args = parser.parse_args()
    run = calibrate if args.calibrate else evaluate
    result = run(args.model, args.data, args.trials)
    if args.calibrate and args.apply:
        params = read_params(args.model)
        params["inference"]["report_threshold"] = result["report_threshold"]
        write_params(args.model / "params.toml", params)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
