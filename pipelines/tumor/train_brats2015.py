"""Fine-tune the tumor model on the BraTS-2015 cases with expert labels, held out by patient.

One command, end to end (GPU when there is one; on 2 CPU cores it is far too slow to be useful):

    python -m pipelines.tumor.train_brats2015 --out $OUT/brats2015 --iterations 4000

1. Train on the source's ``train`` and ``validation`` cases (four patients), starting from the
   shipped with-FLAIR model (``--init``): random 2 mm patches, the contrasts the pipeline meets
   (T1c + FLAIR, T1c alone, FLAIR alone; T1 and T2 are not in these cases and stay zero
   channels), left-right flips, intensity jitter; the loss of ``train.py``.
2. Evaluate on the ``test`` cases (two other patients, never seen) through ``pipeline.segment``,
   Dice per region and case, T1c alone and T1c + FLAIR.
3. Write ``model.pt``, ``params.toml`` (the ``--init`` folder's thresholds and post-processing)
   and ``training.json`` (command, data, split, loss curve, per-case held-out Dice) into ``--out``.

Licence: the BraTS-2015 cases are CC BY-NC-SA 3.0; weights trained on them are a derived work
under the same terms (non-commercial, share-alike) and must say so wherever they are shipped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from pipelines.model_folder import load_state_dict, training_command
from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.data import BRATS2015_CASES, DEFAULT_DATA_ROOT, load_brats2015
from pipelines.tumor.inference import DEFAULT_MODEL_DIR, Segmenter
from pipelines.tumor.model import Architecture
from pipelines.tumor.pipeline import segment
from pipelines.tumor.preprocess import (model_grid, region_dice, regions_from_labels, resample,
                                       zscore_channels)
from pipelines.tumor.train import loss_fn

SPACING = 2.0
#: Contrast sets sampled in training, with their shares.
SUBSETS = ((("t1c", "flair"), 0.5), (("t1c",), 0.25), (("flair",), 0.25))
HELD_OUT = tuple(case for case in BRATS2015_CASES if case.startswith("test/"))
TRAINING = tuple(case for case in BRATS2015_CASES if case not in HELD_OUT)


def brats_labels(labels: np.ndarray) -> np.ndarray:
    """BraTS-2015 labels (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing) as the pipeline's 1/2/4."""
    return np.select([labels == 4, np.isin(labels, (1, 3)), labels == 2], [4, 1, 2], 0).astype(np.uint8)


@dataclass
class Case:
    """One training case on the 2 mm grid: channels per contrast, region targets, tumor voxels."""

    channels: dict[str, np.ndarray]
    brain: np.ndarray
    regions: np.ndarray
    tumor: np.ndarray


def prepare(case: str, root: Path) -> Case:
    images = load_brats2015(case, root)
    grid = model_grid(images["t1c"], SPACING)
    channels = {role: sitk.GetArrayFromImage(resample(images[role], grid)) for role in ("t1c", "flair")}
    brain = sitk.GetArrayFromImage(resample(images["brainmask"], grid, nearest=True)) > 0
    labels = brats_labels(sitk.GetArrayFromImage(resample(images["labels"], grid, nearest=True)).astype(np.int64))
    return Case(channels, brain, regions_from_labels(labels), np.argwhere(labels > 0))


def sample(case: Case, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A (4, p, p, p) input patch and its (3, p, p, p) targets."""
    roles = SUBSETS[rng.choice(len(SUBSETS), p=[share for _, share in SUBSETS])][0]
    channels = {role: case.channels[role] * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15) for role in roles}
    x = zscore_channels(channels, case.brain)
    y = case.regions
    pad = [(0, 0)] + [(patch, patch)] * 3
    x, y = np.pad(x, pad), np.pad(y, pad)
    if rng.random() < 0.7 and len(case.tumor):
        center = case.tumor[rng.integers(len(case.tumor))] + patch
    else:
        center = np.array([rng.integers(patch, s - patch) for s in x.shape[1:]])
    start = np.clip(center - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1, 3), 0,
                    np.array(x.shape[1:]) - patch)
    window = (slice(None),) + tuple(slice(s, s + patch) for s in start)
    x, y = x[window], y[window]
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[..., ::-1]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)


def evaluate(folder: Path, root: Path, device: str) -> dict[str, dict[str, dict[str, float]]]:
    """Held-out Dice per case and contrast set, through ``pipeline.segment`` as the node runs it."""
    segmenter = Segmenter.load(folder, device)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case in HELD_OUT:
        images = load_brats2015(case, root)
        reference = brats_labels(sitk.GetArrayFromImage(images["labels"]))
        results[case] = {}
        for roles in (("t1c",), ("t1c", "flair")):
            labels = segment(segmenter, {role: images[role] for role in roles}, {}, "t1c")
            results[case]["+".join(roles)] = region_dice(labels, reference)
            print(case, roles, results[case]["+".join(roles)], flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--patch", type=int, default=96, help="patch edge in voxels (a multiple of 8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--threads", type=int, default=1)  # CPU: OMP_NUM_THREADS=1 on a shared machine
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    cases = [prepare(case, args.data) for case in TRAINING]
    network = Architecture().build()
    load_state_dict(args.init / "model.pt", network)
    network.to(args.device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / args.iterations, 1.0))))
    args.out.mkdir(parents=True, exist_ok=True)
    history = []
    for iteration in range(1, args.iterations + 1):
        batch = [sample(cases[rng.integers(len(cases))], rng, args.patch) for _ in range(args.batch)]
        x, y = (torch.from_numpy(np.stack(part)).to(args.device) for part in zip(*batch))
        loss = loss_fn(network(x), y, torch.ones_like(y[:, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if iteration % 50 == 0 or iteration == args.iterations:
            print(f"{iteration}/{args.iterations} loss {np.mean(history[-50:]):.4f} {time.time() - started:.0f}s",
                  flush=True)
            torch.save(network.state_dict(), args.out / "model.pt")
    shutil.copy(args.init / "params.toml", args.out / "params.toml")
    params = (args.out / "params.toml").read_text()
    (args.out / "params.toml").write_text(params.split("\n[[reduced]]")[0].rstrip() + "\n")
    network.cpu()
    held_out = evaluate(args.out, args.data, "cpu")
    (args.out / "training.json").write_text(json.dumps({
        "command": training_command("pipelines.tumor.train_brats2015", argv),
        "training_cases": list(TRAINING), "held_out_cases": list(HELD_OUT), "init": str(args.init),
        "channels": list(CHANNELS), "spacing_mm": SPACING, "patch": args.patch, "batch": args.batch,
        "iterations": args.iterations, "learning_rate": args.learning_rate, "device": args.device,
        "seconds": round(time.time() - started), "loss": [round(v, 4) for v in history],
        "held_out_dice": held_out, "torch": torch.__version__,
        "licence": "trained on BraTS-2015 (CC BY-NC-SA 3.0): non-commercial, share-alike",
    }, indent=2) + "\n")
    print(f"saved {args.out} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
