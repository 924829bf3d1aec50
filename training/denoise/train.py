"""Train the reference CT denoiser on real CT with simulated dose reduction.

    python -m training.denoise.train --seed 0 --slice-gap-mm 5 --out pipelines/denoise/weights

reproduces the shipped weights from ``../shared/data`` in about 10 minutes on two CPU cores
(faster on a GPU). Where the shared data is not at hand (a lent GPU machine), ``--data``
takes a training pack instead (``pack``: the same scans as one file). A run longer than one
sitting takes ``--checkpoint DIR`` and, run again, resumes where it stopped (``checkpoint``). Steps:

1. Load the training scans (``data.TRAINING``) and calibrate each one's full-dose photon count
   from its own measured noise, with the FBP filter that matches its kernel (``noise``).
2. Simulate low-dose noise: per slice several independent realizations, each at a dose fraction
   drawn log-uniformly from ``DOSE_RANGE`` (tenth to half dose), times, for the share of
   realizations the mix sets (``--recipe``, ``RECIPES``; ``choose_mix`` picks it on validation
   patients), the noise cost of a thinner reconstruction (a slice thickness drawn from
   ``THICKNESS_RANGE_MM``, only thinner than the scan's own), with the scan's kVp, its
   tube-current modulation along z, electronic noise, and a kernel family's filter (``noise``:
   windows fitted to real noise power spectra). The family is the scan's own or a sharper one: a
   sharp-kernel target keeps its own sharp noise, and smoother noise added on top would teach an
   unconditioned network that sharp noise is anatomy. A conditioned recipe (``Recipe``) tells
   the network the family (at inference the series' own, ``kernels``); ``family-conditioned``
   also draws every family on every scan (a conditioned network learns only that, told "smooth",
   sharp noise is not smooth noise). ``--init`` fine-tunes a model folder instead of starting anew.
3. Fit the network, with the same mean-preserving high-pass of its residual that inference
   applies (``inference.keep_mean``), on random 96 x 96 patches (flips and quarter turns) of
   (slice + noise -> slice + the noise's mean) with mean squared error, weighted by noise level
   and balanced between kernel families (``DEFAULT_RECIPE``); a conditioned network gets the
   family's one-hot planes beside the input. The noise's mean is its systematic part, not zero
   where photons are scarce; keeping it in the target keeps the input's local means, which
   is what the bias rule compares with. The targets carry their own full-dose noise; the
   error-optimal prediction still removes most noise, since the part of the input noise that came
   from the target is unpredictable from the part that was added.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.denoise.inference import Preprocessing, keep_mean
from pipelines.denoise.kernels import FAMILIES
from pipelines.denoise.model import Architecture, ResidualDenoiser
from pipelines.denoise.params import RESTORE_MEAN_SIGMA_MM, DenoiseParams
from pipelines.model_folder import folder_digest, load_params, require_folder
from training.data_folder import DATA_ROOT
from training.denoise import pack
from training.denoise.checkpoint import Checkpoint, Streams
from training.denoise.data import TRAINING, Scan, full_dose_photons, load_scan, thin_slices
from training.denoise.lesions import lesion_image
from training.denoise.noise import (
    BOWTIE_MODULATED,
    ELECTRONIC_NOISE_COUNTS,
    FILTERED_BEAM,
    MATCHED_BEAM,
    N_VIEWS,
    PARALLEL,
    Beam,
    SliceScan,
    added_electronic_noise,
    added_photons,
    thickness_dose_factor,
)
from training.record import training_command

#: Dose fractions simulated for training (log-uniform): from a tenth to half of the scan's dose.
DOSE_RANGE = (0.08, 0.5)
#: Slice thicknesses (mm) a realization may stand for (log-uniform), when thinner than the scan's.
THICKNESS_RANGE_MM = (0.6, 5.0)
#: The thinner-slice factor never takes a realization below this share of the scan's dose.
MIN_EFFECTIVE_DOSE = 0.03
#: Noise realizations per slice: many for the few smooth-kernel slices, fewer for the long scan.
REALIZATIONS_PER_SLICE = {"few": 16, "many": 3}
#: Scans with at most this many slices count as "few".
FEW_SLICES = 5
PATCH = 96
BATCH = 16
ITERATIONS = 3000
LEARNING_RATE = 1e-3
#: A patch must have at least this share of pixels inside the body to be used for training.
MIN_BODY_FRACTION = 0.3


@dataclass(frozen=True)
class NoiseMix:
    """How training doses are drawn: how often a realization also stands for a thinner slice.

    A thinner slice costs dose (``thickness_dose_factor``), so a mix that always applies it trains
    on far noisier inputs than quarter dose; ``choose_mix`` picks the share on validation patients.
    """

    name: str
    thin_share: float


#: The mixes compared by ``choose_mix`` (training/denoise/LOG.md, "Choosing the training dose mix on training patients").
MIXES = {mix.name: mix for mix in (NoiseMix("thin-slices", 1.0), NoiseMix("scan-thickness", 0.0),
                                   NoiseMix("half-thin", 0.5))}


@dataclass(frozen=True)
class Recipe:
    """A dose mix, how the loss weighs noise levels, and how realizations are drawn.

    ``noise_weighted``: each patch's squared error is divided by its added noise's mean square
    (weights normalised to mean 1 per batch), so a starved tenth-dose patch does not outweigh a
    quarter-dose one. ``balanced``: a patch first picks a matched-filter family with equal
    chance, so a kernel with few training slices is not outnumbered. ``restore_mean_sigma_mm``:
    the mean restore the loss is computed through (the network learns only finer detail; 0: none,
    the loss sees every scale the network changes).
    ``input_mean_target``: the target is the slice plus the input's expected error (its
    systematic part, ``SliceScan.expected_acquisition_error``) instead of the bare slice, so the
    error-optimal network removes only zero-mean noise and keeps the input's local means, which
    is what the bias rule compares with (training/denoise/LOG.md, "Training towards the input's expected image").
    ``conditioned``: the network is told each realization's kernel family
    (``model.Architecture.families``). ``every_family``: each realization's noise takes a family
    drawn with equal chance, whatever the scan's own kernel, and patches are balanced over those
    families instead of over the scans' kernels (a sharp kernel's noise is trained on every scan);
    otherwise the family is the scan's own or a sharper one (``noise_families``).
    ``lesion_share``: the share of patches that get faint discs drawn into input and target alike
    (``lesions``), so that keeping a low-contrast lesion is part of the error the network is fitted to.
    ``specialist``: every realization's noise takes this family, on every scan, so the network
    spends all its capacity on that family's texture; it is written as the family's own weights in
    a model folder (``inference``, per-family weights) and the pipeline picks it by the series' family.
    ``beam``: how the simulated scanner spreads photons over rays (``noise.Beam``; bowtie, angular
    tube-current modulation), fitted to real sharp noise by ``real_noise``.
    """

    name: str
    mix: NoiseMix
    noise_weighted: bool = False
    balanced: bool = False
    restore_mean_sigma_mm: float = RESTORE_MEAN_SIGMA_MM
    input_mean_target: bool = False
    conditioned: bool = False
    every_family: bool = False
    lesion_share: float = 0.0
    specialist: str | None = None
    beam: Beam = PARALLEL


#: Every recipe a validation round compares (training/denoise/LOG.md); a plain mix is a recipe of its name.
RECIPES = {
    **{name: Recipe(name, mix) for name, mix in MIXES.items()},
    "noise-weighted": Recipe("noise-weighted", MIXES["scan-thickness"], noise_weighted=True),
    "noise-weighted-balanced": Recipe("noise-weighted-balanced", MIXES["scan-thickness"], noise_weighted=True,
                                      balanced=True),
    "noise-weighted-balanced-1mm": Recipe("noise-weighted-balanced-1mm", MIXES["scan-thickness"],
                                          noise_weighted=True, balanced=True, restore_mean_sigma_mm=1.0),
    "noise-weighted-balanced-input-mean": Recipe("noise-weighted-balanced-input-mean", MIXES["scan-thickness"],
                                                 noise_weighted=True, balanced=True, input_mean_target=True),
    "family-conditioned": Recipe("family-conditioned", MIXES["scan-thickness"], noise_weighted=True, balanced=True,
                                 input_mean_target=True, conditioned=True, every_family=True),
    "family-told": Recipe("family-told", MIXES["scan-thickness"], noise_weighted=True, balanced=True,
                          input_mean_target=True, conditioned=True),
    "family-told-lesions": Recipe("family-told-lesions", MIXES["scan-thickness"], noise_weighted=True,
                                  balanced=True, input_mean_target=True, conditioned=True, lesion_share=0.5),
    "family-told-lesions-unrestored": Recipe("family-told-lesions-unrestored", MIXES["scan-thickness"],
                                             noise_weighted=True, balanced=True, restore_mean_sigma_mm=0.0,
                                             input_mean_target=True, conditioned=True, lesion_share=0.5),
    "sharp-specialist": Recipe("sharp-specialist", MIXES["scan-thickness"], noise_weighted=True, balanced=True,
                               input_mean_target=True, specialist="sharp"),
    "sharp-specialist-matched-beam": Recipe("sharp-specialist-matched-beam", MIXES["scan-thickness"],
                                            noise_weighted=True, balanced=True, input_mean_target=True,
                                            specialist="sharp", beam=BOWTIE_MODULATED),
    "sharp-specialist-filtered-beam": Recipe("sharp-specialist-filtered-beam", MIXES["scan-thickness"],
                                             noise_weighted=True, balanced=True, input_mean_target=True,
                                             specialist="sharp", beam=FILTERED_BEAM),
    "sharp-specialist-bowtie-120": Recipe("sharp-specialist-bowtie-120", MIXES["scan-thickness"],
                                          noise_weighted=True, balanced=True, input_mean_target=True,
                                          specialist="sharp", beam=MATCHED_BEAM),
}
#: The shipped weights' recipe (training/denoise/LOG.md, "Training towards the input's expected image: outcome").
DEFAULT_RECIPE = "noise-weighted-balanced-input-mean"
#: The mean-restore scale (mm) the shipped weights are written with: chosen at inference by
#: ``choose_mix --round restore-scale`` (training/denoise/LOG.md,
#: "Bias against a known truth, and the mean-restore scale: outcome"). Training itself fits
#: through ``inference.RESTORE_MEAN_SIGMA_MM``.
SHIPPED_RESTORE_SCALE_MM = 1.0


@dataclass(frozen=True)
class Realization:
    """One simulated low-dose version of one slice: input = hu[scan][slice] + noise.

    ``expected``: the noise's mean over draws (float16 HU), when the target is the input's
    expected image (``Recipe.input_mean_target``); None: the target is the bare slice.
    """

    scan: int
    slice: int
    noise: np.ndarray  # float16 HU
    expected: np.ndarray | None = None
    #: the kernel family of the noise (``kernels.FAMILIES`` index)
    family: int = 0


def noise_families(matched: str, every_family: bool, specialist: str | None = None) -> tuple[str, ...]:
    """The families a scan's realizations draw from: a specialist's one (``Recipe.specialist``),
    every one (``Recipe.every_family``), else the scan's own and every sharper one (``FAMILIES``
    is ordered sharpest first)."""
    if specialist is not None:
        return (specialist,)
    return FAMILIES if every_family else FAMILIES[: FAMILIES.index(matched) + 1]


def effective_dose(scan: Scan, rng: np.random.Generator, mix: NoiseMix) -> float:
    """A dose fraction, lowered further when the draw stands for a thinner slice than the scan's."""
    dose = float(math.exp(rng.uniform(*np.log(DOSE_RANGE))))
    if scan.slice_thickness_mm and _applies(mix.thin_share, rng):
        thickness = float(math.exp(rng.uniform(*np.log(THICKNESS_RANGE_MM))))
        dose *= min(1.0, thickness_dose_factor(scan.slice_thickness_mm, thickness))
    return max(dose, MIN_EFFECTIVE_DOSE)


def _applies(share: float, rng: np.random.Generator) -> bool:
    """True with probability ``share``; 0 and 1 draw nothing, so those mixes keep one seed's stream."""
    return share >= 1.0 or (share > 0.0 and bool(rng.random() < share))


def simulate(scans: list[Scan], photons: list[float], rng: np.random.Generator,
             generator: torch.Generator, mix: NoiseMix, input_mean_target: bool = False,
             every_family: bool = False, specialist: str | None = None, beam: Beam = PARALLEL,
             checkpoint: Checkpoint | None = None) -> list[Realization]:
    """Noise realizations of every slice; with ``input_mean_target`` each also carries its mean.

    The mean is computed, not drawn, so both kinds of target see the same noise stream. With a
    ``checkpoint``, scans simulated before are read back instead of drawn again.
    """
    realizations, streams = [], Streams(rng, generator)
    for s, (scan, full_dose) in enumerate(zip(scans, photons)):
        saved = None if checkpoint is None else checkpoint.load_scan(s, streams)
        if saved is not None:
            realizations += _from_arrays(s, saved)
            continue
        drawn = _simulate_scan(s, scan, full_dose, streams, mix, input_mean_target,
                               noise_families(scan.filter_name, every_family, specialist), beam)
        if checkpoint is not None:
            checkpoint.save_scan(s, _as_arrays(drawn), streams)
        realizations += drawn
    return realizations


def _simulate_scan(s: int, scan: Scan, full_dose: float, streams: Streams, mix: NoiseMix, input_mean_target: bool,
                   filters: tuple[str, ...], beam: Beam) -> list[Realization]:
    """Scan ``s``'s realizations, each slice's several draws in turn."""
    realizations = []
    per_slice = REALIZATIONS_PER_SLICE["few" if len(scan.hu) <= FEW_SLICES else "many"]
    rng, generator = streams.rng, streams.generator
    for k, hu in enumerate(scan.hu):
        sim = SliceScan.of(hu, scan.pixel_spacing_mm, scan.kvp)
        for _ in range(per_slice):
            dose = effective_dose(scan, rng, mix)
            filter_name = str(rng.choice(filters))
            photons_added = added_photons(scan.slice_photons(full_dose, k), dose)
            electronic = added_electronic_noise(ELECTRONIC_NOISE_COUNTS, dose)
            noise = sim.acquisition_noise(photons_added, filter_name, generator, electronic, beam)
            expected = (sim.expected_acquisition_error(photons_added, filter_name, electronic, beam)
                        .astype(np.float16)
                        if input_mean_target else None)
            realizations.append(Realization(s, k, noise.astype(np.float16), expected, FAMILIES.index(filter_name)))
    return realizations


def _as_arrays(realizations: list[Realization]) -> dict[str, np.ndarray]:
    """One scan's realizations as the arrays a checkpoint keeps."""
    arrays = {"slice": np.array([r.slice for r in realizations]), "family": np.array([r.family for r in realizations]),
              "noise": np.stack([r.noise for r in realizations])}
    if realizations[0].expected is not None:
        arrays["expected"] = np.stack([r.expected for r in realizations if r.expected is not None])
    return arrays


def _from_arrays(s: int, arrays: dict[str, np.ndarray]) -> list[Realization]:
    expected = arrays.get("expected")
    return [Realization(s, int(k), arrays["noise"][i], None if expected is None else expected[i], int(f))
            for i, (k, f) in enumerate(zip(arrays["slice"], arrays["family"]))]


def draw_groups(scans: list[Scan], realizations: list[Realization], recipe: Recipe) -> list[np.ndarray]:
    """Realization indices a patch draws from: one group, or one per kernel family (the noise's
    when every family is drawn on every scan, else the scan's)."""
    if not recipe.balanced:
        return [np.arange(len(realizations))]
    family = np.array([FAMILIES[r.family] if recipe.every_family else scans[r.scan].filter_name
                       for r in realizations])
    return [np.flatnonzero(family == name) for name in sorted(set(family))]


def patch_batch(scans: list[Scan], realizations: list[Realization], groups: list[np.ndarray],
                rng: np.random.Generator, prep: Preprocessing,
                lesion_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of (noisy, target, family index) patches in network units, randomly flipped and turned.

    Each patch picks a group with equal chance (``draw_groups``), then a realization in it. The
    target is the clean slice, plus the noise's mean where the realization carries it; a share
    ``lesion_share`` of the clean patches first gets faint discs (``lesions.lesion_image``).
    """
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    families: list[int] = []
    while len(inputs) < BATCH:
        group = groups[rng.integers(len(groups))] if len(groups) > 1 else groups[0]
        item = realizations[group[rng.integers(len(group))]]
        hu = scans[item.scan].hu[item.slice]
        r = rng.integers(0, hu.shape[0] - PATCH + 1)
        c = rng.integers(0, hu.shape[1] - PATCH + 1)
        clean = hu[r : r + PATCH, c : c + PATCH]
        if np.mean(clean > -900) < MIN_BODY_FRACTION:
            continue
        if _applies(lesion_share, rng):
            clean = clean + lesion_image(clean, scans[item.scan].pixel_spacing_mm, rng)
        noisy = clean + item.noise[r : r + PATCH, c : c + PATCH].astype(np.float32)
        target = clean if item.expected is None else clean + item.expected[r : r + PATCH, c : c + PATCH].astype(np.float32)
        families.append(item.family)
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        for image, out in ((noisy, inputs), (target, targets)):
            image = np.rot90(image, turns)
            out.append(np.ascontiguousarray(image[:, ::-1] if flip else image))
    x = prep.to_network(torch.from_numpy(np.stack(inputs))[:, None])
    y = prep.to_network(torch.from_numpy(np.stack(targets))[:, None])
    return x, y, torch.tensor(families)


def patch_loss(predicted: torch.Tensor, noisy: torch.Tensor, target: torch.Tensor, noise_weighted: bool) -> torch.Tensor:
    """MSE, or each patch's MSE over the mean square of its input's noise about the target
    (weights normalised to mean 1)."""
    if not noise_weighted:
        return torch.nn.functional.mse_loss(predicted, target)
    error = ((predicted - target) ** 2).mean(dim=(1, 2, 3))
    weight = 1.0 / ((noisy - target) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-8)
    return (error * weight / weight.mean()).mean()


def starting_network(arch: Architecture, init: Path | None) -> ResidualDenoiser:
    """A new network, or one that starts as the model folder ``init`` (fine-tuning).

    An unconditioned folder can start a conditioned network: its first convolution's weights on
    the family planes start at zero, so before the first step the network gives exactly the
    folder's results, and fine-tuning only adds what the family tells it.
    """
    network = ResidualDenoiser(arch)
    if init is None:
        return network
    params = load_params(require_folder(init), DenoiseParams)
    given = Architecture(**params.model.given())
    if replace(given, families=arch.families) != arch or given.families not in (0, arch.families):
        raise SystemExit(f"--init {init}: its [model] {given.as_dict()} cannot start a {arch.as_dict()} network")
    state = torch.load(init / "model.pt", map_location="cpu", weights_only=True)
    first = "body.0.weight"
    missing = arch.families - given.families
    if missing:
        weight = state[first]
        state[first] = torch.cat([weight, weight.new_zeros(weight.shape[0], missing, *weight.shape[2:])], 1)
    network.load_state_dict(state)
    return network


def fit(scans: list[Scan], realizations: list[Realization], network: ResidualDenoiser, prep: Preprocessing,
        streams: Streams, device: str, iterations: int, recipe: Recipe,
        learning_rate: float = LEARNING_RATE, checkpoint: Checkpoint | None = None) -> tuple[ResidualDenoiser, list[float]]:
    # Module.to takes memory_format (torch._C._nn._parse_to), but torch's overloads of it leave it out.
    network = network.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # Patches come from scans of 0.56-0.82 mm pixels: their median sets the high-pass in pixels.
    sigma_px = prep.restore_mean_sigma_mm / float(np.median([s.pixel_spacing_mm for s in scans]))
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations, eta_min=learning_rate / 100)
    groups = draw_groups(scans, realizations, recipe)
    losses, running, done = [], 0.0, 0
    saved = None if checkpoint is None else checkpoint.load_fit(streams)
    if saved is not None:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        losses, running, done = list(saved["losses"]), float(saved["running"]), int(saved["step"])
        print(f"resumed at step {done}/{iterations} from {checkpoint.folder}", flush=True)  # type: ignore[union-attr]
    for step in range(done + 1, iterations + 1):
        x, y, family = patch_batch(scans, realizations, groups, streams.rng, prep, recipe.lesion_share)
        x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
        output = network(x, family.to(device)) if recipe.conditioned else network(x)
        predicted = keep_mean(x, output, (sigma_px, sigma_px))
        loss = patch_loss(predicted, x, y, recipe.noise_weighted)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward carries no annotations
        optimizer.step()
        schedule.step()
        running += torch.nn.functional.mse_loss(predicted, y).item()
        if step % 250 == 0:
            rmse_hu = math.sqrt(running / 250) * prep.scale
            losses.append(rmse_hu)
            print(f"step {step}/{iterations}: training RMSE {rmse_hu:.1f} HU", flush=True)
            running = 0.0
        if checkpoint is not None and (step % checkpoint.fit_every == 0 or step == iterations):
            checkpoint.save_fit(step, {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                                       "schedule": schedule.state_dict(), "losses": losses, "running": running},
                                streams)
    return network.cpu().eval(), losses


def write_weights(out: Path, network: ResidualDenoiser, arch: Architecture, prep: Preprocessing) -> None:
    """``model.pt`` + ``params.toml``: the model folder format ``inference.Denoiser.load`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out / "model.pt")
    low, high = prep.clip
    (out / "params.toml").write_text(
        "# Written by training.denoise.train; read by pipelines.denoise.inference.\n"
        "[input]\n"
        f"clip = [{low}, {high}]\n"
        f"offset = {prep.offset}\n"
        f"scale = {prep.scale}\n"
        f"halo = {prep.halo}\n\n"
        "[output]\n"
        f"restore_mean_sigma_mm = {prep.restore_mean_sigma_mm}\n\n"
        "[model]\n"
        + "".join(f"{key} = {value}\n" for key, value in arch.as_dict().items())
    )


def training_scans(data: Path, slice_gap_mm: float) -> tuple[list[Scan], dict[str, str]]:
    """The training scans from the shared data folder (DICOM) or from a pack file (``pack``).

    Also returns where they came from, for ``training.json``: a pack names the command that
    wrote it, so the weights can be traced back to the DICOM files.
    """
    if data.is_file():
        if slice_gap_mm:
            raise SystemExit("--slice-gap-mm applies to DICOM data; a pack is thinned when it is written "
                             "(python -m training.denoise.pack --slice-gap-mm)")
        scans, header = pack.load(data)
        return scans, {"pack": data.name, "pack_command": header["command"]}
    scans = [thin_slices(load_scan(data, name), slice_gap_mm) for name in TRAINING]
    return scans, {"dicom": "../shared/data"}


@dataclass
class Trained:
    """A fitted network with what ``training.json`` records about how it was made."""

    network: ResidualDenoiser
    arch: Architecture
    prep: Preprocessing
    record: dict[str, Any]


def train_network(scans: list[Scan], recipe: Recipe, seed: int, iterations: int, device: str,
                  init: Path | None = None, learning_rate: float = LEARNING_RATE,
                  checkpoint: Checkpoint | None = None) -> Trained:
    """Calibrate, simulate and fit: the whole training on scans already loaded (from scratch, or
    fine-tuning the model folder ``init``), resumed from ``checkpoint`` where it stopped."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    photons = [full_dose_photons(scan, generator, recipe.beam) for scan in scans]
    for scan, full_dose in zip(scans, photons):
        print(f"{scan.name}: {len(scan.hu)} slices, kernel {scan.kernel} ~ {scan.filter_name}, "
              f"full-dose photons/ray {full_dose:.3g}", flush=True)
    realizations = simulate(scans, photons, rng, generator, recipe.mix, recipe.input_mean_target, recipe.every_family,
                            recipe.specialist, recipe.beam, checkpoint)
    simulated_s = time.monotonic() - started
    print(f"{len(realizations)} noise realizations ({recipe.name}) in {simulated_s:.0f} s", flush=True)

    arch = Architecture(families=len(FAMILIES) if recipe.conditioned else 0)
    prep = Preprocessing(halo=arch.layers * arch.downscale, restore_mean_sigma_mm=recipe.restore_mean_sigma_mm)
    network, losses = fit(scans, realizations, starting_network(arch, init), prep, Streams(rng, generator), device,
                          iterations, recipe, learning_rate, checkpoint)
    record = {
        "seed": seed,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seconds_total": round(time.monotonic() - started),
        "seconds_simulation": round(simulated_s),
        "iterations": iterations,
        "learning_rate": learning_rate,
        "init": None if init is None else {"folder": str(init), "folder_digest": folder_digest(init)},
        "batch": BATCH,
        "patch": PATCH,
        "recipe": {"name": recipe.name, "mix": recipe.mix.name, "thin_share": recipe.mix.thin_share,
                   "noise_weighted": recipe.noise_weighted, "balanced": recipe.balanced,
                   "restore_mean_sigma_mm": recipe.restore_mean_sigma_mm,
                   "input_mean_target": recipe.input_mean_target, "conditioned": recipe.conditioned,
                   "every_family": recipe.every_family, "lesion_share": recipe.lesion_share,
                   "specialist": recipe.specialist, "beam": asdict(recipe.beam)},
        "dose_range": DOSE_RANGE,
        "thickness_range_mm": THICKNESS_RANGE_MM,
        "electronic_noise_counts": ELECTRONIC_NOISE_COUNTS,
        "restore_mean_sigma_mm": prep.restore_mean_sigma_mm,
        "views": N_VIEWS,
        "architecture": arch.as_dict(),
        "multiply_adds_per_pixel": arch.multiply_adds_per_pixel(),
        "scans": [
            {"name": s.name, "slices": len(s.hu), "kernel": s.kernel, "filter": s.filter_name, "kvp": s.kvp,
             "full_dose_photons_per_ray": round(p)}
            for s, p in zip(scans, photons)
        ],
        "realizations": len(realizations),
        "training_rmse_hu_every_250_steps": [round(v, 2) for v in losses],
    }
    return Trained(network, arch, prep, record)


def run_settings(args: argparse.Namespace, source: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint must share with the command that resumes it (the device may differ)."""
    init = None if args.init is None else folder_digest(args.init)
    return {"recipe": args.recipe, "seed": args.seed, "iterations": args.iterations,
            "learning_rate": args.learning_rate, "init": init, "data": source,
            "slice_stride": args.slice_stride, "slice_gap_mm": args.slice_gap_mm}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("pipelines/denoise/weights"))
    parser.add_argument("--data", type=Path, default=DATA_ROOT,
                        help="the shared data folder (DICOM), or a training pack file from training.denoise.pack")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help="dose mix, loss weighting and kernel balance (train.RECIPES)")
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                        help="Adam's starting rate (cosine decay to a hundredth)")
    parser.add_argument("--init", type=Path, default=None,
                        help="a model folder to start from (fine-tuning); an unconditioned one can start a conditioned recipe")
    parser.add_argument("--restore-scale-mm", type=float, default=SHIPPED_RESTORE_SCALE_MM,
                        help="params.toml [output] restore_mean_sigma_mm of the written weights")
    parser.add_argument("--slice-stride", type=int, default=1,
                        help="use every n-th slice of each scan (a quick check of the whole run; 1 for real weights)")
    parser.add_argument("--slice-gap-mm", type=float, default=0.0,
                        help="keep slices about this far apart (data.thin_slices; 0: every slice); "
                             "a pack is thinned when it is written")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a folder where the run keeps its simulated noise and fit, and resumes from them "
                             "when run again with the same settings")
    args = parser.parse_args(argv)

    from pipelines.base import resolve_device

    scans, source = training_scans(args.data, args.slice_gap_mm)
    scans = [scan.subset(slice(None, None, args.slice_stride)) for scan in scans]
    checkpoint = None if args.checkpoint is None else Checkpoint(args.checkpoint, run_settings(args, source)).open()
    trained = train_network(scans, RECIPES[args.recipe], args.seed, args.iterations, resolve_device(args.device),
                            args.init, args.learning_rate, checkpoint)
    write_weights(args.out, trained.network, trained.arch,
                  replace(trained.prep, restore_mean_sigma_mm=args.restore_scale_mm))
    record = {"command": training_command("training.denoise.train", argv), **trained.record,
              "data": source, "slice_gap_mm": args.slice_gap_mm}
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} in {record['seconds_total']} s", flush=True)


if __name__ == "__main__":
    main()
