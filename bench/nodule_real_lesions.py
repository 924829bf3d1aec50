"""The nodule pipeline's reported findings on every real lesion >= 10 mm of the five real patients:
the candidate stage + scorer (each patient by the fold scorer that never saw it, at that fold's
threshold) against the RetinaNet at its shipped threshold (the model card's replacement rule).

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python3 bench/nodule_real_lesions.py \
        [--detector scorer|retinanet] [--scorer DIR] [--out FILE.json]

``--scorer`` measures a scorer folder written by ``train_scorer`` (with its ``folds/``) before
it replaces the shipped one.

Both run through the pipeline's own path (grid, lung check, fusion of nested boxes, threshold,
in-box segmentation and measurement on the source slices). A lesion is reported when a reported
finding's box centre lies in its reference box grown by 2 mm; a reported finding on no lesion and
in no ignore region is a false positive. For each reported lesion the long axis and volume
measured by the pipeline are printed beside the reference (LIDC: the >= 2-reader consensus mask;
A0002: the longest annotated side). The RetinaNet was trained on C3N-00247 (its right half), so
that row is not held out for it; the LIDC scans and A0002 never reached its training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.base import PipelineSettings
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR, CandidateDetector
from pipelines.nodule.detector import DEFAULT_MODEL_DIR
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.pipeline import NoduleDetection
from pipelines.nodule.training import evaluate, patients
from pipelines.training.data_folder import DATA_ROOT

MIN_LESION_MM = 10.0


def pipeline_for(detector: str, patient: str, scorer_dir: Path = DEFAULT_SCORER_DIR) -> NoduleDetection:
    model = scorer_dir / "folds" / patient if detector == "scorer" else DEFAULT_MODEL_DIR
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(model)))


def findings(pipeline: NoduleDetection, series: patients.Series) -> list:
    volume = series.volume
    grid = pipeline.detector.grid(volume)
    lungs = lung_mask(grid.hu, slice_axis=2)
    if isinstance(pipeline.detector, CandidateDetector):
        candidates = pipeline.detector.detect(grid, lungs)
    else:
        candidates = pipeline.detector.detect(grid)
    return pipeline.nodules(volume, grid, lungs, candidates)


def _mean_abs_difference(lesions: list[dict], unit: str, digits: int) -> float | None:
    """Mean |measured - reference| over the LIDC lesions, in ``unit`` ("mm" or "ml"); None without any."""
    if not lesions:
        return None
    return round(float(np.mean([abs(r[f"measured_{unit}"] - r[f"reference_{unit}"]) for r in lesions])), digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=("scorer", "retinanet"), default="scorer")
    parser.add_argument("--scorer", type=Path, default=DEFAULT_SCORER_DIR, help="scorer folder with its folds/")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, scans = [], []
    for patient in patients.PATIENTS:
        pipeline = pipeline_for(args.detector, patient, args.scorer)
        threshold = pipeline.detector.settings.report_threshold
        for name in patients.PATIENTS[patient]:
            series = patients.load(DATA_ROOT, patient, name)
            started = time.process_time()
            reported = findings(pipeline, series)
            seconds = time.process_time() - started
            boxes = [les.lps_box for les in series.lesions] + series.ignore
            false = [d for d, _ in reported if not any(evaluate.hits(d, b) for b in boxes)]
            scans.append({"series": name, "threshold": threshold, "reported": len(reported),
                          "false_positives": len(false), "cpu_s": round(seconds, 1)})
            print(f"{name}: threshold {threshold:.4f}, {len(reported)} reported, {len(false)} false positives "
                  f"({seconds:.0f} CPU s)", flush=True)
            for les in series.lesions:
                if les.diameter_mm < MIN_LESION_MM:
                    continue
                on = [(d, m) for d, m in reported if evaluate.hits(d, les.lps_box)]
                row = {"series": name, "lesion": les.label, "reference_mm": round(les.diameter_mm, 1),
                       "reference_ml": None if les.volume_mm3 is None else round(les.volume_mm3 / 1000, 2),
                       "reported": bool(on)}
                if on:
                    d, m = max(on, key=lambda f: f[1].diameter_mm)
                    row.update(score=round(d.score, 3), measured_mm=round(m.diameter_mm, 1),
                               measured_ml=None if m.volume_mm3 is None else round(m.volume_mm3 / 1000, 2),
                               box_mm=round(float(np.max(d.lps_corners.max(axis=0) - d.lps_corners.min(axis=0))), 1))
                rows.append(row)
                print("   ", row, flush=True)
    real = rows
    found = sum(r["reported"] for r in real)
    fp = np.mean([s["false_positives"] for s in scans])
    lidc = [r for r in real if r["reported"] and r["reference_ml"] is not None]
    summary = {"detector": args.detector, "lesions_reported": f"{found}/{len(real)}", "fp_per_scan": round(float(fp), 2),
               "lidc_long_axis_mad_mm": _mean_abs_difference(lidc, "mm", 1),
               "lidc_volume_mad_ml": _mean_abs_difference(lidc, "ml", 2)}
    print(summary)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "scans": scans, "lesions": rows}, indent=1))


if __name__ == "__main__":
    main()
