"""The shipped RetinaNet detector on every real lesion >= 10 mm of the five real patients, at its
reporting threshold: the baseline the candidate stage + scorer must beat (model card).

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python3 bench/nodule_real_lesions.py

The RetinaNet was trained on C3N-00247 (its right half), so that row is not held out; the LIDC
scans and A0002 never reached its training.
"""

from __future__ import annotations

import torch

from pipelines.nodule import evaluate, patients
from pipelines.nodule.detector import DEFAULT_MODEL_DIR, NoduleDetector
from pipelines.nodule.train import DEFAULT_DATA

MIN_LESION_MM = 10.0


def main() -> None:
    torch.set_num_threads(2)
    detector = NoduleDetector.load(DEFAULT_MODEL_DIR, "cpu")
    threshold = detector.settings.report_threshold
    found_total, lesions_total = 0, 0
    for series in patients.all_series(DEFAULT_DATA):
        detections = evaluate.candidates(detector, series.volume)
        reported = [d for d in detections if d.score >= threshold]
        false = [d for d in reported
                 if not any(evaluate.hits(d, les.lps_box) for les in series.lesions)
                 and not any(evaluate.hits(d, box) for box in series.ignore)]
        print(f"{series.name}: {len(reported)} reported at {threshold}, {len(false)} false positives", flush=True)
        for les in series.lesions:
            if les.diameter_mm < MIN_LESION_MM:
                continue
            best = max((d.score for d in detections if evaluate.hits(d, les.lps_box)), default=0.0)
            found = best >= threshold
            found_total, lesions_total = found_total + found, lesions_total + 1
            print(f"  {les.label} {les.diameter_mm:.1f} mm: best score {best:.3f}, reported={found}", flush=True)
    print(f"found {found_total}/{lesions_total} at {threshold}")


if __name__ == "__main__":
    main()
