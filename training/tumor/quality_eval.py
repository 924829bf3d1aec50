"""Measure the per-case quality scores (``quality``) against each case's tumor-core Dice.

    python -m training.tumor.quality_eval --cases calibration --clinical /work/clinical --out cv.json
    python -m training.tumor.quality_eval --summarize cv.json
    python -m training.tumor.quality_eval --cases heldout --out heldout.json   # once, T fixed

Each case goes through what the node does (``pipeline.predict`` and ``labels_from`` at the 1 mL
floor), served by the shipped folder for its contrast set, scored by a model that never
trained on it (the LOG's rule, "Issue #65 item 5"): the 30 training clinical T1c and the six
BraTS-2015 patients with T1c alone (``without-flair/``), BraTS-2015 pat0001 and pat0002 with
T1c + FLAIR (``brats2015/``, fold A's held-out pair). ``heldout``: the 8 held-out clinical volumes,
T1c alone; they choose nothing. ``--summarize``: each score's AUROC for TC Dice < 0.5 and the
Youden threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.inference import DEFAULT_MODEL_DIR, Segmenter
from pipelines.tumor.pipeline import labels_from, predict
from pipelines.tumor.preprocess import dice
from pipelines.tumor.quality import CORE, LOW_CONFIDENCE_BELOW, crispness
from training.data_folder import DATA_ROOT
from training.denoise.lcd import mann_whitney_auc
from training.tumor.clinical_t1c import heldout_scans, load_scan, training_scans
from training.tumor.data import BRATS2015_CASES, load_brats2015
from training.tumor.prepare import brats_labels, patient

#: A case the model gets wrong: tumor-core Dice under this (issue #65).
POOR_DICE = 0.5
SCORES = ("crispness", "mirror_agreement")
#: (case name, contrasts, images, reference tumor core)
Case = tuple[str, str, dict[str, sitk.Image], np.ndarray]


def mirror_agreement(segmenter: Segmenter, channels: np.ndarray, probabilities: np.ndarray,
                     inside: np.ndarray, threshold: float) -> float:
    """Dice of the tumor core of ``probabilities`` and that of the left-right mirrored pass, in the
    brain (``channels`` are (C, z, y, x) in LPS order: x is left-right); 1.0 when both are empty.
    A brain is nearly symmetric: a network that finds another core in the mirror image is guessing."""
    mirrored = segmenter.probabilities(np.ascontiguousarray(channels[..., ::-1]))[..., ::-1]
    return dice((probabilities[CORE] >= threshold) & inside, (mirrored[CORE] >= threshold) & inside)


def calibration_cases(clinical: Path, data: Path) -> Iterator[tuple[str, Case]]:
    for scan in training_scans(clinical):
        image, mask = load_scan(scan)
        yield "without-flair", (scan.name, "t1c", {"t1c": image}, sitk.GetArrayFromImage(mask) > 0)
    for case in BRATS2015_CASES:
        images = load_brats2015(case, data)
        core = np.isin(brats_labels(sitk.GetArrayFromImage(images["labels"])), (1, 4))
        yield "without-flair", (f"{patient(case)} t1c", "t1c", {"t1c": images["t1c"]}, core)
        if patient(case) in ("pat0001", "pat0002"):
            yield "brats2015", (f"{patient(case)} t1c+flair", "t1c+flair",
                                {"t1c": images["t1c"], "flair": images["flair"]}, core)


def heldout_cases(data: Path) -> Iterator[tuple[str, Case]]:
    for scan in heldout_scans(data):
        image, mask = load_scan(scan)
        yield "without-flair", (scan.name, "t1c", {"t1c": image}, sitk.GetArrayFromImage(mask) > 0)


def evaluate(segmenter: Segmenter, case: Case) -> dict[str, Any]:
    name, contrasts, images, core = case
    brain = extract_brain(images["t1c"])
    started = time.time()
    prediction = predict(segmenter, images, {}, "t1c", brain)
    inference_s = time.time() - started
    labels = labels_from(prediction, segmenter, images, "t1c", brain)
    threshold = segmenter.format.threshold[0]
    started = time.time()
    mirror = mirror_agreement(segmenter, prediction.channels, prediction.probabilities, prediction.inside, threshold)
    return {"contrasts": contrasts, "tc_dice": round(dice(np.isin(labels, (1, 4)), core), 4),
            "crispness": round(crispness(prediction.probabilities, prediction.inside, threshold), 4),
            "mirror_agreement": round(mirror, 4), "inference_s": round(inference_s, 1),
            "mirror_s": round(time.time() - started, 1)}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per score: AUROC for TC Dice < ``POOR_DICE`` (lower score = less confident) and the Youden threshold."""
    poor = np.array([r["tc_dice"] < POOR_DICE for r in results.values()])
    out: dict[str, Any] = {"cases": len(poor), "poor": int(poor.sum())}
    if poor.all() or not poor.any():  # one class only: no ROC; what each score flags at the served threshold
        flagged = int(sum(r["crispness"] < LOW_CONFIDENCE_BELOW for r in results.values()))
        return {**out, "auroc": "undefined: one class only", "under_the_crispness_threshold": flagged}
    for name in SCORES:
        score = np.array([r[name] for r in results.values()], dtype=float)
        auroc = mann_whitney_auc(-score[~poor], -score[poor])
        values = np.unique(score)
        cuts = (values[:-1] + values[1:]) / 2
        youden = [float((score[poor] < t).mean() + (score[~poor] >= t).mean() - 1) for t in cuts]
        best = int(np.argmax(youden)) if cuts.size else 0  # argmax: the first, i.e. the lowest, of a tie
        out[name] = {"auroc": round(auroc, 3), "threshold": round(float(cuts[best]), 4) if cuts.size else None,
                     "youden": round(youden[best], 3) if cuts.size else None}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", choices=("calibration", "heldout"))
    parser.add_argument("--summarize", type=Path, metavar="JSON")
    parser.add_argument("--clinical", type=Path, help="the fetched clinical T1c repositories (clinical_t1c.SOURCES)")
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.summarize:
        print(json.dumps(summarize(json.loads(args.summarize.read_text())), indent=1))
        return
    if args.cases is None or args.out is None:
        raise SystemExit("--cases and --out are required to score (or --summarize an earlier output)")
    if args.cases == "calibration" and args.clinical is None:
        raise SystemExit("--clinical is required for the calibration cases")
    torch.set_num_threads(args.threads)
    segmenters = {name: Segmenter.load(DEFAULT_MODEL_DIR / name) for name in ("without-flair", "brats2015")}
    cases = calibration_cases(args.clinical, args.data) if args.cases == "calibration" else heldout_cases(args.data)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}  # carries on an interrupted run
    for folder, case in cases:
        key = f"{case[0]} ({case[1]})"
        if key not in results:
            results[key] = {"folder": folder, **evaluate(segmenters[folder], case)}
            args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(key, results[key], flush=True)


if __name__ == "__main__":
    main()
