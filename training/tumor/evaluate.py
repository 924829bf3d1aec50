"""Measure a tumor model on the held-out subject (TCGA-FG-6692, never used in training).

    python -m training.tumor.evaluate --model pipelines/tumor/weights --seed 100

1. Synthetic insertions: ``--insertions`` tumors, one at a time, inserted into the
   preprocessed TCGA brain away from its real tumor (with the same ``synthesis`` as training
   but a different seed and brain), segmented with each contrast subset of ``SUBSETS`` (all
   four, T1c alone, FLAIR alone, and four two-contrast pairs). Dice per region (TC, WT, ET)
   against the inserted labels; the real tumor and a 15 mm margin around it are left out of
   the score, since it has no label in this set-up.
2. Real tumor: the unmodified study against ``fusion/mav`` (majority vote of five BraTS
   algorithms), Dice and volumes in mL. A pseudo-reference: agreement with other models, not
   with a radiologist.

Runs on 1 mm images through ``pipeline.segment`` (the contrasts are already co-registered, so
registration is the identity); prints the table and writes ``evaluation.json`` into the model
folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.inference import DEFAULT_MODEL_DIR, Segmenter
from pipelines.tumor.model_set import ModelSet
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import brain_mask, region_dice
from training.data_folder import DATA_ROOT
from training.tumor.data import TCGA, load_images, load_labels
from training.tumor.synthesis import insert_tumor, pick_center

#: Contrast subsets evaluated: the full study, the two single contrasts the model must handle,
#: and the two-contrast studies a site sends when a protocol is cut short (T1c with one other
#: contrast, or FLAIR with T2 and no gadolinium).
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": CHANNELS, "t1c": ("t1c",), "flair": ("flair",),
    "t1c_t1": ("t1c", "t1"), "t1c_t2": ("t1c", "t2"), "t1c_flair": ("t1c", "flair"), "flair_t2": ("flair", "t2"),
}
#: Written sub-regions and their BraTS labels.
SUB_REGIONS = {"NCR": 1, "ED": 2, "ET": 4}
#: Margin (mm) around the real tumor left out of the synthetic-insertion score.
REAL_TUMOR_MARGIN_MM = 15.0


def _with_arrays(template: dict[str, sitk.Image], arrays: dict[str, np.ndarray]) -> dict[str, sitk.Image]:
    images = {}
    for role, array in arrays.items():
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(template[role])
        images[role] = image
    return images


def labels_for(models: ModelSet, images: dict[str, sitk.Image], roles: tuple[str, ...]) -> np.ndarray:
    """Segment co-registered images using only ``roles`` (reference: T1c if kept, else FLAIR), with
    the model the pipeline would choose for them."""
    kept = {role: images[role] for role in roles}
    _, segmenter = models.for_contrasts(roles)
    if not isinstance(segmenter, Segmenter):  # segment() takes radnode's own models only
        raise TypeError(f"this evaluation runs radnode's own models, not {type(segmenter).__name__}")
    reference = "t1c" if "t1c" in kept else "flair"
    return segment(segmenter, kept, {}, reference)


def synthetic_scores(models: ModelSet, images: dict[str, sitk.Image], real: np.ndarray,
                     insertions: int, seed: int, subsets: dict[str, tuple[str, ...]] = SUBSETS
                     ) -> dict[str, dict[str, float]]:
    """Mean Dice per region and subset over ``insertions`` synthetic tumors in ``images``."""
    rng = np.random.default_rng(seed)
    arrays = {role: sitk.GetArrayFromImage(image) for role, image in images.items()}
    z_mm, y_mm, x_mm = (float(s) for s in reversed(images["t1c"].GetSpacing()))
    spacing = (z_mm, y_mm, x_mm)
    brain = brain_mask(arrays["t1c"])
    near_real = ndimage.distance_transform_edt(real == 0, sampling=spacing) <= REAL_TUMOR_MARGIN_MM
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in subsets}
    for _ in range(insertions):
        changed = {role: array.copy() for role, array in arrays.items()}
        truth = np.zeros(brain.shape, dtype=np.uint8)
        avoid = ndimage.distance_transform_edt(real == 0, sampling=spacing) <= REAL_TUMOR_MARGIN_MM + 30
        center = pick_center(brain, rng, avoid=avoid, margin_vox=8)
        if center is None:
            raise ValueError("no brain voxel is left for a synthetic tumor away from the real one")
        insert_tumor(changed, truth, brain, spacing, center, rng)
        inserted = _with_arrays(images, changed)
        for name, roles in subsets.items():
            scores[name].append(region_dice(labels_for(models, inserted, roles), truth, ignore=near_real))
    return {name: {region: round(float(np.mean([s[region] for s in runs])), 3) for region in runs[0]}
            for name, runs in scores.items()}


def volumes_ml(labels: np.ndarray, spacing_mm: tuple[float, ...]) -> dict[str, float]:
    """Volume in mL of each written sub-region (NCR, ED, ET) and of the whole tumor."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    volumes = {name: int((labels == label).sum()) * voxel_ml for name, label in SUB_REGIONS.items()}
    volumes["WT"] = sum(volumes.values())
    return {name: round(value, 1) for name, value in volumes.items()}


def fusion_scores(models: ModelSet, images: dict[str, sitk.Image], real: np.ndarray,
                  subsets: dict[str, tuple[str, ...]] = SUBSETS) -> dict[str, dict[str, dict[str, float]]]:
    """Dice per region, and volumes, per subset of the unmodified study against the fusion labels.

    Dice alone hides over-calling far from the tumor, so the volumes are reported beside it.
    """
    spacing = images["t1c"].GetSpacing()
    predictions = {name: labels_for(models, images, roles) for name, roles in subsets.items()}
    return {
        "dice": {name: region_dice(labels, real) for name, labels in predictions.items()},
        "volumes_ml": {"fusion": volumes_ml(real, spacing),
                       **{name: volumes_ml(labels, spacing) for name, labels in predictions.items()}},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--insertions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    args = parser.parse_args(argv)

    started = time.time()
    models = ModelSet.load(args.model, "cpu")
    images = load_images(TCGA, args.data)
    real = sitk.GetArrayFromImage(load_labels(TCGA, args.data))
    result = {
        "held_out_subject": TCGA.name,
        "regions": "TC = labels 1+4, WT = 1+2+4, ET = 4 (BraTS regions); NCR = 1, ED = 2 (sub-regions)",
        "synthetic_insertions": {
            "count": args.insertions, "seed": args.seed,
            "dice": synthetic_scores(models, images, real, args.insertions, args.seed),
            "note": f"real tumor + {REAL_TUMOR_MARGIN_MM:g} mm left out of the score",
        },
        "fusion_pseudo_reference": {
            "labels": TCGA.labels,
            **fusion_scores(models, images, real),
            "note": "majority vote of five BraTS algorithms; not ground truth",
        },
        "seconds": round(time.time() - started),
    }
    out = args.out or args.model / "evaluation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
