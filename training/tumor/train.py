"""Train the reference tumor model on a real brain with synthetic tumors inserted on the fly.

    python -m training.tumor.train --seed 0 --out /tmp/stage1
    python -m training.tumor.train --seed 1 --init /tmp/stage1 --out pipelines/tumor/weights

is the schedule of the shipped weights (two cycles of ``ITERATIONS``, about 23 minutes each on
one CPU core), which were trained by this module as of commit ``b2fb63c``; training/tumor/LOG.md has the
details ("Training (`train.py`)") and the later, rejected cycles. Steps:

1. Load BraTS-GLI-00001 (four contrasts) and resample it onto the model grid (axis-aligned,
   ``SPACING`` mm), exactly as the pipeline resamples a study.
2. Find its own, unlabelled glioma roughly (largest FLAIR-bright blob, widened) and leave that
   region out of the loss: calling it background would teach the network to miss real tumors.
3. Each sample: insert zero to two synthetic tumors (``synthesis``) elsewhere in the brain,
   z-score each contrast over the brain, jitter intensities, drop contrasts (any subset that
   keeps T1c or FLAIR; missing channels are zeros, as at inference), flip left-right, and cut a
   ``PATCH`` cube, most often around a tumor, else often on bright normal tissue (FLAIR, and
   with ``--t1c-bright-sd`` T1c), and with ``--single-share`` more often one contrast alone.
   With ``--normal-share``, T1c-bright normal structures (vessels, choroid plexus, dura;
   ``normal_structures``) are painted outside the tumors as negatives before all that.
4. Fit SegResNet (``model.Architecture``) with soft Dice + binary cross-entropy on the three
   nested regions TC / WT / ET, cross-entropy weighted up inside necrosis, and soft Dice on
   necrosis (TC and not ET, computed from the outputs). A cycle started from trained weights
   can re-initialize the output head first (``revive_head``).
5. Choose the output thresholds on fresh samples of the training brain (``calibrate``).

TCGA-FG-6692 is never used here; ``evaluate`` measures the result on it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk
import torch

from pipelines.model_folder import load_state_dict, read_params
from pipelines.tumor.contrasts import ANCHORS, CHANNELS
from pipelines.tumor.model import Architecture
from pipelines.tumor.preprocess import (
    brain_mask,
    model_grid,
    regions_from_labels,
    resample,
    zscore_channels,
)
from training.data_folder import DATA_ROOT
from training.record import training_command
from training.tumor.data import BRATS, load_images
from training.tumor.loss import NECROSIS_WEIGHT, loss_fn
from training.tumor.normal_structures import (
    NormalAnatomy,
    find_anatomy,
    paint_normal_structures,
)
from training.tumor.synthesis import (
    insert_tumor,
    pick_center,
    rough_lesion_mask,
)

SPACING = 2.0
PATCH = 64
BATCH = 2
ITERATIONS = 1000
LEARNING_RATE = 2e-3
#: Share of samples that see all four contrasts; the rest get a random usable subset.
ALL_CONTRASTS_SHARE = 0.4
#: Default of ``--single-share``: the share of samples that see T1c alone, and again FLAIR alone.
#: The random subsets give each about 5 %, too few for the hardest inputs.
SINGLE_CONTRAST_SHARE = 0.0
#: Share of patches centred on a tumor (the rest anywhere in the brain).
TUMOR_PATCH_SHARE = 0.8
#: FLAIR-bright normal tissue: above the brain mean by this many standard deviations.
BRIGHT_FLAIR_SD = 1.5
#: Default of ``--t1c-bright-sd``: T1c-bright normal tissue (vessels, choroid plexus, dura) above
#: the brain mean by this many standard deviations joins the bright pool; 0 leaves it out.
BRIGHT_T1C_SD = 0.0
#: Default of ``--normal-share``: share of samples with synthetic T1c-bright normal structures
#: painted in (0: none, as in the cycles before the sixth), and of ``--normal-count``: the most
#: structures in one such sample (each draws 1 to this many).
NORMAL_SHARE = 0.0
NORMAL_COUNT = 8
#: Share of tumor-free patches centred on bright normal tissue (the rest anywhere).
BRIGHT_PATCH_SHARE = 0.5
#: Iterations between saves of model.pt during training.
CHECKPOINT_EVERY = 250
#: Samples and candidate thresholds for choosing the output thresholds after training.
CALIBRATION_SAMPLES = 24
CALIBRATION_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(13))


@dataclass(frozen=True)
class TrainingBrain:
    """The training subject on the model grid, padded to at least one patch.

    ``ignore``: its own unlabelled lesion, left out of the loss. ``bright``: FLAIR-bright normal
    tissue (periventricular caps, CSF partial volume), and optionally T1c-bright normal tissue
    (enhancing vessels, choroid plexus), outside it, where some tumor-free patches are centred
    so that the network learns that brightness alone is neither edema nor enhancing tumor.
    ``anatomy``: where synthetic normal structures may be painted (``normal_structures``).
    """

    arrays: dict[str, np.ndarray]
    brain: np.ndarray
    ignore: np.ndarray
    bright: np.ndarray
    anatomy: NormalAnatomy


def prepare_subject(images: dict[str, sitk.Image], spacing: float, t1c_bright_sd: float = BRIGHT_T1C_SD) -> TrainingBrain:
    """Contrasts on the model grid as arrays (z, y, x), brain mask, own lesion and bright normal tissue."""
    grid = model_grid(images["t1c"], spacing)
    arrays = {role: pad_to_patch(sitk.GetArrayFromImage(resample(image, grid))) for role, image in images.items()}
    brain = pad_to_patch(brain_mask(arrays["t1c"]))
    ignore = rough_lesion_mask(arrays["flair"], brain, (spacing,) * 3)
    values = arrays["flair"][brain]
    bright = arrays["flair"] > values.mean() + BRIGHT_FLAIR_SD * values.std()
    if t1c_bright_sd > 0:
        t1c = arrays["t1c"][brain]
        bright |= arrays["t1c"] > t1c.mean() + t1c_bright_sd * t1c.std()
    bright &= brain & ~ignore
    return TrainingBrain(arrays, brain, ignore, bright, find_anatomy(arrays, brain, (spacing,) * 3))


def random_subset(rng: np.random.Generator, single_share: float = SINGLE_CONTRAST_SHARE) -> list[str]:
    """Contrasts kept for one sample: all four, one anchor alone, or a random subset containing T1c or FLAIR."""
    draw = rng.random()
    if draw < ALL_CONTRASTS_SHARE:
        return list(CHANNELS)
    if draw < ALL_CONTRASTS_SHARE + 2 * single_share:
        return [ANCHORS[int(draw < ALL_CONTRASTS_SHARE + single_share)]]
    while True:
        kept = [role for role in CHANNELS if rng.random() < 0.5]
        if any(role in kept for role in ANCHORS):
            return kept


def make_sample(subject: TrainingBrain, rng: np.random.Generator, single_share: float = SINGLE_CONTRAST_SHARE,
                normal_share: float = NORMAL_SHARE, normal_count: int = NORMAL_COUNT
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input C x P^3, regions 3 x P^3, loss weight P^3) for one synthetic training patch.

    Normal structures are painted after the tumors (so that they keep clear of them) and only
    draw random numbers when ``normal_share`` > 0, so that earlier seeds give the same samples.
    """
    arrays, brain, ignore = subject.arrays, subject.brain, subject.ignore
    images = {role: array.copy() for role, array in arrays.items()}
    labels = np.zeros(brain.shape, dtype=np.uint8)
    spacing = (SPACING,) * 3
    centers = []
    for _ in range(rng.choice([0, 1, 2], p=[0.1, 0.7, 0.2])):
        center = pick_center(brain, rng, avoid=ignore)
        if center is not None:
            insert_tumor(images, labels, brain, spacing, center, rng)
            centers.append(center)
    if normal_share > 0 and rng.random() < normal_share:
        count = int(rng.integers(1, normal_count + 1))
        paint_normal_structures(images, labels, subject.anatomy, rng, count, keep_out=ignore)
    kept = random_subset(rng, single_share)
    x = zscore_channels({role: images[role] for role in kept}, brain)
    for c in range(len(CHANNELS)):  # intensity jitter: scanners and sites differ
        if x[c].any():
            x[c][brain] = x[c][brain] * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
    present = np.array([role in kept for role in CHANNELS], dtype=np.float32)[:, None, None, None]
    x += (rng.standard_normal(x.shape).astype(np.float32) * 0.05) * brain * present  # missing stays exactly 0
    y = regions_from_labels(labels)
    weight = (~(ignore & (labels == 0))).astype(np.float32)
    if rng.random() < 0.5:
        x, y, weight = x[..., ::-1], y[..., ::-1], weight[..., ::-1]
    start = _patch_start(subject, labels, centers, rng)
    box = tuple(slice(s, s + PATCH) for s in start)
    return (np.ascontiguousarray(x[(slice(None), *box)]), np.ascontiguousarray(y[(slice(None), *box)]),
            np.ascontiguousarray(weight[box]))


def _patch_start(subject: TrainingBrain, labels: np.ndarray, centers: list[tuple[int, int, int]],
                 rng: np.random.Generator) -> list[int]:
    """Patch corner: near a tumor voxel, else on bright normal tissue, else anywhere in the brain."""
    shape = np.array(subject.brain.shape)
    if centers and rng.random() < TUMOR_PATCH_SHARE:
        tumor = np.argwhere(labels > 0)
        focus = tumor[rng.integers(len(tumor))] if len(tumor) else np.array(centers[0])
    else:
        pool = subject.bright if rng.random() < BRIGHT_PATCH_SHARE and subject.bright.any() else subject.brain
        inside = np.argwhere(pool)
        focus = inside[rng.integers(len(inside))]
    start = focus - PATCH // 2 + rng.integers(-PATCH // 4, PATCH // 4 + 1, size=3)
    return [int(v) for v in np.clip(start, 0, np.maximum(shape - PATCH, 0))]


def calibrate(network: torch.nn.Module, subject: TrainingBrain, rng: np.random.Generator,
              samples: int = CALIBRATION_SAMPLES, normal_share: float = NORMAL_SHARE,
              normal_count: int = NORMAL_COUNT) -> list[float]:
    """Per-region thresholds (TC, WT, ET) that maximize mean Dice on fresh training-brain samples.

    A small network trained briefly is under-confident on the small regions (its sigmoid
    outputs inside a core stay below 0.5); the threshold is chosen on training data only. The
    samples carry normal structures as in training, since a threshold that calls them tumor
    is the wrong one.
    """
    network.eval()
    outputs, targets, weights = [], [], []
    with torch.inference_mode():
        for _ in range(samples):
            x, y, w = make_sample(subject, rng, normal_share=normal_share, normal_count=normal_count)
            outputs.append(torch.sigmoid(network(torch.from_numpy(x)[None]))[0].numpy())
            targets.append(y > 0)
            weights.append(w > 0)
    chosen = []
    for region in range(3):
        def mean_dice(threshold: float) -> float:
            scores = []
            for p, y, w in zip(outputs, targets, weights):
                predicted, truth = (p[region] >= threshold) & w, y[region] & w
                total = predicted.sum() + truth.sum()
                scores.append(1.0 if total == 0 else 2 * (predicted & truth).sum() / total)
            return float(np.mean(scores))
        chosen.append(max(CALIBRATION_GRID, key=mean_dice))
    return chosen


def revive_head(network: torch.nn.Module) -> None:
    """Re-initialize SegResNet's output head (GroupNorm, ReLU, 1x1 conv), keeping the rest.

    In the weights of the first two cycles every one of the eight head features is low inside a
    tumor, and GroupNorm + ReLU sets all of them to zero in nearly the whole enhancing rim (83-100
    % of its voxels): there the three outputs equal their biases (probabilities 0.62 / 0.71 /
    0.59, hence thresholds below 0.5), TC and ET cannot differ, and no gradient reaches the
    network from those voxels, which is why training on necrosis could not separate it. Every
    other GroupNorm weight is negated so that, after normalization, what is low in a tumor
    becomes high and those features are alive there again.
    """
    # A SegResNet (Architecture.build) typed as a Module: its head is GroupNorm, ReLU, Convolution(Conv3d).
    head = cast(torch.nn.Sequential, network.conv_final)
    norm, conv = cast(torch.nn.GroupNorm, head[0]), cast(torch.nn.Conv3d, head[2].conv)
    with torch.no_grad():
        signs = torch.ones_like(norm.weight)
        signs[1::2] = -1.0
        norm.weight.copy_(signs)
        norm.bias.zero_()
    conv.reset_parameters()


def pad_to_patch(array: np.ndarray) -> np.ndarray:
    """Pad the last three axes up to PATCH so that every crop is a full cube."""
    pad = [(0, 0)] * (array.ndim - 3) + [(0, max(PATCH - n, 0)) for n in array.shape[-3:]]
    return np.pad(array, pad)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help="peak of the cosine schedule (lower for a cycle started from trained weights)")
    parser.add_argument("--necrosis-weight", type=float, default=NECROSIS_WEIGHT,
                        help="cross-entropy weight of TC and ET inside necrosis (1 = none)")
    parser.add_argument("--single-share", type=float, default=SINGLE_CONTRAST_SHARE,
                        help="share of samples with T1c alone, and again with FLAIR alone")
    parser.add_argument("--t1c-bright-sd", type=float, default=BRIGHT_T1C_SD,
                        help="also centre tumor-free patches on T1c-bright normal tissue above mean + this many SD (0: off)")
    parser.add_argument("--normal-share", type=float, default=NORMAL_SHARE,
                        help="share of samples with synthetic T1c-bright normal structures as negatives (0: off)")
    parser.add_argument("--normal-count", type=int, default=NORMAL_COUNT,
                        help="most normal structures in one such sample (each draws 1 to this many)")
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--init", type=Path, default=None,
                        help="model folder whose model.pt to start from (a second cycle of the schedule)")
    parser.add_argument("--revive-head", action="store_true",
                        help="with --init: re-initialize the output head (see revive_head)")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="no training: choose the thresholds of the model in --out and rewrite its params.toml")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    started = time.time()

    subject = prepare_subject(load_images(BRATS, args.data), SPACING, args.t1c_bright_sd)
    print(f"grid {subject.brain.shape}, brain {int(subject.brain.sum())} voxels, own lesion left out: "
          f"{int(subject.ignore.sum())} voxels, bright normal tissue: {int(subject.bright.sum())} voxels")

    architecture = Architecture()
    network = architecture.build()
    if args.calibrate_only:
        load_state_dict(args.out / "model.pt", network)
        thresholds = calibrate(network, subject, rng, normal_share=args.normal_share, normal_count=args.normal_count)
        write_params(args.out / "params.toml", architecture, SPACING, thresholds)
        print(f"thresholds TC/WT/ET {thresholds} written to {args.out / 'params.toml'}")
        return
    if args.init is not None:
        load_state_dict(args.init / "model.pt", network)
        if args.revive_head:
            revive_head(network)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / args.iterations, 1.0))))
    history = []
    args.out.mkdir(parents=True, exist_ok=True)
    network.train()
    for iteration in range(1, args.iterations + 1):
        samples = [make_sample(subject, rng, args.single_share, args.normal_share, args.normal_count)
                   for _ in range(BATCH)]
        x, y, w = (torch.from_numpy(np.stack(part)) for part in zip(*samples))
        loss = loss_fn(network(x), y, w, args.necrosis_weight)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward carries no annotations
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if iteration % 50 == 0:
            elapsed = time.time() - started
            print(f"{iteration}/{args.iterations} loss {np.mean(history[-50:]):.4f} "
                  f"{elapsed:.0f}s (eta {elapsed / iteration * (args.iterations - iteration):.0f}s)", flush=True)
        if iteration % CHECKPOINT_EVERY == 0 or iteration == args.iterations:
            torch.save(network.state_dict(), args.out / "model.pt")  # a long run cut short keeps its weights
    thresholds = calibrate(network, subject, rng, normal_share=args.normal_share, normal_count=args.normal_count)
    write_params(args.out / "params.toml", architecture, SPACING, thresholds)
    (args.out / "training.json").write_text(json.dumps({
        "command": training_command("training.tumor.train", argv),
        "data": BRATS.name, "spacing_mm": SPACING, "patch": PATCH, "batch": BATCH,
        "iterations": args.iterations, "learning_rate": args.learning_rate,
        "necrosis_weight": args.necrosis_weight, "single_share": args.single_share,
        "t1c_bright_sd": args.t1c_bright_sd, "normal_share": args.normal_share,
        "normal_count": args.normal_count, "seconds": round(time.time() - started),
        "loss_first_100": round(float(np.mean(history[:100])), 4),
        "loss_last_100": round(float(np.mean(history[-100:])), 4),
        "thresholds": thresholds, "torch": torch.__version__, "threads": args.threads,
    }, indent=2) + "\n")
    print(f"saved {args.out} in {time.time() - started:.0f}s")


def write_params(path: Path, architecture: Architecture, spacing: float, thresholds: list[float]) -> None:
    """The radnode params file: preprocessing and the architecture to rebuild for model.pt.

    The ``[[reduced]]`` tables of an existing file are kept: which model serves which contrast
    set is a packaging decision (``model_set``), not this model's, and recalibrating the shipped
    folder must not drop it.
    """
    model = architecture.as_params()
    reduced = read_params(path.parent).get("reduced", []) if path.is_file() else []
    path.write_text(
        "# radnode tumor-segmentation model folder (see pipelines/tumor/inference.py)\n"
        "[input]\n"
        f"spacing = {spacing}          # mm, isotropic model grid\n"
        f"channels = {json.dumps(list(CHANNELS))}\n"
        "roi = [96, 96, 96]      # sliding-window size in voxels\n"
        f"threshold = {json.dumps(thresholds)}   # TC, WT, ET (chosen on training samples)\n\n"
        "[output]\n"
        "require_core = false   # off: it would erase a non-enhancing tumor, and it was chosen on the held-out case\n"
        "fill_core = true       # and misses dark necrosis inside the rim: what the core encloses is necrosis\n\n"
        "[model]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in model.items())
        + "".join(f"\n[[reduced]]\ncontrasts = {json.dumps(entry['contrasts'])}\nfolder = {json.dumps(entry['folder'])}\n"
                  for entry in reduced)
    )


if __name__ == "__main__":
    main()
