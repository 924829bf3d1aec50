"""Fine-tune the tumor model on prepared real brains (``prepare``): torch, numpy and MONAI only.

    python -m training.tumor.fit --data /tmp/tumor_npz --init pipelines/tumor/weights \\
        --train pat0005 pat0006 pat0003 pat0004 --tumor-free healthy_pat0005 gli00001 \\
        --out /tmp/brats2015 --iterations 6000 --max-seconds 330

Runs where SimpleITK and the shared data folder are absent (a GPU machine): it reads only the
``.npz`` files of ``prepare``. The held-out evaluation runs afterwards through the real pipeline
(``heldout``), on the machine that has the data.

Each sample: a brain drawn from the labelled patients (``--train``, share ``1 - tumor_free_share``)
or the tumor-free brains (``--tumor-free``: mirrored healthy brains, BraTS-GLI-00001 with its own
lesion out of the loss); a ``--patch`` cube centred on a tumor voxel (``TUMOR_CENTRED`` of the
labelled draws) or on any brain voxel, so that most of every brain is seen as "no tumor"
somewhere; T1c alone with ``--t1c-alone`` probability (default 0.5: the two contrast sets the
BraTS-2015 model serves), else T1c + FLAIR where the brain has it (T1 and T2 stay zero channels,
as at inference); with ``--thick-slices`` probability, the patch as a series of
3-7 mm axial slices would reach the model grid (``thick_slices``; thin-slice brains only); with
``--gamma`` and ``--bias-field`` shares, a contrast change and a smooth coil gain (what clinical
scans vary in); intensity jitter and noise on the present channels inside the brain; a
left-right flip. A clinical brain whose mask is the tumor core only (``prepare --clinical``) is
scored on the core everywhere, on whole tumor inside the core, on enhancing tumor outside it.
Everything after loading runs on the device, in bfloat16 autocast on a GPU and on a CPU that
computes in it natively.

The learning rate follows a cosine from ``--learning-rate`` to 0 over whichever ends first,
``--iterations`` or ``--max-seconds`` (a GPU session is counted in seconds); ``training.json``
records the iterations actually run. Writes ``model.pt``, ``params.toml`` (thresholds 0.5, the
post-processing of the shipped folders:
training/tumor/LOG.md, "Retraining on BraTS-2015: rules fixed before training") and ``training.json``.

A run longer than one session (the recipe is 2.4 hours on a CPU without AMX tiles) is carried in
parts: ``--pause-after SECONDS`` ends this session's part with ``checkpoint.pt`` in ``--out``
(network, optimizer, random streams, loss history, seconds used), and the same command with
``--resume`` carries it on, on this machine or another; the schedule and the random streams are
those of an uninterrupted run (on one device, bit for bit). A checkpoint is also written every
``CHECKPOINT_EVERY`` iterations, so a killed run loses at most that many; ``training.json`` lists
the sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.model_folder import load_state_dict
from pipelines.precision import native_cpu_bfloat16
from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.model import Architecture
from training.record import training_command
from training.tumor.loss import loss_fn

SPACING = 2.0
#: Fixed before training (training/tumor/LOG.md, "Retraining on BraTS-2015: rules fixed before training"):
#: sigmoid outputs trained on real labels, as the MONAI bundle.
THRESHOLDS = (0.5, 0.5, 0.5)
#: Share of labelled-patient patches centred on a tumor voxel (the rest on any brain voxel).
TUMOR_CENTRED = 0.6
#: Share of samples drawn from the tumor-free brains.
TUMOR_FREE_SHARE = 0.25
#: Share of samples with T1c alone (the rest T1c + FLAIR).
T1C_ALONE_SHARE = 0.5
#: Slice thicknesses (mm) that ``thick_slices`` simulates: clinical axial slices, thicker than the 2 mm grid.
THICKNESS_MM = (3.0, 7.0)
T1C, FLAIR = CHANNELS.index("t1c"), CHANNELS.index("flair")


#: Acquired slices at most this far apart (mm) count as thin: only those are made thick (``thick_slices``).
THIN_SLICE_MM = 3.0


@dataclass
class Brain:
    """One prepared brain on the device: input channels, region targets, loss weight, sampling pools."""

    name: str
    x: torch.Tensor        # (2, z, y, x) z-scored T1c, FLAIR
    y: torch.Tensor        # (3, z, y, x) TC, WT, ET
    weight: torch.Tensor   # (3, z, y, x) per region, 0 where ignored or not known
    brain: torch.Tensor    # (z, y, x) bool
    brain_voxels: torch.Tensor
    tumor_voxels: torch.Tensor
    thin: bool             # acquired in thin slices, so a thick-slice version is worth simulating
    fully_labelled: bool   # labels speak for all three regions everywhere (BraTS), not the core alone


def load_brain(path: Path, patch: int, device: str) -> Brain:
    """A prepared ``.npz`` padded so that every patch is a full cube, moved to ``device``.

    Optional arrays (``prepare`` writes them for clinical masks): ``supervised`` (3, z, y, x), which
    regions the labels speak for at each voxel (all of them where absent), and ``slice_mm``, the
    acquired slice spacing (1 mm where absent: the BraTS cases)."""
    data = np.load(path)
    pad = [(0, max(patch - n, 0)) for n in data["brain"].shape]
    x = np.stack([np.pad(data[role].astype(np.float32), pad) for role in ("t1c", "flair")])
    labels = np.pad(data["labels"], pad)
    regions = np.stack([np.isin(labels, (1, 4)), labels > 0, labels == 4]).astype(np.float32)
    brain = np.pad(data["brain"], pad) > 0
    known = np.pad(data["ignore"], pad) == 0
    supervised = (np.stack([np.pad(s, pad) for s in data["supervised"]]) > 0 if "supervised" in data.files
                  else np.ones((3, *known.shape), bool))
    weight = (supervised & known).astype(np.float32)
    slice_mm = float(data["slice_mm"]) if "slice_mm" in data.files else 1.0

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    return Brain(path.stem, as_tensor(x), as_tensor(regions), as_tensor(weight), as_tensor(brain),
                 as_tensor(np.argwhere(brain)), as_tensor(np.argwhere(labels > 0)), slice_mm <= THIN_SLICE_MM,
                 "supervised" not in data.files)


def npz_path(data: Path, name: str) -> Path:
    """A brain's prepared file: ``brats2015_<name>.npz`` for a BraTS-2015 patient, else ``<name>.npz``."""
    brats = data / f"brats2015_{name}.npz"
    return brats if brats.is_file() else data / f"{name}.npz"


def thick_slices(x: torch.Tensor, thickness_mm: float, phase: float) -> torch.Tensor:
    """``x`` (c, z, y, x) on the 2 mm grid as a series of ``thickness_mm`` axial slices would reach it.

    Why: a clinical series of 5.5 mm slices, resampled onto the model grid by ``segment``, is
    blurred through-plane in a way no 1 mm BraTS case is. Each acquired slice is a Gaussian slice
    profile (full width at half maximum = the thickness) centred every ``thickness_mm`` from
    ``phase`` (0-1 of a slice); the grid is then interpolated linearly between slice centres, as
    ``resample`` does. One (z, z) matrix does both, applied to every channel.
    """
    n = x.shape[1]
    grid = torch.arange(n, dtype=torch.float64) * SPACING
    centres = (phase - 1.0) * thickness_mm + torch.arange(int(n * SPACING / thickness_mm) + 3) * thickness_mm
    sigma = thickness_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    profile = torch.exp(-0.5 * ((centres[:, None] - grid[None, :]) / sigma) ** 2)
    acquire = profile / profile.sum(dim=1, keepdim=True)
    interpolate = torch.clamp(1.0 - (grid[:, None] - centres[None, :]).abs() / thickness_mm, min=0.0)
    interpolate = interpolate / interpolate.sum(dim=1, keepdim=True)
    matrix = (interpolate @ acquire).to(x.dtype).to(x.device)
    return torch.einsum("zk,ckyx->czyx", matrix, x)


@dataclass(frozen=True)
class Augmentation:
    """How often each change of appearance is drawn; a share of 0 draws no random number, so
    that a recipe without it keeps the random stream (and the weights) it had before it existed."""

    thick_slices: float = 0.0     # thin brains as if acquired as 3-7 mm axial slices
    t1c_alone: float = T1C_ALONE_SHARE
    bias_field: float = 0.0       # a smooth multiplicative field over the patch (coil sensitivity)
    gamma: float = 0.0            # a contrast change: T1c's min-max scaled values raised to a power


#: A brain's mean intensity over its standard deviation in T1c, about: what a gain on the raw
#: intensities adds to a z-score (``with_bias_field``).
MEAN_OVER_SD = 4.0


def with_bias_field(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` (c, z, y, x) z-scores as if the raw intensities carried a smooth gain of about +-20 %.

    Why: a receive coil's sensitivity makes the same tissue brighter near it; clinical scans
    without bias correction carry it, the BraTS cases (corrected) do not. The gain ``g`` is a 2^3
    grid trilinearly upsampled over the patch; on raw intensities ``m + s z`` it makes the z-score
    ``g z + (g - 1) m / s``."""
    coarse = 1.0 + 0.2 * (2.0 * torch.rand((1, 1, 2, 2, 2), generator=generator) - 1.0)
    gain = torch.nn.functional.interpolate(coarse, size=tuple(x.shape[1:]), mode="trilinear", align_corners=True)
    gain = gain[0].to(x.device)
    return x * gain + (gain - 1.0) * MEAN_OVER_SD


def gamma_change(x: torch.Tensor, inside: torch.Tensor, power: float) -> torch.Tensor:
    """T1c z-scores re-shaped by ``power`` through a min-max map inside the brain: contrast between
    tissues changes, order does not (another scanner, another sequence, another contrast dose)."""
    low, high = x[inside].min(), x[inside].max()
    if float(high - low) <= 0:
        return x
    unit = ((x - low) / (high - low)).clamp(0.0, 1.0)
    changed = low + unit ** power * (high - low)
    mean, spread = changed[inside].mean(), changed[inside].std()
    return torch.where(inside, (changed - mean) / (spread + 1e-6), x)


def sample(brain: Brain, generator: torch.Generator, patch: int,
           augmentation: Augmentation = Augmentation()) -> tuple[torch.Tensor, ...]:
    """(4, p, p, p) input, (3, p, p, p) targets, (3, p, p, p) weights for one training patch."""
    device = brain.x.device

    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    pool = brain.tumor_voxels if len(brain.tumor_voxels) and uniform() < TUMOR_CENTRED else brain.brain_voxels
    centre = pool[int(torch.randint(len(pool), (), generator=generator))].cpu()
    jitter = torch.randint(-patch // 4, patch // 4 + 1, (3,), generator=generator)
    shape = torch.tensor(brain.brain.shape)
    start = torch.clamp(centre - patch // 2 + jitter, min=torch.zeros(3, dtype=torch.long), max=shape - patch)
    box = tuple(slice(int(s), int(s) + patch) for s in start)
    x2 = brain.x[(slice(None), *box)].clone()
    inside = brain.brain[box]
    if uniform() < augmentation.t1c_alone:
        x2[1] = 0.0
    if brain.thin and uniform() < augmentation.thick_slices:
        low, high = THICKNESS_MM
        x2 = torch.where(inside, thick_slices(x2, low + (high - low) * uniform(), uniform()), 0.0)
    if augmentation.gamma and uniform() < augmentation.gamma:
        x2[0] = gamma_change(x2[0], inside, float(np.exp(0.4 * (2.0 * uniform() - 1.0))))
    if augmentation.bias_field and uniform() < augmentation.bias_field:
        present = x2.flatten(1).any(dim=1)[:, None, None, None]   # a missing contrast stays 0
        x2 = torch.where(inside & present, with_bias_field(x2, generator), x2)
    for c in range(2):
        if x2[c].any():  # jitter and noise on present channels, inside the brain only (missing stays 0)
            scale, shift = 0.85 + 0.3 * uniform(), -0.15 + 0.3 * uniform()
            noise = torch.randn(x2[c].shape, device=device) * 0.05
            x2[c] = torch.where(inside, x2[c] * scale + shift + noise, x2[c])
    x = torch.zeros((len(CHANNELS), patch, patch, patch), device=device)
    x[T1C], x[FLAIR] = x2[0], x2[1]
    y, weight = brain.y[(slice(None), *box)], brain.weight[(slice(None), *box)]
    if uniform() < 0.5:
        x, y, weight = x.flip(-1), y.flip(-1), weight.flip(-1)
    return x, y, weight


#: The licence each source of training brains brings, by the prefix of its prepared file.
LICENCES = {
    "brats2015_": "BraTS-2015 (CC BY-NC-SA 3.0): a derived work, non-commercial use only, shared alike",
    "healthy_": "BraTS-2015 (CC BY-NC-SA 3.0): a derived work, non-commercial use only, shared alike",
    "gli00001": "BraTS-GLI-00001 (BraTS 2023 data terms)",
    "clinical_": "TCIA QIN-BRAIN-DSC-MRI and Brain-Tumor-Progression (CC BY 3.0, cite Schmainda et al.)",
}


def licences(names: list[str]) -> list[str]:
    """What the training brains (prepared file stems) bring, each source once."""
    found = {text for prefix, text in LICENCES.items() for name in names if name.startswith(prefix)}
    return sorted(found)


def write_params(path: Path, architecture: Architecture, trained_on: list[str]) -> None:
    """The radnode params file of the fine-tuned model (thresholds and post-processing fixed beforehand)."""
    path.write_text(
        "# radnode tumor-segmentation model folder (see pipelines/tumor/inference.py)\n"
        "# fine-tuned by training/tumor/fit.py (the run's training.json has the recipe);\n"
        "# thresholds and post-processing: training/tumor/LOG.md, rules fixed before training\n"
        + "".join(f"# trained on {text}\n" for text in licences(trained_on)) +
        "[input]\n"
        f"spacing = {SPACING}          # mm, isotropic model grid\n"
        f"channels = {json.dumps(list(CHANNELS))}\n"
        "roi = [96, 96, 96]      # sliding-window size in voxels\n"
        f"threshold = {json.dumps(list(THRESHOLDS))}   # TC, WT, ET (fixed before training)\n\n"
        "[output]\n"
        "require_core = false   # off: it would erase a non-enhancing tumor\n"
        "fill_core = true       # what the core encloses is necrosis\n\n"
        "[model]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in architecture.as_params().items())
    )


#: The arguments that define a run: a paused run resumes only with the same ones (``--data``,
#: ``--init``, ``--out`` and ``--device`` may differ between the machines that carry it on).
RUN_ARGUMENTS = ("train", "tumor_free", "iterations", "max_seconds", "patch", "batch", "learning_rate", "seed",
                 "thick_slices", "t1c_alone", "bias_field", "gamma", "fully_labelled_share")
#: Iterations between checkpoints: a run that is killed loses at most this many.
CHECKPOINT_EVERY = 100
CHECKPOINT = "checkpoint.pt"


@dataclass
class Progress:
    """Where a run stands: carried from session to session in ``checkpoint.pt``."""

    command: str
    iteration: int = 0
    seconds: float = 0.0   # counted against --max-seconds, over every session
    history: list[float] = field(default_factory=list)
    sessions: list[dict[str, object]] = field(default_factory=list)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of prepare's .npz files")
    parser.add_argument("--train", nargs="+", required=True, help="labelled patients, e.g. pat0005")
    parser.add_argument("--tumor-free", nargs="*", default=[], help="tumor-free brains, e.g. healthy_pat0005 gli00001")
    parser.add_argument("--init", type=Path, required=True, help="model folder whose model.pt to start from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    parser.add_argument("--patch", type=int, default=96, help="patch edge in voxels (a multiple of 8)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thick-slices", type=float, default=0.0,
                        help="share of thin-slice samples made as if acquired as 3-7 mm axial slices (thick_slices)")
    parser.add_argument("--t1c-alone", type=float, default=T1C_ALONE_SHARE,
                        help="share of samples with the FLAIR channel left empty (the rest keep it where the brain has it)")
    parser.add_argument("--bias-field", type=float, default=0.0,
                        help="share of samples given a smooth intensity gain (with_bias_field)")
    parser.add_argument("--gamma", type=float, default=0.0, help="share of samples given a T1c contrast change (gamma_change)")
    parser.add_argument("--fully-labelled-share", type=float, default=None,
                        help="share of labelled draws from the fully labelled (BraTS) brains; default: in proportion "
                             "to their number (labelled_pool)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pause-after", type=float, default=float("inf"), metavar="SECONDS",
                        help="stop this session after SECONDS with a checkpoint in --out (the schedule is not "
                             "shortened); the same command with --resume carries the run on, here or elsewhere")
    parser.add_argument("--resume", action="store_true", help="carry on the paused run in --out (checkpoint.pt)")
    return parser.parse_args(argv)


def run_arguments(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in RUN_ARGUMENTS}


def save_checkpoint(path: Path, progress: Progress, args: argparse.Namespace, network: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Everything the next iteration depends on, written whole or not at all (a temporary file
    renamed), so that a resumed run continues the same random streams and schedule."""
    state = {
        "arguments": run_arguments(args), "progress": asdict(progress),
        "network": network.state_dict(), "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if args.device.startswith("cuda") else None,
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def resume(path: Path, args: argparse.Namespace, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
           generator: torch.Generator) -> Progress:
    """The paused run's progress, with the network, optimizer and random streams restored."""
    if not path.exists():
        raise SystemExit(f"--resume: no {CHECKPOINT} in {path.parent}; start the run without --resume")
    state = torch.load(path, map_location=args.device, weights_only=True)
    for name, value in run_arguments(args).items():
        if state["arguments"].get(name) != value:  # an option added since the pause is at its default
            option = "--" + name.replace("_", "-")
            raise SystemExit(f"--resume: {option} is {value!r}, but the paused run in {path.parent} was started "
                             f"with {state['arguments'].get(name)!r}; resume it with the same {option}")
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and args.device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda_rng"])  # from a CPU session the CUDA stream starts from the seed
    return Progress(**state["progress"])


def set_learning_rate(optimizer: torch.optim.Optimizer, peak: float, fraction: float) -> None:
    """Cosine from ``peak`` to 0 over the run; ``fraction`` is the share of it done, so that a
    resumed run continues the schedule of the uninterrupted one."""
    for group in optimizer.param_groups:
        group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * fraction))


def augmentation(args: argparse.Namespace) -> Augmentation:
    return Augmentation(args.thick_slices, args.t1c_alone, args.bias_field, args.gamma)


def labelled_pool(labelled: list[Brain], generator: torch.Generator, fully_labelled_share: float | None) -> list[Brain]:
    """The labelled brains one draw chooses from: all of them, or with ``--fully-labelled-share`` the
    fully labelled ones (BraTS) with that probability and the core-only clinical ones otherwise.

    Why: only the fully labelled brains teach enhancing tumor inside the core; drawn in proportion
    to their number (4 of 25) they are too rare for it. Without the option no random number is
    drawn, so earlier recipes replay unchanged."""
    full = [brain for brain in labelled if brain.fully_labelled]
    core_only = [brain for brain in labelled if not brain.fully_labelled]
    if fully_labelled_share is None or not full or not core_only:
        return labelled
    return full if float(torch.rand((), generator=generator)) < fully_labelled_share else core_only


def draw_batch(labelled: list[Brain], tumor_free: list[Brain], generator: torch.Generator,
               args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and loss weights of one batch, every random choice from ``generator`` (the
    stream a checkpoint carries): a tumor-free brain with ``TUMOR_FREE_SHARE``, else a labelled one
    (``labelled_pool``)."""
    batch = []
    for _ in range(args.batch):
        use_free = tumor_free and float(torch.rand((), generator=generator)) < TUMOR_FREE_SHARE
        pool = tumor_free if use_free else labelled_pool(labelled, generator, args.fully_labelled_share)
        batch.append(sample(pool[int(torch.randint(len(pool), (), generator=generator))], generator, args.patch,
                            augmentation(args)))
    x, y, w = (torch.stack(part) for part in zip(*batch))
    return x, y, w


def train_step(network: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], use_bf16: bool) -> float:
    """One optimizer step; the forward pass in bfloat16 autocast where the device computes in it
    natively, the loss in float32. Returns the loss."""
    x, y, w = batch
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = network(x)
    loss = loss_fn(logits.float(), y, w)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward carries no annotations
    optimizer.step()
    return loss.item()


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    started = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    labelled = [load_brain(npz_path(args.data, name), args.patch, args.device) for name in args.train]
    tumor_free = [load_brain(npz_path(args.data, name), args.patch, args.device) for name in args.tumor_free]
    architecture = Architecture()
    network = architecture.build()
    load_state_dict(args.init / "model.pt", network)
    network.to(args.device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.learning_rate, weight_decay=1e-5)
    cuda = args.device.startswith("cuda")
    use_bf16 = cuda or native_cpu_bfloat16()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / CHECKPOINT
    if args.resume:
        progress = resume(checkpoint, args, network, optimizer, generator)
    elif checkpoint.exists():
        raise SystemExit(f"{args.out} holds a paused run ({CHECKPOINT}): add --resume to carry it on, "
                         "or choose another --out")
    else:
        progress = Progress(command=training_command("training.tumor.fit", argv))
    first, before = progress.iteration, progress.seconds

    def seconds() -> float:
        return before + time.time() - started

    paused = False
    while progress.iteration < args.iterations:
        fraction = max(progress.iteration / args.iterations, seconds() / args.max_seconds)
        if fraction >= 1.0:
            break
        set_learning_rate(optimizer, args.learning_rate, fraction)
        batch = draw_batch(labelled, tumor_free, generator, args)
        progress.history.append(train_step(network, optimizer, batch, use_bf16))
        progress.iteration += 1
        if progress.iteration % 100 == 0:
            print(f"{progress.iteration} loss {np.mean(progress.history[-100:]):.4f} {seconds():.0f}s", flush=True)
        if progress.iteration % CHECKPOINT_EVERY == 0:
            progress.seconds = seconds()
            save_checkpoint(checkpoint, progress, args, network, optimizer, generator)
        if time.time() - started >= args.pause_after and progress.iteration < args.iterations:
            paused = True
            break
    progress.seconds = seconds()
    progress.sessions.append({
        "iterations": [first, progress.iteration], "seconds": round(time.time() - started),
        "device": torch.cuda.get_device_name() if cuda else args.device, "bfloat16": use_bf16,
        "command": training_command("training.tumor.fit", argv)})
    if paused:
        save_checkpoint(checkpoint, progress, args, network, optimizer, generator)
        print(f"paused at iteration {progress.iteration} of {args.iterations}: run the same command with "
              f"--resume to carry it on", flush=True)
        return
    network.cpu()
    torch.save(network.state_dict(), args.out / "model.pt")
    write_params(args.out / "params.toml", architecture,
                 [npz_path(args.data, name).stem for name in [*args.train, *args.tumor_free]])
    write_record(args.out / "training.json", args, progress, use_bf16)
    checkpoint.unlink(missing_ok=True)
    print(f"saved {args.out}: {progress.iteration} iterations in {progress.seconds:.0f}s", flush=True)


def write_record(path: Path, args: argparse.Namespace, progress: Progress, use_bf16: bool) -> None:
    """``training.json``: the command, the recipe, the loss curve and each session that carried the run."""
    history = progress.history
    path.write_text(json.dumps({
        "command": progress.command,
        "labelled_patients": args.train, "tumor_free_brains": args.tumor_free, "init": str(args.init),
        "channels": list(CHANNELS), "spacing_mm": SPACING, "patch": args.patch, "batch": args.batch,
        "iterations_run": progress.iteration, "learning_rate": args.learning_rate, "seed": args.seed,
        "tumor_centred": TUMOR_CENTRED, "tumor_free_share": TUMOR_FREE_SHARE, "t1c_alone_share": args.t1c_alone,
        "thick_slices_share": args.thick_slices, "thickness_mm": list(THICKNESS_MM),
        "bias_field_share": args.bias_field, "gamma_share": args.gamma,
        "fully_labelled_share": args.fully_labelled_share,
        "thresholds": list(THRESHOLDS), "device": progress.sessions[-1]["device"],
        "bfloat16": use_bf16,
        "seconds": round(progress.seconds),
        "sessions": progress.sessions,
        "loss_first_100": round(float(np.mean(history[:100])), 4) if history else None,
        "loss_last_100": round(float(np.mean(history[-100:])), 4) if history else None,
        "loss_per_100": [round(float(np.mean(history[i:i + 100])), 4) for i in range(0, len(history), 100)],
        "torch": torch.__version__,
        "licence": licences([npz_path(args.data, name).stem for name in [*args.train, *args.tumor_free]]),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
