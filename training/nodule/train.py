"""Train the reference nodule detector: ``python -m training.nodule.train --seed 0 --out DIR``.

Data (see ``data``): the CPTAC-LUAD chest CT as acquired and slab-averaged to 6 and 9 mm,
resampled to the detector grid once and cut at the lungs' midline: only the patient's right half
is trained on, the left half is kept for ``evaluate --calibrate``. Every step crops patches around
random lung positions and inserts 0-5 synthetic nodules (``synthesis``: 4-60 mm, weighted toward
4-12 mm by ``SIZE_BANDS``, solid / part-solid / ground-glass, spherical / ellipsoid / lobulated,
some on vessels or the pleura) whose masks give the boxes. With ``--mass-every N``, every Nth
step is a batch of larger patches (``--mass-patch``) that usually also holds a 60-90 mm mass,
in aerated lung, against any border or against the mediastinum as ``--mass-sites`` weighs them.
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
from typing import Any

import numpy as np
import torch
from monai.apps.detection.networks import retinanet_detector
from scipy import ndimage as ndi

from pipelines.nodule.detector import Settings, make_detector
from pipelines.nodule.grid import ModelGrid, scale_hu_window, to_model_grid
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.network import Architecture, build_retinanet
from training.data_folder import DATA_ROOT
from training.nodule import data, synthesis
from training.record import training_command

#: Training draws more 4-12 mm nodules than ``synthesis.SIZE_BANDS`` (the evaluation's mix): the
#: small ones are the ones the first weights missed, and a 4-6 mm nodule is 3-5 grid voxels wide.
SIZE_BANDS = (0.75, 0.17, 0.08)
#: Mass patches: one mass from the 60-90 mm band (``synthesis._mass_spec``) with ``MASS_CHANCE``,
#: then the usual nodules. Real lung cancers reach these sizes; the 64 x 64 x 32 patches cannot
#: hold them.
MASS_BANDS = (0.0, 0.0, 0.0, 1.0)
MASS_MAX_MM = 90.0
MASS_CHANCE = 0.8
#: A mass's centre lies at least this share of its radius inside the patch, so most of it is in view.
MASS_MARGIN = 0.6
#: The medial border (``_medial_border``): the nearest outside point's x offset is at least this
#: share of its distance, within this depth (half the largest mass's radius).
MEDIAL_SHARE = 0.7
MEDIAL_REACH_MM = MASS_MAX_MM / 4


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
    medial: np.ndarray        # lung voxels whose nearest border is the mediastinum (``_medial_border``)
    tumors: list[np.ndarray]  # grid-index boxes (6,)
    lung_points: np.ndarray
    medial_points: np.ndarray


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
            index = grid.lps_to_xyz(corners) - np.array([start, 0, 0])
            boxes.append(np.concatenate([index.min(axis=0), index.max(axis=0)]))
        toward_midline = 1 if start == 0 else -1
        depth, medial = _medial_border(lungs, np.asarray(grid.spacing), toward_midline)
        scans.append(TrainingScan(
            hu=hu, lungs=lungs, depth_mm=depth, medial=medial,
            tumors=boxes, lung_points=np.argwhere(lungs), medial_points=np.argwhere(medial),
        ))
    return scans


def _medial_border(lungs: np.ndarray, spacing: np.ndarray, toward_midline: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth into the lung (mm), and the lung voxels within ``MEDIAL_REACH_MM`` of the mediastinum.

    A voxel is medial when the nearest point outside the lung lies toward the midline, mostly
    along x: the mediastinal and hilar surface, not the chest wall, apex or diaphragm. Central
    cancers such as the held-out A0002 mass grow there, and the "pleura" site (any border, which
    is mostly chest wall) rarely puts a synthetic mass there.
    """
    depth, nearest = ndi.distance_transform_edt(lungs, sampling=spacing, return_indices=True)
    along_x = (nearest[0] - np.arange(lungs.shape[0])[:, None, None]) * spacing[0] * toward_midline
    medial = lungs & (along_x >= MEDIAL_SHARE * depth) & (depth <= MEDIAL_REACH_MM)
    return depth, medial


def _right_of(grid: ModelGrid, midline_x: float) -> tuple[int, int]:
    """The range of grid x indices on the patient's right of the midline (LPS x below it)."""
    size = grid.hu.shape[0]
    lps_x = grid.xyz_to_lps(np.column_stack([np.arange(size), np.zeros(size), np.zeros(size)]))[:, 0]
    right = np.flatnonzero(lps_x < midline_x)
    return int(right.min()), int(right.max()) + 1


def sample(scan: TrainingScan, patch: np.ndarray, spacing: np.ndarray, rng: np.random.Generator,
           intensity: tuple[float, float], mass: bool = False,
           mass_sites: tuple[float, ...] = synthesis.MASS_SITE_WEIGHTS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One patch with inserted nodules (and, for a ``mass`` patch, usually a 60-90 mm mass first),
    normalised, and its boxes (x0 y0 z0 x1 y1 z1)."""
    center = scan.lung_points[rng.integers(len(scan.lung_points))]
    if scan.tumors and rng.random() < 0.15:
        box = scan.tumors[rng.integers(len(scan.tumors))]
        center = ((box[:3] + box[3:]) / 2 + rng.uniform(-20, 20, 3)).astype(int)
    crop = _Crop(scan, patch, spacing, center)
    if mass and rng.random() < MASS_CHANCE:
        spec = synthesis.sample_spec(rng, max_mm=MASS_MAX_MM, bands=MASS_BANDS, mass_sites=mass_sites)
        mediastinal = spec.attachment == "mediastinum"
        if mediastinal:  # move the patch to the mediastinal border first
            near = scan.medial_points[rng.integers(len(scan.medial_points))]
            crop = _Crop(scan, patch, spacing, near + np.round(rng.uniform(-15, 15, 3) / spacing).astype(int))
        allowed = crop.depth * _central(crop.hu.shape, spacing, spec.diameter_mm / 2)
        if mediastinal:
            allowed = allowed * crop.medial
        _place(crop.hu, crop.lungs, allowed, spacing, spec, rng, crop.boxes, crop.avoid)
    hu, boxes = crop.hu, crop.boxes
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.05, 0.2, 0.25, 0.2, 0.15, 0.15]))):
        spec = synthesis.sample_spec(rng, bands=SIZE_BANDS)
        _place(hu, crop.lungs, crop.depth, spacing, spec, rng, boxes, crop.avoid)

    if rng.random() < 0.5:  # mirror left-right
        hu = hu[::-1].copy()
        boxes = [np.array([hu.shape[0] - 1 - b[3], b[1], b[2], hu.shape[0] - 1 - b[0], b[4], b[5]]) for b in boxes]
    hu = hu * rng.uniform(0.97, 1.03) + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        hu = hu + rng.normal(0, rng.uniform(5, 40), hu.shape)
    image = torch.from_numpy(scale_hu_window(hu, intensity))[None]
    box_tensor = torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 6)
    return image, {"box": box_tensor, "label": torch.zeros(len(boxes), dtype=torch.long)}


class _Crop:
    """A patch of a training scan around ``center``: a copy of its HU to insert into, its lung
    masks, and the scan's real tumours whose centres it holds, as positive boxes and as places
    no synthetic nodule may go."""

    def __init__(self, scan: TrainingScan, patch: np.ndarray, spacing: np.ndarray, center: np.ndarray):
        shape = np.array(scan.hu.shape)
        low = np.clip(center - patch // 2, 0, np.maximum(shape - patch, 0))
        window = tuple(slice(a, a + p) for a, p in zip(low, patch))
        self.hu = scan.hu[window].copy()
        self.lungs, self.depth, self.medial = scan.lungs[window], scan.depth_mm[window], scan.medial[window]
        self.boxes: list[np.ndarray] = []
        self.avoid: list[tuple[np.ndarray, float]] = []
        for box in scan.tumors:
            local = box - np.concatenate([low, low])
            centre = (local[:3] + local[3:]) / 2
            if np.all(centre >= 0) and np.all(centre < self.hu.shape):
                self.boxes.append(np.concatenate([np.maximum(local[:3], -0.5),
                                                  np.minimum(local[3:], np.array(self.hu.shape) - 0.5)]))
                self.avoid.append((centre, float(np.max((local[3:] - local[:3]) * spacing)) / 2))


def _place(hu: np.ndarray, lungs: np.ndarray, depth: np.ndarray, spacing: np.ndarray, spec: synthesis.NoduleSpec,
           rng: np.random.Generator, boxes: list[np.ndarray], avoid: list[tuple[np.ndarray, float]]) -> None:
    """Insert ``spec`` where ``depth`` (lung depth, zero where it may not go) allows; add its box."""
    where = synthesis.pick_center(lungs, spacing, spec, rng, avoid, depth_mm=depth)
    if where is None:
        return
    inserted = synthesis.insert(hu, spacing, where, spec, rng)
    boxes.append(np.array(inserted.box))
    avoid.append((where, spec.diameter_mm / 2))


def _central(shape: tuple[int, ...], spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """The voxels of a patch at least ``MASS_MARGIN`` radii from its faces."""
    margin = np.ceil(MASS_MARGIN * radius_mm / spacing).astype(int)
    inside = np.zeros(shape, dtype=bool)
    inside[tuple(slice(m, n - m) for m, n in zip(margin, shape))] = True
    return inside


def warm_start(network: torch.nn.Module, folder: Path) -> list[str]:
    """Load earlier weights into a network that may have more FPN levels; return what stayed new.

    The RetinaNet head is shared by all levels, so it loads whole. A new level's lateral 1x1 conv
    starts at zero: its top-down sum then adds nothing to the finer levels, which keep the
    features the loaded head was trained on until the new stage has learned something.
    """
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{folder}/model.pt has weights this network lacks: {unexpected}")
    for name, parameter in network.named_parameters():
        if name in missing and ".fpn.inner_blocks." in name:
            torch.nn.init.zeros_(parameter)
    return list(missing)


def train(args: argparse.Namespace, command: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    arch = Architecture(returned_layers=list(args.returned_layers))
    settings = Settings.for_architecture(arch)
    scans = prepare(args.data, settings)
    spacing = np.asarray(settings.spacing_mm)

    network = build_retinanet(**vars(arch))
    fresh = []
    if args.init is not None:  # continue from earlier weights (a further session of training)
        fresh = warm_start(network, args.init)
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
        mass = args.mass_every > 0 and step % args.mass_every == args.mass_every - 1
        patch, size = (np.array(args.mass_patch), args.mass_batch) if mass else (np.array(args.patch), args.batch)
        batch = [sample(scans[rng.integers(len(scans))], patch, spacing, rng, settings.intensity_range, mass,
                        tuple(args.mass_sites)) for _ in range(size)]
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
        "command": command,
        "seed": args.seed, "device": device, "steps": step, "seconds": round(time.monotonic() - start),
        "training_scan": data.TRAINING, "slab_factors": list(data.SLAB_FACTORS),
        "training_region": "patient's right half (LPS x below the lungs' midline); left half kept for calibration",
        "size_bands": list(SIZE_BANDS),
        **({"mass_patches": {"every": args.mass_every, "batch": args.mass_batch, "patch": list(args.mass_patch),
                             "mass_chance": MASS_CHANCE, "mass_mm": [synthesis.BAND_EDGES_MM[-1], MASS_MAX_MM],
                             "mass_sites": dict(zip(synthesis.MASS_SITES, args.mass_sites))}}
           if args.mass_every else {}),
        "fresh_at_init": fresh,
        "parameters": sum(p.numel() for p in network.parameters()),
        "final_losses": np.mean(history[-50:], axis=0).round(4).tolist() if history else None,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _save(out: Path, network: torch.nn.Module, settings: Settings, arch: Architecture) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out / "model.pt")
    write_params(out / "params.toml", settings.to_params(arch))


def write_params(path: Path, params: dict[str, dict[str, Any]]) -> None:
    """A small TOML writer for the params file (tomllib only reads); ``evaluate --apply`` uses it too."""
    def value(v: object) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v)

    lines = ["# Written by training.nodule.train (report_threshold: evaluate --calibrate --apply);",
             "# read by pipelines.nodule.detector."]
    for table, body in params.items():
        lines += ["", f"[{table}]"] + [f"{k} = {value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None, help="start from the model.pt in this folder")
    parser.add_argument("--returned-layers", type=int, nargs="+", default=Architecture().returned_layers,
                        help="ResNet stages that feed the FPN; one anchor level each, plus a max-pool level")
    parser.add_argument("--mass-every", type=int, default=0, help="every Nth step is a batch of mass patches (0: never)")
    parser.add_argument("--mass-batch", type=int, default=2)
    parser.add_argument("--mass-patch", type=int, nargs=3, default=[96, 96, 48])
    parser.add_argument("--mass-sites", type=float, nargs=3, default=list(synthesis.MASS_SITE_WEIGHTS),
                        help="weights of a mass growing in aerated lung, against any border, against the mediastinum")
    print(json.dumps(train(parser.parse_args(argv), training_command("training.nodule.train", argv)), indent=2))


if __name__ == "__main__":
    main()
