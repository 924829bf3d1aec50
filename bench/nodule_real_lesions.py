"""The nodule pipeline's reported findings on every real lesion >= 10 mm of the five real patients:
the candidate stage + scorer (each patient by the fold scorer that never saw it, at that fold's
threshold) against the RetinaNet at its shipped threshold (the model card's replacement rule).

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python3 bench/nodule_real_lesions.py \
        [--detector scorer|retinanet] [--scorer DIR] [--in-sample] [--reconstructions] [--out FILE.json]

``--scorer`` measures a scorer folder written by ``train_scorer`` (with its ``folds/``) before
it replaces the shipped one (whose folds are in ``training/nodule/scorer_folds``); ``--in-sample``
runs the folder itself on every patient (what a site gets, on patients its scorers saw).
``--reconstructions`` also reads each LIDC scan as synthetic re-reconstructions of its
acquisition (``training.nodule.reconstruction``: B70f-sharp, 5 mm, both) and summarises them
apart. A lesion is counted as reported twice when more than one reported finding on it measures
at least ``TWICE_SHARE`` of its reference long axis: a small finding beside a mass and inside its
annotated box is a finding of its own, not the mass again.

Both run through the pipeline's own path (``NoduleDetection.search``: kernel harmonization, grid,
lung check, fusion of nested boxes, threshold, in-box segmentation and measurement on the source
slices, touching segmentations merged, findings outside the lung left out). A lesion is reported when a reported
finding's box centre lies in its reference box grown by 2 mm; a reported finding on no lesion and
in no ignore region is a false positive. For each reported lesion the long axis and volume
measured by the pipeline are printed beside the reference (LIDC: the >= 2-reader consensus mask;
A0002: the longest annotated side). The RetinaNet was trained on C3N-00247 (its right half), so
that row is not held out for it; the LIDC scans and A0002 never reached its training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.base import PipelineSettings
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR
from pipelines.nodule.detector import DEFAULT_MODEL_DIR
from pipelines.nodule.pipeline import NoduleDetection
from training.data_folder import DATA_ROOT
from training.nodule import evaluate, patients
from training.nodule.reconstruction import Reconstruction, reconstruct

MIN_LESION_MM = 10.0
TWICE_SHARE = 1 / 3


def pipeline_for(detector: str, patient: str, scorer_dir: Path = DEFAULT_SCORER_DIR,
                 in_sample: bool = False) -> NoduleDetection:
    model = DEFAULT_MODEL_DIR if detector != "scorer" else scorer_dir if in_sample else patients.folds_of(scorer_dir) / patient
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(model)))


def findings(pipeline: NoduleDetection, series: patients.Series) -> list:
    return pipeline.search(series.volume).nodules


def _mean_abs_difference(lesions: list[dict], unit: str, digits: int) -> float | None:
    """Mean |measured - reference| over the LIDC lesions, in ``unit`` ("mm" or "ml"); None without any."""
    if not lesions:
        return None
    return round(float(np.mean([abs(r[f"measured_{unit}"] - r[f"reference_{unit}"]) for r in lesions])), digits)


#: The synthetic re-reconstructions each LIDC scan is also read as (``--reconstructions``): its
#: GE STANDARD slices made B70f-sharp by the measured NPS, 5 mm thick, and both.
LIDC_RECONSTRUCTIONS = (Reconstruction("sharper"), Reconstruction("as acquired", 5.0), Reconstruction("sharper", 5.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=("scorer", "retinanet"), default="scorer")
    parser.add_argument("--scorer", type=Path, default=DEFAULT_SCORER_DIR,
                        help="scorer folder with its folds/ (the shipped one's: training/nodule/scorer_folds)")
    parser.add_argument("--in-sample", action="store_true",
                        help="score every patient with the --scorer folder itself, whose scorers saw every patient")
    parser.add_argument("--reconstructions", action="store_true",
                        help="also read each LIDC scan as synthetic re-reconstructions (sharper, 5 mm)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, scans = [], []
    for patient in patients.PATIENTS:
        pipeline = pipeline_for(args.detector, patient, args.scorer, args.in_sample)
        for name in patients.PATIENTS[patient]:
            series = patients.load(DATA_ROOT, patient, name)
            variants = [("as acquired", series)]
            if args.reconstructions and patient.startswith("lidc-idri"):
                variants += [(_label(r), dataclasses.replace(series, volume=reconstruct(
                    series.volume, r, np.random.default_rng(RECONSTRUCTION_SEED)))) for r in LIDC_RECONSTRUCTIONS]
            for reconstruction, variant in variants:
                scan, lesion_rows = _read(pipeline, variant, reconstruction)
                scans.append(scan)
                rows += lesion_rows
    summary = {"detector": args.detector, "in_sample": args.in_sample, **_summary(scans, rows, "as acquired")}
    if args.reconstructions:
        summary["lidc_re_reconstructed"] = _summary(scans, rows, "re-reconstructed")
    print(summary)
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "scans": scans, "lesions": rows}, indent=1))


#: Seed of the noise a sharper re-reconstruction adds.
RECONSTRUCTION_SEED = 0


def _label(reconstruction: Reconstruction) -> str:
    thickness = "" if reconstruction.thickness_mm is None else f", {reconstruction.thickness_mm:g} mm"
    return f"{reconstruction.kernel}{thickness}"


def _read(pipeline: NoduleDetection, series: patients.Series, reconstruction: str) -> tuple[dict, list[dict]]:
    """One series through the pipeline: its scan row and a row per real lesion >= 10 mm."""
    threshold = pipeline.detector.settings.report_threshold
    started = time.process_time()
    reported = findings(pipeline, series)
    seconds = time.process_time() - started
    boxes = [les.lps_box for les in series.lesions] + series.ignore
    false = [d for d, _ in reported if not any(evaluate.hits(d, b) for b in boxes)]
    scan = {"series": series.name, "reconstruction": reconstruction, "threshold": threshold,
            "reported": len(reported), "false_positives": len(false), "cpu_s": round(seconds, 1)}
    print(f"{series.name} ({reconstruction}): threshold {threshold:.4f}, {len(reported)} reported, "
          f"{len(false)} false positives ({seconds:.0f} CPU s)", flush=True)
    rows = []
    for les in series.lesions:
        if les.diameter_mm < MIN_LESION_MM:
            continue
        on = [(d, m) for d, m in reported if evaluate.hits(d, les.lps_box)]
        row = {"series": series.name, "reconstruction": reconstruction, "lesion": les.label,
               "reference_mm": round(les.diameter_mm, 1),
               "reference_ml": None if les.volume_mm3 is None else round(les.volume_mm3 / 1000, 2),
               "reported": bool(on),
               "findings_on_it": sum(m.diameter_mm >= TWICE_SHARE * les.diameter_mm for _, m in on)}
        if on:
            d, m = max(on, key=lambda f: f[1].diameter_mm)
            row.update(score=round(d.score, 3), measured_mm=round(m.diameter_mm, 1),
                       measured_ml=None if m.volume_mm3 is None else round(m.volume_mm3 / 1000, 2),
                       box_mm=round(float(np.max(d.lps_corners.max(axis=0) - d.lps_corners.min(axis=0))), 1))
        rows.append(row)
        print("   ", row, flush=True)
    return scan, rows


def _summary(scans: list[dict], rows: list[dict], which: str) -> dict:
    """Lesions reported, lesions reported more than once, false positives per scan, and the LIDC
    measurement errors, over the series as acquired or over the re-reconstructions."""
    acquired = which == "as acquired"
    scans = [s for s in scans if (s["reconstruction"] == "as acquired") == acquired]
    rows = [r for r in rows if (r["reconstruction"] == "as acquired") == acquired]
    lidc = [r for r in rows if r["reported"] and r["reference_ml"] is not None]
    return {"lesions_reported": f"{sum(r['reported'] for r in rows)}/{len(rows)}",
            "lesions_reported_twice": sum(r["findings_on_it"] > 1 for r in rows),
            "fp_per_scan": round(float(np.mean([s["false_positives"] for s in scans])), 2),
            "lidc_long_axis_mad_mm": _mean_abs_difference(lidc, "mm", 1),
            "lidc_volume_mad_ml": _mean_abs_difference(lidc, "ml", 2)}


if __name__ == "__main__":
    main()
