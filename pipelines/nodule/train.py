"""Train the reference nodule detector: ``python -m pipelines.nodule.train --seed 0 --out DIR``.

Data (see ``data``): the CPTAC-LUAD chest CT as acquired and slab-averaged to 6 and 9 mm,
resampled to the detector grid once and cut at the lungs' midline: only the patient's right half
is trained on, the left half is kept for ``evaluate --calibrate``. Every step crops patches around
random lung positions and inserts 0-5 synthetic nodules (``synthesis``: 4-60 mm, weighted toward
4-12 mm by ``SIZE_BANDS``, solid / part-solid / ground-glass, spherical / ellipsoid / lobulated,
some on vessels or the pleura) whose masks give the boxes.
The scan's real tumour (``annotations/``) is a positive box whenever a patch holds it, so it is
never taught as background. Augmentation: left-right mirror, HU gain and offset, added noise.
Training stops after ``--minutes`` of wall clock (reproducible in content for a seed, not in the
exact number of steps, which depends on the machine); the GPU is used when present.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from monai.apps.detection.networks import retinanet_detector

from pipelines.nodule import data, synthesis
from pipelines.nodule.detector import Settings, make_detector
from pipelines.nodule.grid import ModelGrid, normalize, to_model_grid
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.network import Architecture, build_retinanet

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
#: Training draws more 4-12 mm nodules than ``synthesis.SIZE_BANDS`` (the evaluation's mix): the
#: small ones are the ones the first weights missed, and a 4-6 mm nodule is 3-5 grid voxels wide.
SIZE_BANDS = (0.75, 0.17, 0.08)


class _NoTorchvisionMatcher:
    """Stands in for torchvision's Matcher, which RetinaNetDetector only uses in an isinstance check.

    radnode trains with MONAI's ATSS matcher and hard negative sampler, so torchvision (not a
    radnode dependency) is never needed; without it MONAI's lazy import raises inside that check.
    """


if not isinstance(retinanet_detector.Matcher, type):
    retinanet_detector.Matcher = _NoTorchvisionMatcher
if not isinstance(retinanet_detector.BalancedPositiveNegativeSampler, type):
    retinanet_detector.BalancedPositiveNegativeSampler = _NoTorchvisionMatcher


@dataclass
class TrainingScan:
    """A training scan on the detector grid, with what sampling needs precomputed."""

    hu: np.ndarray
    lungs: np.ndarray
    depth_mm: np.ndarray
    tumors: list[np.ndarray]  # grid-index boxes (6,)
    lung_points: np.ndarray


def prepare(data_dir: Path, settings: Settings) -> list[TrainingScan]:
    """The training scan and its slab variants on the detector grid, cut to the patient's right half.

    The left half is never in a patch: it is where ``evaluate --calibrate`` sets the threshold.
    """
    volume = data.load(data_dir, data.TRAINING)
    tumors_lps = data.tumor_boxes(data_dir, data.TRAINING, volume)
    midline = data.midline_x(volume)
    scans = []
    for factor in data.SLAB_FACTORS:
        grid = to_model_grid(data.slab_average(volume, factor), settings.spacing_mm)
        start, stop = _right_of(grid, midline)
        hu = grid.hu[start:stop]
        lungs = lung_mask(grid.hu, slice_axis=2)[start:stop]  # the cut would make the lung "outside air"
        boxes = []
        for box in tumors_lps:
            corners = np.array([[x, y, z] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
            index = grid.lps_to_index(corners) - np.array([start, 0, 0])
            boxes.append(np.concatenate([index.min(axis=0), index.max(axis=0)]))
        scans.append(TrainingScan(
            hu=hu, lungs=lungs,
            depth_mm=ndi.distance_transform_edt(lungs, sampling=grid.spacing),
            tumors=boxes, lung_points=np.argwhere(lungs),
        ))
    return scans


def _right_of(grid: ModelGrid, midline_x: float) -> tuple[int, int]:
    """The range of grid x indices on the patient's right of the midline (LPS x below it)."""
    size = grid.hu.shape[0]
    lps_x = grid.index_to_lps(np.column_stack([np.arange(size), np.zeros(size), np.zeros(size)]))[:, 0]
    right = np.flatnonzero(lps_x < midline_x)
    return int(right.min()), int(right.max()) + 1


def sample(scan: TrainingScan, patch: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
           intensity: tuple[float, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One patch with inserted nodules, normalised, and its boxes (x0 y0 z0 x1 y1 z1)."""
    shape = np.array(scan.hu.shape)
    center = scan.lung_points[rng.integers(len(scan.lung_points))]
    if scan.tumors and rng.random() < 0.15:
        box = scan.tumors[rng.integers(len(scan.tumors))]
        center = ((box[:3] + box[3:]) / 2 + rng.uniform(-20, 20, 3)).astype(int)
    low = np.clip(center - patch // 2, 0, np.maximum(shape - patch, 0))
    window = tuple(slice(a, a + p) for a, p in zip(low, patch))
    hu = scan.hu[window].copy()
    lungs, depth = scan.lungs[window], scan.depth_mm[window]

    boxes, avoid = [], []
    for box in scan.tumors:
        local = box - np.concatenate([low, low])
        centre = (local[:3] + local[3:]) / 2
        if np.all(centre >= 0) and np.all(centre < hu.shape):
            boxes.append(np.concatenate([np.maximum(local[:3], -0.5), np.minimum(local[3:], np.array(hu.shape) - 0.5)]))
            avoid.append((centre, float(np.max((local[3:] - local[:3]) * spacing)) / 2))
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.05, 0.2, 0.25, 0.2, 0.15, 0.15]))):
        spec = synthesis.sample_spec(rng, bands=SIZE_BANDS)
        where = synthesis.pick_center(lungs, spacing, spec, rng, avoid, depth_mm=depth)
        if where is None:
            continue
        inserted = synthesis.insert(hu, spacing, where, spec, rng)
        boxes.append(np.array(inserted.box))
        avoid.append((where, spec.diameter_mm / 2))

    if rng.random() < 0.5:  # mirror left-right
        hu = hu[::-1].copy()
        boxes = [np.array([hu.shape[0] - 1 - b[3], b[1], b[2], hu.shape[0] - 1 - b[0], b[4], b[5]]) for b in boxes]
    hu = hu * rng.uniform(0.97, 1.03) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        hu = hu + rng.normal(0, rng.uniform(5, 40), hu.shape)
    image = torch.from_numpy(normalize(hu, intensity))[None]
    box_tensor = torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 6)
    return image, {"box": box_tensor, "label": torch.zeros(len(boxes), dtype=torch.long)}


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    settings, arch = Settings(), Architecture()
    scans = prepare(args.data, settings)
    spacing = np.asarray(settings.spacing_mm)
    patch = np.array(args.patch)

    network = build_retinanet(**vars(arch))
    if args.init is not None:  # continue from earlier weights (a second session of training)
        network.load_state_dict(torch.load(args.init / "model.pt", map_location="cpu", weights_only=True))
    network = network.to(device)
    detector = make_detector(network, settings)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)

    start, step, history = time.monotonic(), 0, []
    budget = args.minutes * 60.0
    lowered = False
    while time.monotonic() - start < budget and (args.steps is None or step < args.steps):
        if not lowered and time.monotonic() - start > 0.75 * budget:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.2
            lowered = True
        batch = [sample(scans[rng.integers(len(scans))], patch, spacing, rng, settings.intensity_range)
                 for _ in range(args.batch)]
        images = [image.to(device) for image, _ in batch]
        targets = [{k: v.to(device) for k, v in target.items()} for _, target in batch]
        losses = detector(images, targets)
        loss = losses[detector.cls_key] + losses[detector.box_reg_key]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        history.append([float(losses[detector.cls_key].detach()), float(losses[detector.box_reg_key].detach())])
        if step % 25 == 0:
            recent = np.mean(history[-25:], axis=0)
            print(f"step {step} {time.monotonic() - start:.0f}s cls {recent[0]:.4f} box {recent[1]:.4f}", flush=True)
        if step % 200 == 0:  # a usable folder at any time, to evaluate while training goes on
            _save(args.out, network, settings, arch)

    _save(args.out, network, settings, arch)
    record = {
        "command": f"python -m pipelines.nodule.train --seed {args.seed} --minutes {args.minutes} "
                   f"--batch {args.batch} --patch {' '.join(map(str, args.patch))} --lr {args.lr} "
                   f"--threads {args.threads} --out {args.out.name}"
                   + (f" --init {args.init.name}" if args.init else ""),
        "seed": args.seed, "device": device, "steps": step, "seconds": round(time.monotonic() - start),
        "training_scan": data.TRAINING, "slab_factors": list(data.SLAB_FACTORS),
        "training_region": "patient's right half (LPS x below the lungs' midline); left half kept for calibration",
        "size_bands": list(SIZE_BANDS),
        "parameters": sum(p.numel() for p in network.parameters()),
        "final_losses": np.mean(history[-50:], axis=0).round(4).tolist() if history else None,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _save(out: Path, network: torch.nn.Module, settings: Settings, arch: Architecture) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out / "model.pt")
    write_params(out / "params.toml", settings.to_params(arch))


def write_params(path: Path, params: dict) -> None:
    """A small TOML writer for the params file (tomllib only reads); ``evaluate --apply`` uses it too."""
    def value(v) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v)

    lines = ["# Written by pipelines.nodule.train (report_threshold: evaluate --calibrate --apply);",
             "# read by pipelines.nodule.detector."]
    for table, body in params.items():
        lines += ["", f"[{table}]"] + [f"{k} = {value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None, help="start from the model.pt in this folder")
    print(json.dumps(train(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
