"""The tumor pipeline's segmentation on the six BraTS-2015 cases (expert labels), per case.

None of them was used to train or calibrate the shipped weights, so all six are held out.
BraTS-2015 labels map to the regions the pipeline reports: 1 necrosis and 3 non-enhancing
tumor -> core (label 1), 2 edema, 4 enhancing. Runs ``pipeline.segment`` on the 1 mm images as
they are (skull-stripped, z-scored), T1c alone and T1c + FLAIR, with the model the pipeline
would choose for each.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 bench/tumor_brats2015.py
"""

from __future__ import annotations

import time

import SimpleITK as sitk
import torch

from pipelines.tumor.inference import DEFAULT_MODEL_DIR
from pipelines.tumor.model_set import ModelSet
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import region_dice
from training.tumor.data import BRATS2015_CASES, load_brats2015
from training.tumor.prepare import brats_labels


def main() -> None:
    torch.set_num_threads(1)
    models = ModelSet.load(DEFAULT_MODEL_DIR)
    print("| case | contrasts | model | TC | WT | ET | WT mL (reference) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for case in BRATS2015_CASES:
        images = load_brats2015(case)
        reference = brats_labels(sitk.GetArrayFromImage(images["labels"]))
        for roles in (("t1c",), ("t1c", "flair")):
            name, segmenter = models.for_contrasts(roles)
            start = time.perf_counter()
            labels = segment(segmenter, {role: images[role] for role in roles}, {}, "t1c")
            seconds = time.perf_counter() - start
            scores = region_dice(labels, reference)
            print(f"| {case} | {' + '.join(roles)} | {name} | {scores['TC']:.3f} | {scores['WT']:.3f} | "
                  f"{scores['ET']:.3f} | {(labels > 0).sum() / 1000:.1f} ({(reference > 0).sum() / 1000:.1f}) | "
                  f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
