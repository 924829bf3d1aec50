"""Brain extraction measured on every brain MR in ../shared/data, one row per series.

- skull-on clinical TCGA-FG-6692: Dice against HD-BET's mask of its T1c. The T1 shares the T1c's
  grid; T2 and FLAIR have their own, so the mask is carried onto them by a rigid registration
  of each series to the T1c (``registration.register``), an approximate reference.
- skull-stripped BraTS-2015 (z-scored background) and BraTS-GLI-00001 / TCGA raw_bet (zero
  background): share of the provided brain mask (or of the nonzero voxels) that is kept.

    PYTHONPATH=$PWD python3 bench/brain_extraction.py
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.preprocess import dice
from pipelines.tumor.registration import register
from training.tumor.data import (
    BRATS,
    BRATS2015_CASES,
    CLINICAL_BRAIN_MASK,
    DATA_ROOT,
    TCGA,
    load_brats2015,
    load_clinical,
    load_images,
)


def main() -> None:
    reference = sitk.ReadImage(str(DATA_ROOT / CLINICAL_BRAIN_MASK))
    t1c = load_clinical("t1c")
    print("| series | kind | Dice vs HD-BET | kept | brain mL | reference mL | seconds |")
    print("|---|---|---|---|---|---|---|")
    for role in ("t1c", "t1", "t2", "flair"):
        image = load_clinical(role)
        transform = sitk.Transform() if role in ("t1c", "t1") else register(image, t1c)
        truth = sitk.GetArrayFromImage(sitk.Resample(reference, image, transform, sitk.sitkNearestNeighbor, 0,
                                                     reference.GetPixelID())).astype(bool)
        start = time.perf_counter()
        mask = sitk.GetArrayFromImage(extract_brain(image)).astype(bool)
        seconds = time.perf_counter() - start
        ml = float(np.prod(image.GetSpacing())) / 1000
        how = "same grid" if role in ("t1c", "t1") else "registered"
        print(f"| TCGA-FG-6692 {role} (skull on, {how}) | skull-on | {dice(mask, truth):.4f} | "
              f"{(mask & truth).sum() / truth.sum():.4f} | {mask.sum() * ml:.0f} | {truth.sum() * ml:.0f} | {seconds:.1f} |")
    for case in BRATS2015_CASES:
        images = load_brats2015(case)
        truth = sitk.GetArrayFromImage(images["brainmask"]) > 0
        for role in ("t1c", "flair"):
            start = time.perf_counter()
            mask = sitk.GetArrayFromImage(extract_brain(images[role])).astype(bool)
            seconds = time.perf_counter() - start
            print(f"| BraTS-2015 {case.split('/')[1]} {role} | stripped | {dice(mask, truth):.4f} | "
                  f"{(mask & truth).sum() / truth.sum():.4f} | {mask.sum() / 1000:.0f} | {truth.sum() / 1000:.0f} | "
                  f"{seconds:.1f} |")
    for subject in (BRATS, TCGA):
        for role, image in load_images(subject).items():
            truth = sitk.GetArrayFromImage(image) > 0
            mask = sitk.GetArrayFromImage(extract_brain(image)).astype(bool)
            print(f"| {subject.name} {role} | stripped | {dice(mask, truth):.4f} | "
                  f"{(mask & truth).sum() / truth.sum():.4f} | {mask.sum() / 1000:.0f} | {truth.sum() / 1000:.0f} | - |")


if __name__ == "__main__":
    main()
