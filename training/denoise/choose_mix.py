"""Choose a training recipe on validation data taken from the training patients.

    python -m training.denoise.choose_mix --round dose-mix --out DIR
    python -m training.denoise.choose_mix --round loss-balance --out DIR
    python -m training.denoise.choose_mix --round restore-scale --out DIR [--network DIR]
    python -m training.denoise.choose_mix --round restore-trained --out DIR [--network DIR]
    python -m training.denoise.choose_mix --round input-mean-target --out DIR [--network DIR]

applies the rules of training/denoise/LOG.md ("Choosing the training dose mix on training patients",
"Loss weighting and kernel balance"): every recipe of the round (``ROUNDS``, from
``train.RECIPES``) trains on the training scans minus the round's validation part and is scored
on that part at simulated quarter and tenth dose (model PSNR minus the oracle Gaussian's) and on
the water cylinder (the bias rule). The held-out scans are never read, so the choice cannot be
fitted to them; they are measured once, afterwards, by ``evaluate`` on the network trained with
the chosen recipe on every training scan. Writes ``DIR/<recipe>/`` (weights) and ``DIR/choice.json``.

The restore-scale round ("Bias against a known truth, and the mean-restore scale") trains no
new recipe: it takes round 2's chosen recipe on round 2's split (``--network`` reuses one
already trained) and scores the mean correction's scale at inference by the known-truth bias.
The challenger rounds score that network against one changed recipe, both at the shipped scale:
restore-trained ("Training through the restore scale") trains through that scale,
input-mean-target ("Training towards the input's expected image") trains towards E[input].
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.denoise.inference import Denoiser
from training.data_folder import DATA_ROOT
from training.denoise import evaluate
from training.denoise.data import TRAINING, Scan, load_scan, thin_slices
from training.denoise.train import (
    ITERATIONS,
    RECIPES,
    SHIPPED_RESTORE_SCALE_MM,
    train_network,
    write_weights,
)
from training.record import training_command


@dataclass(frozen=True)
class Round:
    """Recipes compared, scans validated whole (by patient), and scans split by slab.

    A slab-split scan trains on its first ``SLAB_SHARE`` of slices and validates on its last, the
    slices between them used by neither, so no validated slice has a trained neighbour.
    """

    recipes: tuple[str, ...]
    whole: tuple[str, ...]
    slab: tuple[str, ...] = ()


C3N, LIDC_0002 = "ct-chest/cptac-luad-C3N-00247", "ct-chest/lidc-idri-0002/ct"
#: The two recipe rounds of training/denoise/LOG.md (the dose mix, and loss weighting and kernel balance).
ROUNDS = {
    # one validation patient per kernel family of the training set (Siemens sharp, GE STANDARD)
    "dose-mix": Round(("thin-slices", "scan-thickness", "half-thin"), whole=(C3N, LIDC_0002)),
    # C3N is the only Siemens sharp training patient: a caudal slab of it validates
    "loss-balance": Round(("scan-thickness", "noise-weighted", "noise-weighted-balanced"), whole=(LIDC_0002,),
                          slab=(C3N,)),
}
#: Share of a slab-split scan's slices that trains (first) and that validates (last).
SLAB_SHARE = 0.45
#: Slices scored per validation patient, evenly spread.
VALIDATION_SLICES = 12
#: Seed of the validation noise (not the held-out evaluation's).
VALIDATION_SEED = 5
#: The water cylinder check: tube voltage, noise draws (as the bias test) and the rule's limit.
PHANTOM_KVP, PHANTOM_DRAWS, MAX_BIAS_HU = 120, 8, 2.0
#: Quarter-dose gains closer than this count as a tie, broken by the tenth-dose gain.
TIE_DB = 0.05
#: Slice gap of the training scans (as the shipped pack and the final network use).
SLICE_GAP_MM = 5.0


#: The restore-scale round: its name, the round whose split and chosen recipe it reuses, and the
#: scales compared (mm), largest first.
RESTORE_ROUND, RESTORE_SPLIT, RESTORE_RECIPE = "restore-scale", "loss-balance", "noise-weighted-balanced"
RESTORE_SCALES_MM = (2.0, 1.5, 1.0)
#: The challenger rounds' names (both candidates run at the shipped restore scale) and the
#: margins: the known-truth deviation a challenger must win by (restore-trained) or may lose by
#: (input-mean-target), in HU, and the quarter-dose gain it may lose, in dB.
TRAINED_ROUND, INPUT_MEAN_ROUND = "restore-trained", "input-mean-target"
MIN_BIAS_GAIN_HU, MAX_BIAS_LOSS_HU, MAX_QUALITY_LOSS_DB = 0.3, 0.3, 0.3
TRAINED_RECIPE, INPUT_MEAN_RECIPE = "noise-weighted-balanced-1mm", "noise-weighted-balanced-input-mean"


def gain_over_gaussian(denoiser: Denoiser, scan: Scan) -> dict[str, float]:
    """Model PSNR minus oracle-Gaussian PSNR (dB) per simulated dose, on ``scan``'s slices."""
    photons = evaluate.scan_photons(scan, VALIDATION_SEED)
    spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
    gains = {}
    for dose, noisy in evaluate.simulate_doses(scan, photons, VALIDATION_SEED).items():
        sigma = evaluate.best_gaussian_sigma(noisy, scan.hu)
        model = evaluate.mean_metrics(denoiser(noisy, spacing), scan.hu)["psnr_db"]
        gains[dose] = model - evaluate.mean_metrics(evaluate.gaussian(noisy, sigma), scan.hu)["psnr_db"]
    return gains


def choose(scores: dict[str, dict[str, Any]]) -> str:
    """The rule: eligible by the phantom, then the best worst quarter-dose gain, then tenth
    (training/denoise/LOG.md, "Choosing the training dose mix on training patients"; the loss-balance
    round uses it too).

    ``scores[mix]`` has ``phantom_max_hu`` and ``gains`` ({patient: {dose: dB}}); dict order is
    the order of the rule's table, the last tie-break.
    """
    eligible = [m for m, s in scores.items() if s["phantom_max_hu"] <= MAX_BIAS_HU] or list(scores)

    def worst_quarter(mix: str) -> float:
        return float(min(g["quarter"] for g in scores[mix]["gains"].values()))

    def mean_tenth(mix: str) -> float:
        return float(np.mean([g["tenth"] for g in scores[mix]["gains"].values()]))

    best = max(worst_quarter(m) for m in eligible)
    tied = [m for m in eligible if worst_quarter(m) >= best - TIE_DB]
    top = max(mean_tenth(m) for m in tied)
    return next(m for m in tied if mean_tenth(m) == top)


def choose_restore_scale(worst_deviation_hu: dict[float, float]) -> float:
    """The rule: the largest scale whose worst known-truth deviation is <= 2 HU, else the smallest
    (training/denoise/LOG.md, "Bias against a known truth, and the mean-restore scale")."""
    passing = [scale for scale, worst in worst_deviation_hu.items() if worst <= MAX_BIAS_HU]
    return max(passing) if passing else min(worst_deviation_hu)


def _worst_quarter(score: dict[str, Any]) -> float:
    return float(min(g["quarter"] for g in score["gains"].values()))


def choose_training_scale(current: dict[str, Any], trained: dict[str, Any]) -> str:
    """The rule: the recipe trained through the scale wins only by a clear bias margin
    (training/denoise/LOG.md, "Training through the restore scale").

    Each argument is an ``at_scale`` score; returns ``RESTORE_RECIPE`` or ``TRAINED_RECIPE``.
    """
    less_biased = trained["worst_max_hu"] <= current["worst_max_hu"] - MIN_BIAS_GAIN_HU
    as_good = _worst_quarter(trained) >= _worst_quarter(current) - MAX_QUALITY_LOSS_DB
    return TRAINED_RECIPE if less_biased and as_good else RESTORE_RECIPE


def choose_input_mean_target(current: dict[str, Any], challenger: dict[str, Any]) -> str:
    """The rule of no harm: the input-mean target is adopted for its reason, unless it misses
    2 HU against the input, deviates from the input clearly more, or costs quality
    (training/denoise/LOG.md, "Training towards the input's expected image").

    Each argument is an ``at_scale`` score; returns ``RESTORE_RECIPE`` or ``INPUT_MEAN_RECIPE``.
    """
    worst = challenger["worst_input_max_hu"]
    no_worse = worst <= MAX_BIAS_HU and worst <= current["worst_input_max_hu"] + MAX_BIAS_LOSS_HU
    as_good = _worst_quarter(challenger) >= _worst_quarter(current) - MAX_QUALITY_LOSS_DB
    return INPUT_MEAN_RECIPE if no_worse and as_good else RESTORE_RECIPE


#: Each challenger round's recipe and its rule.
CHALLENGES: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], str]]] = {
    TRAINED_ROUND: (TRAINED_RECIPE, choose_training_scale),
    INPUT_MEAN_ROUND: (INPUT_MEAN_RECIPE, choose_input_mean_target),
}


def at_scale(base: Denoiser, scale: float, validation: dict[str, Scan], label: str) -> dict[str, Any]:
    """Known-truth deviation and gains over the oracle Gaussian per validation patient, ``base``
    run through the mean restore at ``scale`` mm. ``worst_max_hu`` is the worse of the two
    references (against the input and against the truth) over the patients: a scale is chosen
    only where both meet the rule (training/denoise/LOG.md, "The input's own systematic error as the reference");
    ``worst_input_max_hu`` the worst against the input alone."""
    denoiser = Denoiser(base.network, replace(base.preprocessing, restore_mean_sigma_mm=scale), "cpu")
    bias = {name: evaluate.known_truth_deviation(denoiser, scan, VALIDATION_SEED) for name, scan in validation.items()}
    gains = {name: gain_over_gaussian(denoiser, scan) for name, scan in validation.items()}
    print(f"{label}, restore {scale} mm: max against the input / the truth "
          + json.dumps({name: [round(b["max_hu"], 2), round(b["truth_max_hu"], 2)] for name, b in bias.items()})
          + ", gains "
          + json.dumps({name: {d: round(v, 2) for d, v in g.items()} for name, g in gains.items()}), flush=True)
    worst = max(max(b["max_hu"], b["truth_max_hu"]) for b in bias.values())
    return {"known_truth_deviation": bias, "gains": gains, "worst_max_hu": worst,
            "worst_input_max_hu": max(b["max_hu"] for b in bias.values())}


def restore_scale_scores(network: Path, validation: dict[str, Scan]) -> dict[float, dict[str, Any]]:
    """Per scale: ``at_scale``'s scores of one network."""
    base = Denoiser.load(network, "cpu")
    return {scale: at_scale(base, scale, validation, network.name) for scale in RESTORE_SCALES_MM}


def split(scans: dict[str, Scan], plan: Round) -> tuple[list[Scan], dict[str, Scan]]:
    """Training scans and validation parts (at most ``VALIDATION_SLICES`` each) for a round."""
    fitting, validation = [], {}
    for name, scan in scans.items():
        if name in plan.whole:
            validation[name] = scan
        elif name in plan.slab:
            n = int(len(scan.hu) * SLAB_SHARE)
            fitting.append(scan.subset(slice(0, n)))
            validation[f"{name} (last {SLAB_SHARE:.0%})"] = scan.subset(slice(len(scan.hu) - n, None))
        else:
            fitting.append(scan)
    return fitting, {name: evaluate.evaluation_slices(scan, VALIDATION_SLICES) for name, scan in validation.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA_ROOT, help="the shared data folder (DICOM)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--round", choices=sorted([*ROUNDS, RESTORE_ROUND, *CHALLENGES]), default="dose-mix")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES),
                        help="a subset of the round's, for a quick check of the whole run (the rule compares all)")
    parser.add_argument("--network", type=Path,
                        help=f"{RESTORE_ROUND} and the challenger rounds: round 2's validation network, if already trained")
    args = parser.parse_args(argv)
    started = time.monotonic()
    plan = ROUNDS[RESTORE_SPLIT if args.round in (RESTORE_ROUND, *CHALLENGES) else args.round]

    scans = {name: thin_slices(load_scan(args.data, name), SLICE_GAP_MM) for name in TRAINING}
    fitting, validation = split(scans, plan)
    record: dict[str, Any]
    if args.round == RESTORE_ROUND:
        network = args.network or _train(fitting, RESTORE_RECIPE, args)[0]
        scale_scores = restore_scale_scores(network, validation)
        chosen: object = choose_restore_scale({s: v["worst_max_hu"] for s, v in scale_scores.items()})
        record = {"network": str(network), "scores": {str(s): v for s, v in scale_scores.items()}}
    elif args.round in CHALLENGES:
        recipe, rule = CHALLENGES[args.round]
        current = args.network or _train(fitting, RESTORE_RECIPE, args)[0]
        challenger, training = _train(fitting, recipe, args)
        scores = {name: at_scale(Denoiser.load(folder, "cpu"), SHIPPED_RESTORE_SCALE_MM, validation, name)
                  for name, folder in ((RESTORE_RECIPE, current), (recipe, challenger))}
        chosen = rule(scores[RESTORE_RECIPE], scores[recipe])
        record = {"networks": {RESTORE_RECIPE: str(current), recipe: str(challenger)}, "scores": scores,
                  "training": training}
    else:
        scores = {name: _score(fitting, validation, name, args) for name in args.recipes or plan.recipes}
        chosen = choose(scores)
        record = {"scores": scores}
    (args.out / "choice.json").write_text(json.dumps({
        "command": training_command("training.denoise.choose_mix", argv),
        "round": args.round, "validation_whole": list(plan.whole), "validation_slab": list(plan.slab),
        "slab_share": SLAB_SHARE, "validation_slices": VALIDATION_SLICES, "seed": VALIDATION_SEED,
        **record, "chosen": chosen, "seconds": round(time.monotonic() - started),
    }, indent=2) + "\n")
    print(f"chosen: {chosen} ({time.monotonic() - started:.0f} s)", flush=True)


def _train(fitting: list[Scan], recipe: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Train ``recipe`` on the round's training part and write it to ``args.out/<recipe>``."""
    trained = train_network(fitting, RECIPES[recipe], seed=0, iterations=args.iterations, device="cpu")
    write_weights(args.out / recipe, trained.network, trained.arch, trained.prep)
    return args.out / recipe, trained.record


def _score(fitting: list[Scan], validation: dict[str, Scan], recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe and score it: water cylinder and gains over the oracle Gaussian."""
    folder, training = _train(fitting, recipe, args)
    denoiser = Denoiser.load(folder, "cpu")
    phantom = evaluate.water_phantom_deviation(denoiser, PHANTOM_KVP, PHANTOM_DRAWS, seed=PHANTOM_KVP)
    gains = {patient: gain_over_gaussian(denoiser, scan) for patient, scan in validation.items()}
    print(f"{recipe}: phantom {phantom['max_hu']:.2f} HU, gains over the oracle Gaussian "
          + json.dumps({p: {d: round(v, 2) for d, v in g.items()} for p, g in gains.items()}), flush=True)
    return {"phantom_max_hu": phantom["max_hu"], "gains": gains, "training": training}


if __name__ == "__main__":
    main()
