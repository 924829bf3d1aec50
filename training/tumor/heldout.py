"""Held-out evaluation of one tumor model folder on real brains, through ``pipeline.segment``.

    python -m training.tumor.heldout --model DIR --patients pat0001 pat0002 \\
        --healthy pat0001 --clinical --out DIR/heldout.json

Exactly what the node does to a study (brain extraction, resampling, the model, thresholds,
post-processing, the 1 mL rule), on the 1 mm BraTS-2015 images or the raw clinical series:

- ``--patients``: BraTS-2015 patients, Dice per region (TC, WT, ET; NCR, ED) against the expert
  labels (1 and 3 -> core, 2 edema, 4 enhancing), T1c alone and T1c + FLAIR, with volumes;
- ``--healthy``: the mirrored healthy brain of a patient (``healthy``), where every labelled
  voxel is a false positive: its volume in mL and number of components, both contrast sets;
- ``--clinical``: the skull-on clinical TCGA-FG-6692 T1c alone (5.5 mm): the volume per region,
  and Dice against the BraTS-toolkit fusion carried onto its grid (``clinical_reference``: what
  that reference is, and how it is mapped).

Only patients the model was not trained on are held out: that is the caller's choice, recorded
in the output with the model's ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from pipelines.tumor.inference import Segmenter
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import dice, region_dice
from pipelines.tumor.registration import edge_alignment, overlap
from training.data_folder import DATA_ROOT
from training.tumor.data import (
    BRATS2015_CASES,
    CLINICAL_BRAIN_MASK,
    TCGA,
    load_brats2015,
    load_clinical,
    load_images,
    load_labels,
)
from training.tumor.healthy import mirrored_healthy
from training.tumor.prepare import brats_labels, patient

SUBSETS = (("t1c",), ("t1c", "flair"))


def case_of(name: str) -> str:
    """The BraTS-2015 case folder of a patient (``pat0001`` -> ``test/brats_2013_pat0001_1``)."""
    [case] = [case for case in BRATS2015_CASES if patient(case) == name]
    return case


def volumes_ml(labels: np.ndarray, image: sitk.Image) -> dict[str, float]:
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {"NCR": round(float((labels == 1).sum()) * voxel_ml, 2), "ED": round(float((labels == 2).sum()) * voxel_ml, 2),
            "ET": round(float((labels == 4).sum()) * voxel_ml, 2), "WT": round(float((labels > 0).sum()) * voxel_ml, 2)}


def evaluate_patient(segmenter: Segmenter, name: str, root: Path) -> dict[str, dict[str, Any]]:
    images = load_brats2015(case_of(name), root)
    reference = brats_labels(sitk.GetArrayFromImage(images["labels"]))
    results = {}
    for roles in SUBSETS:
        started = time.time()
        labels = segment(segmenter, {role: images[role] for role in roles}, {}, "t1c")
        results["+".join(roles)] = {**region_dice(labels, reference), "volumes_ml": volumes_ml(labels, images["t1c"]),
                                    "reference_ml": volumes_ml(reference, images["t1c"]),
                                    "seconds": round(time.time() - started, 1)}
        print(name, roles, results["+".join(roles)], flush=True)
    return results


def evaluate_healthy(segmenter: Segmenter, name: str, root: Path) -> dict[str, dict[str, Any]]:
    images = load_brats2015(case_of(name), root)
    healthy = mirrored_healthy({role: images[role] for role in ("t1c", "flair")}, images["labels"])
    if healthy is None:
        raise ValueError(f"{name} has no tumor-free hemisphere to build a healthy brain from")
    results = {}
    for roles in SUBSETS:
        labels = segment(segmenter, {role: healthy[role] for role in roles}, {}, "t1c")
        _, components = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        results["+".join(roles)] = {"false_positive_ml": volumes_ml(labels, healthy["t1c"])["WT"],
                                    "components": int(components)}
        print("healthy", name, roles, results["+".join(roles)], flush=True)
    return results


def clinical_reference(root: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """TC / WT / ET of the BraTS-toolkit fusion, carried onto the raw clinical T1c grid, and the fit.

    What it is: ``fusion/mav.nii.gz`` is the majority vote of five BraTS algorithms run by the
    BraTS toolkit on TCGA-FG-6692's four contrasts (model consensus, not an expert), on the grid
    of ``raw_bet`` (skull-stripped, registered to the SRI24 atlas, 1 mm). How it is carried: a
    rigid registration (Mattes mutual information, centred start) of the ``raw_bet`` T1c onto
    the clinical T1c restricted to HD-BET's brain mask (the brain against the brain), then each
    region's indicator resampled linearly onto the 5.5 mm clinical slices and cut at 0.5. The
    fit is returned (head overlap and edge alignment of ``registration``) so that a bad mapping
    shows; the regions keep their volume within 3 % (30.2 mL whole tumor either way).
    """
    clinical = load_clinical("t1c", root)
    mask = sitk.ReadImage(str(Path(root) / CLINICAL_BRAIN_MASK))
    mask.CopyInformation(clinical)
    fixed = sitk.Cast(sitk.Mask(clinical, sitk.Cast(mask > 0, sitk.sitkUInt8)), sitk.sitkFloat32)
    moving = sitk.Cast(load_images(TCGA, root)["t1c"], sitk.sitkFloat32)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, 1234)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=300,
                                                     relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS), inPlace=False)
    transform = method.Execute(fixed, moving)
    fusion = load_labels(TCGA, root)
    labels = sitk.GetArrayFromImage(fusion)
    regions = {}
    for name, members in (("TC", (1, 4)), ("WT", (1, 2, 4)), ("ET", (4,))):
        indicator = sitk.GetImageFromArray(np.isin(labels, members).astype(np.float32))
        indicator.CopyInformation(fusion)
        regions[name] = sitk.GetArrayFromImage(sitk.Resample(indicator, clinical, transform, sitk.sitkLinear, 0.0)) >= 0.5
    fit = {"head_overlap": round(overlap(fixed, moving, transform), 3),
           "edge_alignment": round(edge_alignment(fixed, moving, transform), 3)}
    return regions, fit


def evaluate_clinical(segmenter: Segmenter, root: Path) -> dict[str, Any]:
    image = load_clinical("t1c", root)
    started = time.time()
    labels = segment(segmenter, {"t1c": image}, {}, "t1c")
    result = {"volumes_ml": volumes_ml(labels, image), "seconds": round(time.time() - started, 1)}
    reference, fit = clinical_reference(root)
    predicted = {"TC": np.isin(labels, (1, 4)), "WT": labels > 0, "ET": labels == 4}
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    result["fusion_dice"] = {name: round(dice(predicted[name], reference[name]), 4) for name in reference}
    result["fusion_ml"] = {name: round(float(mask.sum()) * voxel_ml, 2) for name, mask in reference.items()}
    result["fusion_mapping"] = fit
    print("clinical t1c", result, flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--patients", nargs="*", default=[])
    parser.add_argument("--healthy", nargs="*", default=[])
    parser.add_argument("--clinical", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    segmenter = Segmenter.load(args.model)
    training = args.model / "training.json"
    results: dict[str, Any] = {"model": str(args.model),
                               "training": json.loads(training.read_text()) if training.is_file() else None,
                               "patients": {name: evaluate_patient(segmenter, name, args.data) for name in args.patients},
                               "healthy": {name: evaluate_healthy(segmenter, name, args.data) for name in args.healthy}}
    if results["training"]:
        results["training"].pop("loss_per_100", None)
    if args.clinical:
        results["clinical_t1c"] = evaluate_clinical(segmenter, args.data)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
