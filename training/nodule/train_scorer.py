"""Train the candidate scorer leave-one-patient-out, and the shipped scorer on all patients.

    python -m training.nodule.train_scorer --out DIR [--jobs 2] [--device cuda] [--synthetic 2] [--epochs 15]
        [--nodules 6] [--copy-positives all|inserted] [--synthetic-ground-glass plateau|lifted]
        [--report outer|inner-mean] [--reconstructions] [--small 0]

The shipped ``scorer_weights/`` came from ``--report inner-mean --synthetic 6 --nodules 8
--copy-positives inserted --threads 1 --jobs 2`` (training/nodule/LOG.md,
"Synthetic copies add nodules, not the real lesions again").

1. **Data** (cached in ``DIR/candidates.npz``): every series of the five real patients
   (``patients``) on the 2 mm candidate grid, plus ``--synthetic`` copies of each with
   ``--nodules`` synthetic nodules inserted there (``synthesis``, 4-60 mm, weighted to the small
   ones), and ``--small`` more of 4-12 mm (``synthesis.sample_small_spec``: mostly solid, beside
   vessels, pleura and fissures as often as free). The candidate stage runs on each; a candidate
   is positive when its centre lies in a real or inserted lesion's box grown by 2 mm, *ignored*
   (never a negative) when it lies in an ignore region of the LIDC readers, negative otherwise.
   Synthetic copies keep their positives (``--copy-positives inserted``: only their inserted
   nodules) and ``NEGATIVES_PER_COPY`` random negatives. Every series thinner than ``THICK_MM``
   also enters as slab averages about 5 and 8 mm thick (``slab_factors``): real series of their
   patient, held out with it, counted with the real series when a threshold is set; the held-out
   numbers are on the series as acquired. ``--reconstructions``: each synthetic copy is first
   reconstructed anew (``reconstruction``: the other kernel or not, a thicker slice or not, drawn
   at random), and every real series also enters once as the other kernel (thicker or not),
   counted like the slab series: so the scorer and its nested threshold both see the kernels and
   thicknesses a series could have had.
2. **Folds**: for each patient, a scorer is trained on the other four (their real and synthetic
   series) and scores the held-out patient's real series (and, for the FROC on inserted
   nodules, its synthetic copies). The operating point is the nested rule (training/nodule/LOG.md,
   "Nested operating point"): four inner scorers, each without the held-out patient and one
   training patient, score that training patient's real series; the threshold is the lowest
   score at which these out-of-fold scores have at most ``TARGET_FP`` false positives per scan.
3. **Shipped scorer**: trained on all five patients; its threshold is the median of the five
   folds' nested thresholds (``shipped_threshold``); written with
   ``params.toml`` and ``training.json`` (every fold's numbers) to ``DIR``, each fold's scorer
   as a model folder ``DIR/folds/PATIENT`` (CI runs each real patient through the scorer that did not see it).

Each epoch takes every positive (flipped and rotated at random) and three times as many random
negatives; ``--positives lesions`` instead draws as many positives, each lesion equally often
(``lesion_weights``: the rejected run of training/nodule/LOG.md, "One lesion, one vote"). ``--positives
choose`` trains both and lets each fold choose between them and their mean on its inner folds'
out-of-fold scores (``choose``; training/nodule/LOG.md, "Weighting chosen on the inner folds").
``--report inner-mean`` reports each held-out patient with the mean of its four inner scorers, and
the shipped folder with the mean of all of them, instead of scorers trained on more patients than
the threshold's (training/nodule/LOG.md, "The scorer whose threshold is set is the scorer that reports").
The content of each epoch depends only on ``--seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from scipy import ndimage as ndi

from pipelines.nodule import scorer
from training.data_folder import DATA_ROOT
from training.nodule import synthesis
from training.record import training_command

if TYPE_CHECKING:  # imported where used: training from a cached candidates.npz needs no DICOM stack
    from pipelines.nodule.candidates import CandidateScan
    from pipelines.nodule.grid import ModelGrid
    from training.nodule.patients import RealLesion, Series

#: A lesion to find: LPS box, diameter (mm) and label.
Truth = tuple[np.ndarray, float, str]

#: The operating point, fixed before any held-out number was seen (model card).
TARGET_FP = 2.0
NEGATIVE_RATIO = 3
NEGATIVES_PER_COPY = 150
MIN_LESION_MM = 10.0
#: Thin-slice series also train as slab averages this thick (training/nodule/LOG.md, "Thick-slice training series").
SLAB_TARGETS_MM = (5.0, 8.0)
#: What a synthetic copy's positives are (``copy_labels``).
COPY_POSITIVES = ("all", "inserted")
THICK_MM = 5.0
#: The FROC's false-positive rates and the hit rule, as ``evaluate.FP_RATES`` and
#: ``HIT_MARGIN_MM`` (a test checks they agree). Not imported from there: training from
#: a cached ``candidates.npz`` needs only torch and numpy, so it runs on a GPU machine that has
#: no DICOM or MONAI stack.
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
HIT_MARGIN_MM = 2.0
#: The two ways to draw each epoch's positives (``train``), and what a fold may choose from with
#: ``--positives choose``, in the tie order of training/nodule/LOG.md, "Weighting chosen on the inner folds":
#: "mean" averages the two scorers' probabilities.
WEIGHTINGS = ("candidates", "lesions")
CHOICES = ("candidates", "mean", "lesions")
#: A new cache is built with the candidate stage's ground-glass components; the cache records it
#: and every scorer folder trained from it says so (``[candidates] ground_glass``), so the pipeline
#: runs the stage its scorer saw. A cache without the record predates the component.
GROUND_GLASS = True
#: What reports for a held-out patient (``--report``): its outer scorer, or the mean of its inner
#: scorers, whose out-of-fold scores set its threshold (model card).
REPORTERS = ("outer", "inner-mean")


def build(data_dir: Path, copies: int, nodules: int, seed: int, copy_positives: str = "all",
          ground_glass: str = "plateau", reconstructions: bool = False, small: int = 0) -> dict[str, np.ndarray]:
    """All candidates of the real series, their slab averages and synthetic copies, with labels
    and inputs. The slab series come last, so the rest is drawn from the same random stream as
    before they existed. ``copy_positives`` "inserted": a copy's candidates on the real lesions
    are left out (``copy_labels``); ``ground_glass``: how the copies' ground glass is rendered
    (``synthesis.GROUND_GLASS_RENDERINGS``; the same nodules at the same places either way).
    ``reconstructions``: the copies reconstructed anew and each real series once more as the
    other kernel, last, with their own random stream (``reconstructed``). ``small``: small nodules
    added to each copy after its ``nodules`` (``_with_nodules``)."""
    from training.nodule import data, patients

    rng = np.random.default_rng(seed)
    stream = np.random.default_rng([seed, RECONSTRUCTION_STREAM]) if reconstructions else None
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("patches", "scalars", "label", "patient", "series", "copy",
                                                          "slab", "lesion", "diameter", "reconstructed")}
    lesion_table: list[dict[str, Any]] = []
    real = patients.all_series(data_dir)
    for series in real:
        for copy in range(copies + 1):
            _add_scan(parts, lesion_table, reconstructed(series, stream) if copy else series, copy, 1, nodules, rng,
                      copy_positives, ground_glass, anew=bool(copy) and stream is not None, small=small)
    for series in real:
        for factor in slab_factors(series.volume.spacing[2]):
            thick = dataclasses.replace(series, volume=data.slab_average(series.volume, factor),
                                        name=f"{series.name} (slab {factor})")
            _add_scan(parts, lesion_table, thick, 0, factor, nodules, rng)
    for series in real if stream is not None else ():
        _add_scan(parts, lesion_table, reconstructed(series, stream, other_kernel=True), 0, 1, nodules, rng, anew=True)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["lesions"] = np.array(json.dumps(lesion_table))
    arrays["ground_glass"] = np.array(GROUND_GLASS)
    arrays["built_with"] = np.array(json.dumps(build_arguments(copies, nodules, seed, copy_positives, ground_glass,
                                                               reconstructions, small)))
    return arrays


def reconstructed(series: Series, rng: np.random.Generator | None, other_kernel: bool = False) -> Series:
    """The series as another reconstruction of its acquisition would show it (``reconstruction.draw``;
    ``other_kernel``: always the other kernel), named for it; as it is when ``rng`` is None."""
    from training.nodule import reconstruction

    if rng is None:
        return series
    drawn = reconstruction.draw(rng, series.volume)
    if other_kernel:
        drawn = dataclasses.replace(drawn, kernel=reconstruction.other_kernel(series.volume))
    thickness = "" if drawn.thickness_mm is None else f", {drawn.thickness_mm:g} mm"
    return dataclasses.replace(series, volume=reconstruction.reconstruct(series.volume, drawn, rng),
                               name=f"{series.name} ({drawn.kernel}{thickness})")


def build_arguments(copies: int, nodules: int, seed: int, copy_positives: str,
                    ground_glass: str = "plateau", reconstructions: bool = False, small: int = 0) -> dict[str, object]:
    """The arguments a cache was built with, as it records them (``cache_mismatch``); ``harmonized``:
    every series was softened as the pipeline softens it (``harmonize``) before its candidates."""
    return {"synthetic": copies, "nodules": nodules, "seed": seed, "copy_positives": copy_positives,
            "synthetic_ground_glass": ground_glass, "reconstructions": reconstructions,
            "harmonized": True, "small": small}


#: What a record from before an argument existed was built with.
RECORD_DEFAULTS: dict[str, object] = {"synthetic_ground_glass": "plateau", "reconstructions": False,
                                      "harmonized": False, "small": 0}
#: ``build``'s second random stream (``--reconstructions``), beside ``--seed``'s.
RECONSTRUCTION_STREAM = 1


def cache_mismatch(arrays: dict[str, np.ndarray], wanted: dict[str, object]) -> str | None:
    """Why a cache in DIR does not hold the data the command asks for, or None. A cache from before
    the record (like the one the runs of training/nodule/LOG.md reuse by copying it into DIR) is taken as it is."""
    if "built_with" not in arrays:
        return None
    built = json.loads(str(arrays["built_with"]))
    built = RECORD_DEFAULTS | built
    differ = [f"--{k.replace('_', '-')} {built.get(k)} (asked {v})" for k, v in wanted.items() if built.get(k) != v]
    return None if not differ else ("the cached candidates.npz was built with " + ", ".join(differ)
                                    + ": use another --out, or delete the cache to rebuild it")


def slab_factors(thickness_mm: float) -> tuple[int, ...]:
    """Slab averages that make a thin-slice series about 5 and 8 mm thick (model card); none for
    a series already at ``THICK_MM`` or more."""
    if thickness_mm >= THICK_MM:
        return ()
    return tuple(sorted({max(2, round(target / thickness_mm)) for target in SLAB_TARGETS_MM}))


def _add_scan(parts: dict[str, list[np.ndarray]], lesion_table: list[dict[str, Any]], series: Series, copy: int,
              slab: int, nodules: int, rng: np.random.Generator, copy_positives: str = "all",
              ground_glass: str = "plateau", anew: bool = False, small: int = 0) -> None:
    """One scan's candidates (``series`` a ``patients.Series``; ``copy`` > 0: with synthetic nodules;
    ``anew``: reconstructed anew, ``reconstructed``)."""
    from pipelines.nodule import candidates
    from pipelines.nodule.grid import to_model_grid
    from pipelines.nodule.harmonize import harmonize

    grid = to_model_grid(harmonize(series.volume).volume, (candidates.GRID_MM,) * 3)
    inserted: list[Truth]
    if copy == 0:
        scan_grid, inserted = grid, []
    else:
        scan_grid, inserted = _with_nodules(grid, series.lesions, nodules, rng, ground_glass, small)
    started = time.process_time()
    scan = candidates.find_on_grid(scan_grid, ground_glass=GROUND_GLASS)
    truth = [(les.lps_box, les.diameter_mm, f"{series.name}: {les.label}") for les in series.lesions] + inserted
    labels, which = _labels(scan, truth, series.ignore)
    keep = np.arange(len(labels))
    if copy > 0:  # synthetic copies: positives and a sample of negatives
        labels = copy_labels(labels, which, len(series.lesions), copy_positives)
        negatives = np.flatnonzero(labels == 0)
        sampled = rng.choice(negatives, size=min(NEGATIVES_PER_COPY, len(negatives)), replace=False)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == 1), sampled]))
    kept = [scan.candidates[n] for n in keep]
    p, s = scorer.inputs(scan, kept)
    base = len(lesion_table)
    lesion_table += [{"series": series.name, "patient": series.patient, "copy": copy, "slab": slab,
                      "reconstructed": anew, "label": t[2], "diameter_mm": round(float(t[1]), 1)} for t in truth]
    parts["patches"].append(p)
    parts["scalars"].append(s)
    parts["label"].append(labels[keep])
    parts["lesion"].append(np.where(which[keep] >= 0, which[keep] + base, -1))
    parts["diameter"].append(np.array([c.diameter_mm for c in kept], dtype=np.float32))
    for key, value in (("patient", series.patient), ("series", series.name), ("copy", copy), ("slab", slab),
                       ("reconstructed", anew)):
        parts[key].append(np.full(len(keep), value))
    print(f"{series.name} copy {copy}: {len(scan.candidates)} candidates, {int((labels == 1).sum())} on "
          f"lesions, {int((labels == -1).sum())} ignored ({time.process_time() - started:.0f} CPU s)", flush=True)


def copy_labels(labels: np.ndarray, which: np.ndarray, real_lesions: int, copy_positives: str) -> np.ndarray:
    """A synthetic copy's labels. With "inserted", its candidates on the real lesions (the first
    ``real_lesions`` of the truth) become ignored: the series as acquired already has them, and
    every copy repeating them made one patient's mass most of the positives (training/nodule/LOG.md,
    "Synthetic copies add nodules, not the real lesions again")."""
    if copy_positives == "all":
        return labels
    return np.where((labels == 1) & (which >= 0) & (which < real_lesions), np.int8(-1), labels)


def _with_nodules(grid: ModelGrid, real: list[RealLesion], count: int, rng: np.random.Generator,
                  ground_glass: str = "plateau", small: int = 0) -> tuple[ModelGrid, list[Truth]]:
    """A copy of the grid (a ``ModelGrid``) with ``count`` synthetic nodules in its lungs, then
    ``small`` small ones (``synthesis.sample_small_spec``), away from each other and the real
    lesions (``patients.RealLesion``)."""
    from pipelines.nodule.grid import ModelGrid
    from pipelines.nodule.lungs import lung_mask

    hu = grid.hu.copy()
    spacing = np.asarray(grid.spacing)
    lungs = lung_mask(hu, slice_axis=2)
    depth = ndi.distance_transform_edt(lungs, sampling=spacing)  # once per copy, not per nodule
    avoid = [(grid.lps_to_xyz(les.lps_box.mean(axis=0)), float(np.max(les.lps_box[1] - les.lps_box[0])) / 2)
             for les in real]
    truths: list[Truth] = []
    for draw, wanted in ((synthesis.sample_spec, count), (synthesis.sample_small_spec, small)):
        placed = 0
        for _ in range(wanted * 5):
            if placed == wanted:
                break
            spec = draw(rng)
            centre = synthesis.pick_center(lungs, spacing, spec, rng, avoid, depth_mm=depth)
            if centre is None:
                continue
            inserted = synthesis.insert(hu, spacing, centre, spec, rng, ground_glass)
            b = inserted.box
            corners = np.array([[x, y, z] for x in (b[0], b[3]) for y in (b[1], b[4]) for z in (b[2], b[5])])
            lps = grid.xyz_to_lps(corners)
            truths.append((np.array([lps.min(axis=0), lps.max(axis=0)]), spec.diameter_mm, f"inserted {spec.kind}"))
            avoid.append((centre, spec.diameter_mm / 2))
            placed += 1
    return ModelGrid(hu=hu, origin=grid.origin, spacing=grid.spacing, direction=grid.direction), truths


def _labels(scan: CandidateScan, truth: list[Truth], ignore: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: 1 on a lesion, -1 in an ignore region, 0 otherwise; and which lesion (-1 none)."""
    labels = np.zeros(len(scan.candidates), dtype=np.int8)
    which = np.full(len(scan.candidates), -1, dtype=np.int32)
    for n, c in enumerate(scan.candidates):
        centre = scan.center_lps(c)
        hit = next((t for t, (box, _, _) in enumerate(truth) if _inside(centre, box, HIT_MARGIN_MM)), None)
        if hit is not None:
            labels[n], which[n] = 1, hit
        elif any(_inside(centre, box, 0.0) for box in ignore):
            labels[n] = -1
    return labels, which


def _inside(point: np.ndarray, box: np.ndarray, margin: float) -> bool:
    return bool(np.all(point >= box[0] - margin) and np.all(point <= box[1] + margin))


def train(arrays: dict[str, np.ndarray], rows: np.ndarray, epochs: int, seed: int, device: str,
          per_lesion: bool = False, batch: int = 32, lr: float = 2e-3) -> scorer.ScorerNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = scorer.ScorerNet().to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    labels = arrays["label"][rows]
    positives, negatives = rows[labels == 1], rows[labels == 0]
    steps = epochs * int(np.ceil(len(positives) * (1 + NEGATIVE_RATIO) / batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    weights = lesion_weights(arrays["lesion"][positives]) if per_lesion else None
    for _ in range(epochs):
        drawn = positives if weights is None else rng.choice(positives, size=len(positives), p=weights)
        chosen = np.concatenate([drawn, rng.choice(negatives, size=len(positives) * NEGATIVE_RATIO)])
        rng.shuffle(chosen)
        for start in range(0, len(chosen), batch):
            take = np.sort(chosen[start:start + batch])
            patches = scorer.as_input(_augment(arrays["patches"][take], rng), device)
            scalars = torch.from_numpy(arrays["scalars"][take]).to(device)
            target = torch.from_numpy((arrays["label"][take] == 1).astype(np.float32)).to(device)
            loss = loss_fn(net(patches, scalars), target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return net


def lesion_weights(lesion: np.ndarray) -> np.ndarray:
    """Drawing probabilities for positive candidates (``lesion``: the lesion each lies on) that
    draw every lesion equally often, however many candidates the candidate stage put on it."""
    _, which, count = np.unique(lesion, return_inverse=True, return_counts=True)
    weights = 1.0 / count[which]
    probabilities: np.ndarray = weights / weights.sum()
    return probabilities


def _augment(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips of each axis and a random in-plane transpose, one draw per batch."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            patches = np.flip(patches, axis=axis)
    if rng.random() < 0.5:
        patches = np.swapaxes(patches, 2, 3)
    return np.ascontiguousarray(patches)


def operating_threshold(scores: np.ndarray, labels: np.ndarray, scans: int, rate: float = TARGET_FP) -> float:
    """The lowest score at which the false positives (label 0) stay within ``rate`` per scan."""
    negatives = np.sort(scores[labels == 0])[::-1]
    allowed = int(np.floor(rate * scans))
    if allowed >= len(negatives):
        return 0.0
    return float(np.nextafter(negatives[allowed], 1.0))


def held_out_numbers(arrays: dict[str, np.ndarray], rows: np.ndarray, scores: np.ndarray, threshold: float,
                     lesions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per real lesion >= 10 mm: best score and found at the threshold; FP per scan; FROC on the
    inserted nodules of the held-out patient's synthetic copies."""
    as_acquired = (arrays["copy"][rows] == 0) & (arrays["slab"][rows] == 1) & ~reconstructed_rows(arrays, rows)
    real = rows[as_acquired]  # the series as acquired
    real_scores = scores[np.searchsorted(rows, real)]
    table = []
    for index in sorted({int(i) for i in arrays["lesion"][real] if i >= 0}):
        lesion = lesions[index]
        if lesion["diameter_mm"] < MIN_LESION_MM:
            continue
        on = arrays["lesion"][real] == index
        best = float(real_scores[on].max())
        table.append({**lesion, "best_score": round(best, 4), "found": best >= threshold})
    with_candidate = set(arrays["lesion"][real].tolist())
    for index, lesion in enumerate(lesions):  # lesions without any candidate are misses too
        if (lesion["copy"] == 0 and lesion["slab"] == 1 and not lesion.get("reconstructed", False)
                and lesion["diameter_mm"] >= MIN_LESION_MM
                and lesion["patient"] == arrays["patient"][rows[0]] and index not in with_candidate):
            table.append({**lesion, "best_score": 0.0, "found": False})
    series = sorted(set(arrays["series"][real].tolist()))
    fp = int(((arrays["label"][real] == 0) & (real_scores >= threshold)).sum())
    synthetic = rows[arrays["copy"][rows] > 0]
    froc = _froc(arrays, synthetic, scores[np.searchsorted(rows, synthetic)], lesions)
    return {"lesions": table, "fp_per_scan": fp / max(len(series), 1), "series": series, "froc_inserted": froc}


def reconstructed_rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Which rows come from a series reconstructed anew (``--reconstructions``); none in a cache
    from before the flag."""
    if "reconstructed" not in arrays:
        return np.zeros(len(rows), dtype=bool)
    flags: np.ndarray = arrays["reconstructed"][rows].astype(bool)
    return flags


def _froc(arrays: dict[str, np.ndarray], rows: np.ndarray, scores: np.ndarray, lesions: list[dict[str, Any]]) -> dict[str, float]:
    """Sensitivity on the inserted nodules at each FP rate per synthetic copy (negatives there are
    a sample, ``NEGATIVES_PER_COPY``, so the rates are per sampled copy: an estimate)."""
    if len(rows) == 0:
        return {}
    inserted = [n for n, les in enumerate(lesions) if les["copy"] > 0 and les["patient"] == arrays["patient"][rows[0]]
                and les["label"].startswith("inserted")]
    copies = len({(arrays["series"][r], arrays["copy"][r]) for r in rows})
    result = {}
    for rate in FP_RATES:
        threshold = operating_threshold(scores, arrays["label"][rows], copies, rate)
        found = {int(arrays["lesion"][r]) for r, s in zip(rows, scores) if s >= threshold and arrays["lesion"][r] >= 0}
        result[str(rate)] = round(len(found & set(inserted)) / max(len(inserted), 1), 3)
    return result


@dataclasses.dataclass(frozen=True)
class Task:
    """One scorer to train on ``train_rows``, then to score ``score_rows`` with."""

    train_rows: np.ndarray
    score_rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a task gives back: the scorer's weights (CPU tensors), its scores of ``score_rows``, wall seconds."""

    state: dict[str, torch.Tensor]
    scores: np.ndarray
    seconds: float


#: What a worker process trains from: set before the pool forks, so the arrays are shared, not pickled.
_SHARED: dict[str, Any] = {}


def _run(item: tuple[tuple[str, ...], Task]) -> tuple[tuple[str, ...], Trained]:
    """One task; its key starts with the weighting of its positives (``WEIGHTINGS``)."""
    key, task = item
    arrays, epochs, seed, device = (_SHARED[k] for k in ("arrays", "epochs", "seed", "device"))
    started = time.time()
    net = train(arrays, task.train_rows, epochs, seed, device, per_lesion=key[0] == "lesions")
    scores = scorer.score(net, arrays["patches"][task.score_rows], arrays["scalars"][task.score_rows], device)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return key, Trained(state, scores, time.time() - started)


def run_tasks(tasks: dict[tuple[str, ...], Task], jobs: int, done: Path | None = None) -> dict[tuple[str, ...], Trained]:
    """Every task, the largest first; ``jobs`` processes of one thread each (inline when 1).

    The scorers are independent, and one small network trains no faster on two threads than on one.
    ``done``: a folder where each finished task is kept (``_kept``), so a killed run resumes there."""
    results = {key: _kept(done, key) for key in tasks if done is not None and _kept_path(done, key).is_file()}
    order = sorted(((k, t) for k, t in tasks.items() if k not in results), key=lambda kv: -len(kv[1].train_rows))
    with contextlib.ExitStack() as stack:
        finished: Iterable[tuple[tuple[str, ...], Trained]] = map(_run, order)
        if jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(
                jobs, initializer=torch.set_num_threads, initargs=(1,)))
            finished = pool.imap_unordered(_run, order)
        for key, trained in finished:
            if done is not None:
                done.mkdir(parents=True, exist_ok=True)
                torch.save(dataclasses.asdict(trained), _kept_path(done, key))
            results[key] = trained
    return results


def _kept_path(done: Path, key: tuple[str, ...]) -> Path:
    return done / f"{'-'.join(key)}.pt"


def _kept(done: Path, key: tuple[str, ...]) -> Trained:
    """A task finished by an earlier run of the same command (``run_tasks``)."""
    kept = torch.load(_kept_path(done, key), map_location="cpu", weights_only=False)
    return Trained(kept["state"], np.asarray(kept["scores"]), float(kept["seconds"]))


def fold_tasks(arrays: dict[str, np.ndarray], usable: np.ndarray, final: bool) -> dict[tuple[str, ...], Task]:
    """The nested leave-one-patient-out (training/nodule/LOG.md, "Nested operating point").

    (P,): the outer scorer without patient P, scoring all of P's rows; (P, Q): an inner scorer
    without P and Q, scoring Q's real series; (): the shipped scorer on every patient."""
    patient = arrays["patient"][usable]
    real = arrays["copy"][usable] == 0
    tasks: dict[tuple[str, ...], Task] = {}
    for held_out in dict.fromkeys(patient.tolist()):  # the patients in build order
        tasks[(held_out,)] = Task(usable[patient != held_out], usable[patient == held_out])
        for left_out in dict.fromkeys(patient[patient != held_out].tolist()):
            tasks[(held_out, left_out)] = Task(usable[(patient != held_out) & (patient != left_out)],
                                               usable[(patient == left_out) & real])
    if final:
        tasks[()] = Task(usable, usable[:0])
    return tasks


def nested_threshold(arrays: dict[str, np.ndarray], rows: np.ndarray, scores: np.ndarray) -> float:
    """The operating point on the scores of ``rows`` (real series only), each series one scan. The
    nested rule passes out-of-fold scores: each series scored by a scorer that did not see its patient."""
    return operating_threshold(scores, arrays["label"][rows], len(set(arrays["series"][rows].tolist())))


def choice_scores(results: dict[tuple[str, ...], Trained], fold: tuple[str, ...], choice: str) -> np.ndarray:
    """The scores of one fold task (``fold`` a ``fold_tasks`` key) under a choice of ``CHOICES``."""
    if choice == "mean":
        mean: np.ndarray = np.mean([results[(w, *fold)].scores for w in WEIGHTINGS], axis=0)
        return mean
    return results[(choice, *fold)].scores


def choose(arrays: dict[str, np.ndarray], rows: np.ndarray, scores: dict[str, np.ndarray],
           lesions: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    """The choice of weighting of training/nodule/LOG.md, "Weighting chosen on the inner folds", on
    out-of-fold scores of real series (``rows``; ``scores`` per choice, in tie order): the most
    lesion-series >= 10 mm found at each choice's nested threshold, then the fewest false
    positives, then the first. Returns the choice and every choice's numbers."""
    numbers = {}
    for choice, score in scores.items():
        threshold = nested_threshold(arrays, rows, score)
        found, total = _lesion_series_found(arrays["lesion"][rows], score, threshold, lesions)
        false_positives = int(((arrays["label"][rows] == 0) & (score >= threshold)).sum())
        numbers[choice] = {"threshold": threshold, "lesion_series_found": found, "lesion_series": total,
                           "false_positives": false_positives}
    best = min(numbers, key=lambda c: (-numbers[c]["lesion_series_found"], numbers[c]["false_positives"]))
    return best, numbers


def _lesion_series_found(lesion: np.ndarray, scores: np.ndarray, threshold: float,
                         lesions: list[dict[str, Any]]) -> tuple[int, int]:
    """(found, with a candidate) over the lesions >= 10 mm that have candidates here: each entry of
    ``lesions`` is one lesion in one series, found when one of its candidates reaches the threshold."""
    on = [int(i) for i in np.unique(lesion) if i >= 0 and lesions[i]["diameter_mm"] >= MIN_LESION_MM]
    found = sum(bool(scores[lesion == i].max() >= threshold) for i in on)
    return found, len(on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic", type=int, default=2, help="synthetic copies of each real series")
    parser.add_argument("--nodules", type=int, default=6, help="nodules inserted per copy")
    parser.add_argument("--small", type=int, default=0,
                        help="small nodules (4-12 mm, synthesis.sample_small_spec) added per copy after --nodules")
    parser.add_argument("--copy-positives", choices=COPY_POSITIVES, default="all",
                        help="positives of a synthetic copy: its inserted nodules and the real lesions again, "
                             "or only the inserted nodules (model card)")
    parser.add_argument("--synthetic-ground-glass", choices=synthesis.GROUND_GLASS_RENDERINGS, default="plateau",
                        help="how the copies' ground glass is rendered: a smooth plateau, or the scan's own "
                             "lung lifted to its density (training/nodule/LOG.md, "
                             "\"Synthetic ground glass keeps the scan's own lung\")")
    parser.add_argument("--reconstructions", action="store_true",
                        help="reconstruct each synthetic copy anew (kernel, slice thickness) and add every real "
                             "series once as the other kernel (training/nodule/reconstruction.py)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--positives", choices=(*WEIGHTINGS, "choose"), default="candidates",
                        help="each epoch: every positive candidate, or as many drawn one lesion one vote; "
                             "or train both and choose per fold (training/nodule/LOG.md, "
                             "\"Weighting chosen on the inner folds\")")
    parser.add_argument("--report", choices=REPORTERS, default="outer",
                        help="what reports for a held-out patient: its outer scorer, or its inner scorers' mean")
    parser.add_argument("--jobs", type=int, default=1, help="scorers trained at once, one process and thread each (CPU)")
    parser.add_argument("--folds-only", action="store_true", help="skip the shipped model")
    parser.add_argument("--held-out", nargs="+", default=[],
                        help="only the folds that hold out these patients (a quick check before the full run, "
                             "which resumes from DIR/tasks/); their folders are written, the shipped one is not")
    parser.add_argument("--data-only", action="store_true",
                        help="build DIR/candidates.npz and stop (to carry it to a GPU machine)")
    args = parser.parse_args()
    if args.report == "inner-mean" and args.positives == "choose":
        parser.error("--report inner-mean takes one weighting of the positives, not --positives choose")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "candidates.npz"
    started = time.time()
    if cache.is_file():
        arrays = dict(np.load(cache))
        mismatch = cache_mismatch(arrays, build_arguments(args.synthetic, args.nodules, args.seed, args.copy_positives,
                                                          args.synthetic_ground_glass, args.reconstructions,
                                                          args.small))
        if mismatch:
            parser.error(mismatch)
    else:
        arrays = build(args.data, args.synthetic, args.nodules, args.seed, args.copy_positives,
                       args.synthetic_ground_glass, args.reconstructions, args.small)
        # Widened for mypy only: numpy's stub has allow_pickle: bool beside **kwds, which any str-keyed dict could fill.
        np.savez_compressed(cache, **cast(dict[str, Any], arrays))
    if args.data_only:
        return
    lesions = json.loads(str(arrays["lesions"]))
    ground_glass = bool(arrays.get("ground_glass", False))
    print(f"data: {len(arrays['label'])} candidates, {int((arrays['label'] == 1).sum())} positive "
          f"({time.time() - started:.0f} s)", flush=True)
    usable = np.flatnonzero(arrays["label"] >= 0)
    folds_of = fold_tasks(arrays, usable, final=not args.folds_only)
    choices = CHOICES if args.positives == "choose" else (args.positives,)
    weightings = [w for w in WEIGHTINGS if w in choices or "mean" in choices]
    # With --report inner-mean only the inner scorers report, so the outer and all-patient ones are not trained.
    tasks = {(w, *key): task for w in weightings for key, task in folds_of.items()
             if args.report == "outer" or len(key) == 2}
    _SHARED.update(arrays=arrays, epochs=args.epochs, seed=args.seed, device=args.device)
    if args.held_out:
        tasks = {k: t for k, t in tasks.items() if len(k) > 1 and k[1] in args.held_out}
    results = run_tasks(tasks, args.jobs, args.out / "tasks")
    folds, out_of_fold = [], []
    for key in (k for k in folds_of if len(k) == 1 and (not args.held_out or k[0] in args.held_out)):
        held_out = key[0]
        inner = [k for k in folds_of if len(k) == 2 and k[0] == held_out]
        inner_rows = np.concatenate([folds_of[k].score_rows for k in inner])
        chosen, choice_numbers = choose(arrays, inner_rows, {
            c: np.concatenate([choice_scores(results, k, c) for k in inner]) for c in choices}, lesions)
        threshold = choice_numbers[chosen]["threshold"]
        test_rows = folds_of[key].score_rows
        if args.report == "inner-mean":
            outer_nets = _inner_members(results, inner, chosen)
            outer_scores = {chosen: scorer.mean_score(list(outer_nets.values()), arrays["patches"][test_rows],
                                                      arrays["scalars"][test_rows], args.device)}
        else:
            outer_nets = _members(results, key, chosen)
            outer_scores = {c: choice_scores(results, key, c) for c in choices}
        numbers = held_out_numbers(arrays, test_rows, outer_scores[chosen], threshold, lesions)
        # CI runs each patient through its fold.
        write_folder(args.out / "folds" / held_out, outer_nets, threshold, ground_glass)
        real = arrays["copy"][test_rows] == 0
        out_of_fold.append((test_rows[real], {c: s[real] for c, s in outer_scores.items()}))
        folds.append({"held_out": held_out, "choice": chosen, "threshold": threshold, "inner_choices": choice_numbers,
                      "threshold_first_rule": _threshold_on(outer_nets, arrays, folds_of[key].train_rows, args.device),
                      "seconds": sum(round(results[(w, *key)].seconds) for w in weightings if (w, *key) in results),
                      "inner_seconds": [sum(round(results[(w, *k)].seconds) for w in weightings) for k in inner],
                      **numbers})
        found = sum(r["found"] for r in numbers["lesions"])
        print(f"fold {held_out}: chose {chosen} ({_choice_line(choice_numbers)}), nested threshold {threshold:.4f} "
              f"(first rule {folds[-1]['threshold_first_rule']:.4f}), lesions >= 10 mm found "
              f"{found}/{len(numbers['lesions'])}, {numbers['fp_per_scan']:.1f} FP/scan, "
              f"FROC inserted {numbers['froc_inserted']}", flush=True)
        for row in numbers["lesions"]:
            print(f"    {row['label']} {row['diameter_mm']} mm: best {row['best_score']:.3f} found={row['found']}")
    record: dict[str, Any] = {"command": training_command("training.nodule.train_scorer"),
                              "args": {k: str(v) for k, v in vars(args).items()},
                              "target_fp_per_scan": TARGET_FP, "operating_point": "nested leave-one-patient-out (model card)",
                              "folds": folds}
    if not args.folds_only and not args.held_out:
        rows = np.concatenate([r for r, _ in out_of_fold])
        chosen, choice_numbers = choose(arrays, rows, {
            c: np.concatenate([s[c] for _, s in out_of_fold]) for c in choices}, lesions)
        record.update(choice=chosen, threshold=shipped_threshold(folds), outer_choices=choice_numbers,
                      pooled_threshold=choice_numbers[chosen]["threshold"],
                      seconds_shipped=sum(round(results[(w,)].seconds) for w in weightings if (w,) in results))
        shipped = (_inner_members(results, [k for k in folds_of if len(k) == 2], chosen)
                   if args.report == "inner-mean" else _members(results, (), chosen))
        write_folder(args.out, shipped, record["threshold"], ground_glass)
        print(f"shipped scorer: chose {chosen} ({_choice_line(choice_numbers)}), threshold {record['threshold']:.4f} "
              "(the median of the folds' nested thresholds; pooled out-of-fold "
              f"{record['pooled_threshold']:.4f})", flush=True)
    record["seconds"] = round(time.time() - started)
    with open(args.out / "training.json", "w") as handle:
        json.dump(record, handle, indent=1, default=float)


def shipped_threshold(folds: Sequence[dict[str, Any]]) -> float:
    """The all-patient folder's threshold: the median of the folds' nested thresholds. No score of
    that folder is out of fold, so it takes the threshold its kind of ensemble gets for a patient it
    never saw (training/nodule/LOG.md, "The shipped folder's threshold for the small-nodule scorer")."""
    return float(np.median([fold["threshold"] for fold in folds]))


def _members(results: dict[tuple[str, ...], Trained], fold: tuple[str, ...], choice: str) -> dict[str, scorer.ScorerNet]:
    """The scorers a choice needs, by weight file name: one, or both weightings for "mean"."""
    return {scorer.WEIGHT_FILES[w]: _net(results[(w, *fold)]) for w in (WEIGHTINGS if choice == "mean" else (choice,))}


def _inner_members(results: dict[tuple[str, ...], Trained], inner: Sequence[tuple[str, ...]],
                   weighting: str) -> dict[str, scorer.ScorerNet]:
    """Inner scorers (``fold_tasks`` keys (P, Q)) by weight file name, named for the patients they left out."""
    return {f"scorer-without-{'-and-'.join(key)}.pt": _net(results[(weighting, *key)]) for key in inner}


def _net(trained: Trained) -> scorer.ScorerNet:
    net = scorer.ScorerNet()
    net.load_state_dict(trained.state)
    return net


def _choice_line(numbers: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{c} {n['lesion_series_found']}/{n['lesion_series']} at {n['false_positives']} FP"
                     for c, n in numbers.items())


def write_folder(folder: Path, nets: dict[str, scorer.ScorerNet], threshold: float, ground_glass: bool) -> None:
    """A scorer model folder (``candidate_detector``): weights by file name (their probabilities
    averaged when there are several), the operating point and the candidate stage they saw."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("scorer*.pt"):
        stale.unlink()
    for name, net in nets.items():
        torch.save(net.state_dict(), folder / name)
    weights = "" if list(nets) == [scorer.WEIGHT_FILES["candidates"]] else f"weights = {list(nets)!r}\n"
    (folder / "params.toml").write_text(
        "# Written by training.nodule.train_scorer; read by pipelines.nodule.candidate_detector.\n"
        "# report_threshold: the model card's nested operating point (<= 2 false positives per real\n"
        "# scan on out-of-fold scores of the training patients), set by the training, not by any\n"
        "# held-out number.\n"
        f"[scorer]\nreport_threshold = {float(threshold)!r}\n{weights}"
        f"\n[candidates]\nground_glass = {str(ground_glass).lower()}\n")


def _threshold_on(nets: dict[str, scorer.ScorerNet], arrays: dict[str, np.ndarray], rows: np.ndarray, device: str) -> float:
    """The first rule's operating point, on the rows' real series (copy 0) scored by the scorer
    trained on them: kept in ``training.json`` beside the nested one, for the comparison in
    training/nodule/LOG.md, "Nested operating point: measured"."""
    real = rows[arrays["copy"][rows] == 0]
    return nested_threshold(arrays, real, scorer.mean_score(list(nets.values()), arrays["patches"][real],
                                                            arrays["scalars"][real], device))


if __name__ == "__main__":
    main()
