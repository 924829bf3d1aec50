"""Prepare the real training brains as compact arrays on the model grid, for training elsewhere.

    python -m training.tumor.prepare --out /tmp/tumor_npz [--clinical /work/clinical]

A GPU machine may have torch, numpy and MONAI but no SimpleITK and no shared data folder, so
everything that needs them happens here, once, on the CPU: each brain is put onto the 2 mm
model grid and normalized by the pipeline's own functions (``model_grid``, ``resample``,
``extract_brain``, ``zscore_channels``), exactly as ``pipeline.segment`` prepares a study, so
that training sees what inference feeds. ``fit`` then reads only the files written here.

One ``.npz`` per brain (float16 channels, uint8 masks, about 1-3 MB each):

- ``t1c``, ``flair``: each z-scored over the brain, zero outside (a missing contrast is zeros);
- ``labels``: BraTS labels 1 (necrosis / non-enhancing core), 2 edema, 4 enhancing (nearest);
- ``ignore``: voxels left out of the loss (the unlabelled glioma of BraTS-GLI-00001);
- ``brain``: the extracted brain.

Brains: the six BraTS-2015 patients (``brats2015_patNNNN``), the mirrored healthy brain of each
that qualifies (``healthy_patNNNN``, ``healthy``), BraTS-GLI-00001 (``gli00001``, no labels: its
own lesion ignored) and, for timing inference elsewhere, the model input of the clinical
TCGA-FG-6692 T1c alone (``clinical_t1c_input``, the four-channel array ``segment`` builds).

With ``--clinical ROOT`` (the fetched repositories of ``clinical_t1c``), also the 30 skull-on
clinical T1c training volumes on their recovered geometry (``clinical_<name>``): T1c only, their
tumor-core mask as label 1, ``supervised`` saying which regions that mask speaks for (core
everywhere; whole tumor inside the core; enhancing tumor outside it, where it is 0), and
``slice_mm`` (their 6 mm slices are not made thicker). Core voxels outside the extracted brain
weigh nothing: the pipeline never reports a voxel there. Where a volume's core keeps
``CLINICAL_MARGIN_MM`` from one half of the head, that half and its mirror image are a tumor-free
skull-on clinical T1c (``healthy_clinical_<name>``), of the same patient as the volume.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.preprocess import model_grid, resample, zscore_channels
from training.data_folder import DATA_ROOT
from training.tumor.clinical_t1c import SLICE_SPACING_MM, load_scan, training_scans
from training.tumor.data import (
    BRATS,
    BRATS2015_CASES,
    load_brats2015,
    load_clinical,
    load_images,
)
from training.tumor.healthy import mirrored_healthy
from training.tumor.synthesis import rough_lesion_mask

SPACING = 2.0
ROLES = ("t1c", "flair")
#: Nearest tumor core allowed from a clinical volume's tumor-free half (mm): wider than the BraTS
#: cases' 5 mm because these masks hold the core only, and the edema around it reaches further.
CLINICAL_MARGIN_MM = 20.0


def brats_labels(labels: np.ndarray) -> np.ndarray:
    """BraTS-2015 labels (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing) as the pipeline's 1/2/4."""
    return np.select([labels == 4, np.isin(labels, (1, 3)), labels == 2], [4, 1, 2], 0).astype(np.uint8)


def patient(case: str) -> str:
    """``train/brats_2013_pat0005_1`` -> ``pat0005``: the patient a case belongs to."""
    return case.split("_")[-2]


def on_model_grid(images: dict[str, sitk.Image], labels: sitk.Image | None = None) -> dict[str, np.ndarray]:
    """T1c and FLAIR z-scored over the extracted brain on the model grid, as ``segment`` does it."""
    grid = model_grid(images["t1c"], SPACING)
    brain = sitk.GetArrayFromImage(resample(extract_brain(images["t1c"]), grid)) >= 0.5
    channels = {role: sitk.GetArrayFromImage(resample(images[role], grid)) for role in ROLES if role in images}
    x = zscore_channels(channels, brain)
    arrays = {role: x[CHANNELS.index(role)].astype(np.float16) for role in ROLES}
    arrays["brain"] = brain.astype(np.uint8)
    arrays["labels"] = (np.zeros(brain.shape, np.uint8) if labels is None else
                        brats_labels(sitk.GetArrayFromImage(resample(labels, grid, nearest=True)).astype(np.int64)))
    arrays["ignore"] = np.zeros(brain.shape, np.uint8)
    return arrays


def clinical_on_model_grid(t1c: sitk.Image, core: sitk.Image) -> dict[str, Any]:
    """A clinical T1c and its tumor-core mask as ``on_model_grid`` writes a brain, with what the mask
    says and does not say (module docstring)."""
    arrays: dict[str, Any] = dict(on_model_grid({"t1c": t1c}))  # of arrays; Any, as in ``save``
    grid = model_grid(t1c, SPACING)
    inside = sitk.GetArrayFromImage(resample(sitk.Cast(core, sitk.sitkFloat32), grid)) >= 0.5
    brain = arrays["brain"] > 0
    arrays["labels"] = np.where(inside & brain, 1, 0).astype(np.uint8)
    arrays["ignore"] = (inside & ~brain).astype(np.uint8)
    arrays["supervised"] = np.stack([np.ones_like(inside), inside, ~inside]).astype(np.uint8)
    arrays["slice_mm"] = np.float32(SLICE_SPACING_MM)
    return arrays


def clinical_tumor_free(t1c: sitk.Image, core: sitk.Image) -> dict[str, Any] | None:
    """The clinical T1c's tumor-free hemisphere and its mirror image as a tumor-free brain
    (``healthy.mirrored_healthy``), or None when the core comes within ``CLINICAL_MARGIN_MM`` of
    both halves: a real skull-on thick-slice T1c with no tumor, which no other data here gives."""
    healthy = mirrored_healthy({"t1c": t1c}, core, CLINICAL_MARGIN_MM)
    if healthy is None:
        return None
    arrays: dict[str, Any] = dict(on_model_grid(healthy))
    arrays["slice_mm"] = np.float32(SLICE_SPACING_MM)
    return arrays


def prepare_clinical(root: Path, out: Path) -> list[str]:
    """Write each clinical training volume's npz (``clinical_<name>``) into ``out``, and its
    tumor-free mirrored hemisphere where it has one (``healthy_clinical_<name>``); returns the names."""
    names = []
    for scan in training_scans(root):
        t1c, core = load_scan(scan)
        arrays = clinical_on_model_grid(t1c, core)
        name = f"clinical_{scan.name}"
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(f"{name}: grid {arrays['brain'].shape}, brain {int(arrays['brain'].sum())} voxels, "
              f"core {int(arrays['labels'].sum())} voxels ({int(arrays['ignore'].sum())} outside the brain)", flush=True)
        names.append(name)
        healthy = clinical_tumor_free(t1c, core)
        if healthy is not None:
            np.savez_compressed(out / f"healthy_{name}.npz", **healthy)
            print(f"healthy_{name}: brain {int(healthy['brain'].sum())} voxels", flush=True)
            names.append(f"healthy_{name}")
    return names


def prepare(root: Path, out: Path) -> list[str]:
    """Write every brain's npz into ``out``; returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, arrays: dict[str, Any]) -> None:  # of arrays; Any, as mypy checks **arrays against allow_pickle: bool too
        np.savez_compressed(out / f"{name}.npz", **arrays)
        written.append(name)
        print(f"{name}: grid {arrays['brain'].shape}, brain {int(arrays['brain'].sum())} voxels, "
              f"tumor {int((arrays.get('labels', np.zeros(1)) > 0).sum())} voxels", flush=True)

    for case in BRATS2015_CASES:
        images = load_brats2015(case, root)
        save(f"brats2015_{patient(case)}", on_model_grid(images, images["labels"]))
        healthy = mirrored_healthy({role: images[role] for role in ROLES}, images["labels"])
        if healthy is not None:
            save(f"healthy_{patient(case)}", on_model_grid(healthy))
    gli = on_model_grid({role: load_images(BRATS, root)[role] for role in ROLES})
    brain = gli["brain"] > 0
    gli["ignore"] = rough_lesion_mask(gli["flair"].astype(np.float32), brain, (SPACING,) * 3).astype(np.uint8)
    save("gli00001", gli)
    clinical = load_clinical("t1c", root)
    grid = model_grid(clinical, SPACING)
    brain = sitk.GetArrayFromImage(resample(extract_brain(clinical), grid)) >= 0.5
    np.savez_compressed(out / "clinical_t1c_input.npz",
                        x=zscore_channels({"t1c": sitk.GetArrayFromImage(resample(clinical, grid))}, brain).astype(np.float16))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--clinical", type=Path, help="the fetched clinical T1c repositories (clinical_t1c.SOURCES)")
    parser.add_argument("--clinical-only", action="store_true", help="write only the clinical volumes")
    args = parser.parse_args(argv)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [] if args.clinical_only else prepare(args.data, args.out)
    if args.clinical:
        names += prepare_clinical(args.clinical, args.out)
    print(f"{len(names)} brains in {args.out} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
