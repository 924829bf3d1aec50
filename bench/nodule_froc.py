"""Synthetic masses against the chest wall and the mediastinum, and small nodules, inserted into the
shared chest CTs on a sharp and a soft reconstruction of each: what the nodule pipeline finds.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 bench/nodule_froc.py masses  [--out FILE.json] [--without-mass-net]
        [--runs N | --run I ...] [--patients P ...]
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python3 bench/nodule_froc.py nodules [--out FILE.json] [--types TYPE ...]
        [--folds DIR ...] [--keep DIR | --kept DIR]

``--without-mass-net``: the pipeline as it was before the mass safety net (``masses.MASS_MM``
set beyond any lesion, so that the net reports nothing), for the before/after table; ``--runs N``:
only the first N of ``MASS_RUNS``; ``--run I ...``: only those runs; ``--patients P ...``: only
those patients (a subset while iterating; the same seeds, so rows compare with a full run's).

Each of the six series is read as acquired and as the other kernel (``reconstruction.rekernel``
by the measured NPS: LIDC's GE STANDARD made B70f-sharp, C3N-00247's B70f made soft); A0002 is one
acquisition reconstructed B40f and B70f, read as it is. The rule and the targets were written in
``training/nodule/LOG.md`` ("Masses against the chest wall and the mediastinum") first.

- ``masses``: runs of two masses, one against the posterior chest wall (right lung, half its
  height) and one against the mediastinum (left lung, posterior medial border at 0.7 of its
  height: beside the aortic arch), ``training.nodule.sites``; each moves down its lung where less
  than half of it would lie in that lung (LIDC-0002's junction line), to the other lung when a real
  lesion is in the way, and up or down either lung until it is clear of every real lesion by
  ``APART_MM`` (``_clear_site``; a mass with no clear site is not inserted and is printed as not
  placed); when that brings the two together each is inserted alone, in its own copy of the series
  (``_mass_copies``). Sizes 30-80 mm, solid or part-solid (ground-glass halo around a core of
  0.7 of the diameter). Through ``NoduleDetection.search`` (shipped scorer folder): found when a
  reported finding's box centre lies in the inserted box (+2 mm); its long axis against the
  inserted diameter; reported findings centred in the mediastinum (``tests.support.mediastinum``'s
  independent mask) that lie on no inserted or real lesion are listed.
- ``nodules``: solid, part-solid, ground-glass nodules of 4, 6, 8, 10 mm, juxtapleural,
  juxtavascular (a synthetic vessel attached), perifissural (on a synthetic fissure: radnode has
  no fissure finder, so the fissure is inserted with the nodule) and intraparenchymal, 12 per
  run, well apart (``--types``: only some of these). Scored
  on the detector's fused candidates (every score, no threshold): FROC sensitivity at 0.5, 1, 2,
  4 false positives per scan by size, kind and site, and at the shipped threshold. ``--folds DIR
  ...``: leave one patient out instead, each series scored by ``DIR/folds/PATIENT`` (the scorers
  that never saw its patient; the shipped scorer's are in ``training/nodule/scorer_folds``) at
  that fold's threshold; several scorer folders score the same
  candidates and nodules, one table each (training/nodule/LOG.md, "Small solid nodules against vessels").
  ``--keep DIR`` saves each scan's candidates and nodules there; ``--kept DIR`` scores those
  instead of inserting anew (a scorer trained later, on the same candidates, in seconds).
  ``--as-reported`` (with ``--folds``) counts what the pipeline reports instead of the scored
  candidates: its own tail (``pipeline.reported``: measured, merged, in the lung, not calcified, not
  bone, the masses of the safety net) at every threshold of ``REPORT_GRID``; the first scan of each
  series and kernel also runs through the pipeline itself, which must agree (training/nodule/LOG.md,
  "The FROC on what the pipeline reports").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from pipelines.base import PipelineSettings
from pipelines.model_folder import load_params
from pipelines.nodule import masses as mass_rule
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR, CandidateDetector
from pipelines.nodule.detector import Detection
from pipelines.nodule.harmonize import harmonize
from pipelines.nodule.measure import Measurement, measure, source_box
from pipelines.nodule.params import ScorerParams
from pipelines.nodule.parenchyma import Parenchyma, parenchyma
from pipelines.nodule.pipeline import NoduleDetection, reported
from pipelines.volume import Volume
from training.data_folder import DATA_ROOT
from training.nodule import evaluate, patients, sites, synthesis
from training.nodule.reconstruction import Reconstruction, other_kernel, reconstruct, source_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mediastinum import centred_in, mediastinum_mask  # noqa: E402  (the independent mask the tests use)

SEED = 20261126
#: (posterior wall mm, mediastinal mm) per run, each run once solid and once part-solid.
MASS_RUNS = ((30.0, 65.0), (50.0, 80.0), (65.0, 30.0), (80.0, 50.0))
MASS_KINDS = ("solid", "part-solid")
MASS_CORE = 0.7
#: The highest share of a lung's height a mass is moved up to when real lesions lie at its run's.
HIGHEST_MASS_HEIGHT = 0.8
EXTENT_TOLERANCE = 0.20
NODULE_MM = (4.0, 6.0, 8.0, 10.0)
NODULE_KINDS = ("solid", "part-solid", "ground-glass")
NODULE_SITES = ("juxtapleural", "juxtavascular", "perifissural", "intraparenchymal")
NODULES_PER_RUN = 12
#: Inserted nodules keep this far (mm) from each other and from real lesions, beyond their radii.
APART_MM = 20.0
FP_RATES = (0.5, 1.0, 2.0, 4.0)
#: The score thresholds ``--as-reported`` runs the pipeline's tail at (each fold's own is added).
REPORT_GRID = tuple(round(0.2 + 0.025 * n, 3) for n in range(32))


def variants(only: tuple[str, ...] = ()) -> Iterator[tuple[patients.Series, str]]:
    """Every series as acquired, and (but A0002, which has both) as the other kernel, one at a time;
    with ``only``, the patients whose name holds one of those strings."""
    for patient, names in patients.PATIENTS.items():
        if only and not any(part in patient for part in only):
            continue
        for name in names:
            series = patients.load(DATA_ROOT, patient, name)
            kernel = source_kernel(series.volume)
            yield series, kernel
            if patient != "lung-pet-ct-dx-A0002":
                redone = reconstruct(series.volume, Reconstruction(other_kernel(series.volume)),
                                     np.random.default_rng(SEED))
                yield dataclasses.replace(series, volume=redone), "soft" if kernel == "sharp" else "sharp"


def _box(volume: Volume, inserted: synthesis.Inserted) -> np.ndarray:
    corners = np.array([[k, j, i] for k in inserted.box[0::3] for j in inserted.box[1::3] for i in inserted.box[2::3]])
    lps = volume.kji_to_lps(corners)
    return np.array([lps.min(axis=0), lps.max(axis=0)])


def _clear(volume: Volume, centre: np.ndarray, radius: float, lesions: list[np.ndarray]) -> bool:
    point = volume.kji_to_lps(centre[None])[0]
    return all(np.linalg.norm(point - box.mean(axis=0)) > radius + float(np.max(box[1] - box[0])) / 2 + APART_MM
               for box in lesions)


def masses(pipeline: NoduleDetection, runs: tuple[int, ...] = tuple(range(len(MASS_RUNS))),
           only: tuple[str, ...] = ()) -> dict[str, Any]:
    rows, scans, unplaced = [], [], []
    for series, kernel in variants(only):
        lungs = sites.lungs_of(series.volume)
        real = [les.lps_box for les in series.lesions] + list(series.ignore)
        for run in runs:
            for kind in MASS_KINDS:
                copies, left_out = _mass_copies(series, lungs, real, run, kind)
                unplaced += [{"series": series.name, "kernel": kernel, **mass} for mass in left_out]
                for volume, truths in copies:
                    started = time.process_time()
                    reported = pipeline.search(volume).nodules
                    seconds = time.process_time() - started
                    rows += [_mass_row(series.name, kernel, truth, reported) for truth in truths]
                    scans.append(_mass_scan(series.name, kernel, run, kind, volume, truths, real, reported, seconds))
    summary = {**_mass_summary(rows, scans), "masses not placed (no site clear of real lesions)": len(unplaced)}
    return {"summary": summary, "masses": rows, "scans": scans, "not_placed": unplaced}


def _mass_copies(series: patients.Series, lungs: np.ndarray, real: list[np.ndarray], run: int,
                 kind: str) -> tuple[list[tuple[Volume, list[dict[str, Any]]]], list[dict[str, Any]]]:
    """The run's two masses in one copy of the series, or each in a copy of its own when they would
    come within ``APART_MM`` of each other (both moved into one lung by real lesions: touching, they
    would be one lesion), and the masses no site clear of real lesions was found for."""
    wall_mm, medial_mm = MASS_RUNS[run]
    spacing = np.asarray(series.volume.spacing[::-1])
    rng = np.random.default_rng(SEED + run)
    copies: list[tuple[np.ndarray, list[dict[str, Any]]]] = []
    unplaced: list[dict[str, Any]] = []
    for wall, side, height, size in (("posterior", "right", 0.5, wall_mm), ("mediastinum", "left", 0.7, medial_mm)):
        site = _clear_site(series.volume, lungs, real, wall, side, height, size)
        if site is None:
            unplaced.append({"run": run, "site": wall, "mm": size, "kind": kind})
            print("    not placed:", series.name, unplaced[-1], flush=True)
            continue
        side, centre = site
        placed = [(c, t) for c, t in copies if _clear(series.volume, centre, size / 2, [x["box"] for x in t])]
        array, truths = placed[0] if placed else (series.volume.array.copy(), [])
        if not placed:
            copies.append((array, truths))
        spec = synthesis.NoduleSpec(size, kind=kind, solid_hu=35.0, core_fraction=MASS_CORE)
        inserted = synthesis.insert(array, spacing, centre, spec, rng)
        truths.append({"site": wall, "side": side, "mm": size, "kind": kind, "box": _box(series.volume, inserted)})
    return [(dataclasses.replace(series.volume, array=array), truths) for array, truths in copies], unplaced


def _clear_site(volume: Volume, lungs: np.ndarray, real: list[np.ndarray], wall: str, side: str, height: float,
                size: float) -> tuple[str, np.ndarray] | None:
    """The first site of a mass ``size`` mm clear of every real lesion (``_clear``): the run's
    ``height`` in its own lung, then in the other, then heights moving away from it, below before
    above, each lung in that order; None where no site is clear (the mass is not inserted)."""
    other = "left" if side == "right" else "right"
    steps = int(round((HIGHEST_MASS_HEIGHT - sites.LOWEST_HEIGHT) / sites.HEIGHT_STEP))
    offsets = [0.0] + [sign * n * sites.HEIGHT_STEP for n in range(1, steps + 1) for sign in (-1, 1)]
    for level in (round(height + o, 3) for o in offsets):
        if not sites.LOWEST_HEIGHT <= level <= HIGHEST_MASS_HEIGHT:
            continue
        for lung in (side, other):
            centre = sites.site(volume, lungs, lung, wall, level, size / 2)
            if _clear(volume, centre, size / 2, real):
                return lung, centre
    return None


def _mass_row(series: str, kernel: str, truth: dict[str, Any], reported: list[tuple[Detection, Measurement]]) -> dict[str, Any]:
    """Whether an inserted mass was reported, and as what (the largest finding on it)."""
    on = [(d, m) for d, m in reported if evaluate.hits(d, truth["box"])]
    best = max(on, key=lambda f: f[1].diameter_mm, default=None)
    row = {"series": series, "kernel": kernel, "site": truth["site"], "side": truth["side"],
           "mm": truth["mm"], "kind": truth["kind"], "found": best is not None, "findings": len(on),
           "measured_mm": None if best is None else round(best[1].diameter_mm, 1),
           "solid_mm": None if best is None or best[1].solid_diameter_mm is None else round(best[1].solid_diameter_mm, 1),
           "mass_rule": None if best is None else best[0].mass,
           "score": None if best is None else round(best[0].score, 3)}
    print("   ", row, flush=True)
    return row


def _mass_scan(series: str, kernel: str, run: int, kind: str, volume: Volume, truths: list[dict[str, Any]],
               real: list[np.ndarray], reported: list[tuple[Detection, Measurement]], seconds: float) -> dict[str, Any]:
    """One search's findings on no inserted or real lesion, and how many are centred in the mediastinum."""
    mediastinum = mediastinum_mask(volume)
    boxes = [t["box"] for t in truths] + real
    others = [(d, m) for d, m in reported if not any(evaluate.hits(d, b) for b in boxes)]
    centred = [m for _, m in others if centred_in(mediastinum, volume, m.center_lps)]
    scan = {"series": series, "kernel": kernel, "run": run, "kind": kind, "masses": len(truths),
            "false_positives": [{"mm": round(m.diameter_mm, 1), "score": round(d.score, 3), "mass_rule": d.mass,
                                 "center_lps": [round(c) for c in m.center_lps]} for d, m in others],
            "mediastinal": len(centred), "cpu_s": round(seconds, 1)}
    print(series, kernel, run, kind, "fps", scan["false_positives"], "mediastinal", len(centred), f"{seconds:.0f} s",
          flush=True)
    return scan


def _mass_summary(rows: list[dict[str, Any]], scans: list[dict[str, Any]]) -> dict[str, Any]:
    def share(selected: list[dict[str, Any]]) -> str:
        found = [r for r in selected if r["found"]]
        within = [r for r in found if abs(r["measured_mm"] - r["mm"]) <= EXTENT_TOLERANCE * r["mm"]]
        return f"{len(found)}/{len(selected)} found, {len(within)}/{len(found)} extent within 20 %"

    table: dict[str, Any] = {f"{site}, {kernel}": share([r for r in rows if r["site"] == site and r["kernel"] == kernel])
             for site in ("posterior", "mediastinum") for kernel in ("sharp", "soft")}
    table.update({f"{mm:g} mm": share([r for r in rows if r["mm"] == mm]) for mm in sorted({r["mm"] for r in rows})})
    table.update({kind: share([r for r in rows if r["kind"] == kind]) for kind in MASS_KINDS})
    table["all"] = share(rows)
    table["found more than once"] = sum(r["findings"] > 1 for r in rows)
    table["false positives per scan"] = round(float(np.mean([len(s["false_positives"]) for s in scans])), 2)
    table["findings centred in the mediastinum"] = sum(s["mediastinal"] for s in scans)
    return table


@dataclasses.dataclass(frozen=True)
class NoduleScan:
    """One run of inserted nodules in one series: its candidates, ready to score, and what is on it."""

    series: str
    patient: str
    kernel: str
    start: int
    truths: list[evaluate.Truth]
    real: list[np.ndarray]
    candidates: evaluate.Scorable
    #: the harmonized series with the nodules in it (None for a kept scan: ``--as-reported`` needs it)
    volume: Volume | None = None


def nodule_scans(types: tuple[str, ...], ground_glass: bool, keep: Path | None = None,
                 only: tuple[str, ...] = ()) -> Iterator[NoduleScan]:
    """Every series and kernel with the nodules of ``types`` inserted, ``NODULES_PER_RUN`` a run;
    ``keep``: each scan also saved there (``kept_scans`` reads them back to score another folder);
    ``only``: those patients (``variants``), with the same nodules as in a full run."""
    combos = [(mm, kind, where) for mm in NODULE_MM for kind in NODULE_KINDS for where in types]
    count = 0
    for series, kernel in variants(only):
        lungs = sites.lungs_of(series.volume)
        spacing = np.asarray(series.volume.spacing[::-1])
        depth = ndi.distance_transform_edt(lungs, sampling=spacing)  # once per series, not per nodule
        real = [les.lps_box for les in series.lesions] + list(series.ignore)
        avoid = [(series.volume.lps_to_kji(b.mean(axis=0)), float(np.max(b[1] - b[0])) / 2 + APART_MM) for b in real]
        rng = np.random.default_rng(SEED)
        for start in range(0, len(combos), NODULES_PER_RUN):
            array = series.volume.array.copy()
            placed, inserted_here = list(avoid), []
            for mm, kind, where in combos[start:start + NODULES_PER_RUN]:
                spec = synthesis.NoduleSpec(
                    mm, kind=kind, solid_hu=30.0, ground_glass_hu=-600.0, core_fraction=0.5,
                    vessel=(1.0, 15.0, float(rng.integers(1 << 30)), 0.0) if where == "juxtavascular" else None,
                    fissure=float(rng.integers(1 << 30)) if where == "perifissural" else None,
                    attachment="pleura" if where == "juxtapleural" else "none")
                centre = synthesis.pick_center(lungs, spacing, spec, rng, [(c, r + APART_MM) for c, r in placed],
                                               depth_mm=depth)
                if centre is None:
                    continue
                inserted = synthesis.insert(array, spacing, centre, spec, rng)
                placed.append((centre, mm / 2))
                inserted_here.append(evaluate.Truth(_box(series.volume, inserted), mm, f"{kind}|{where}"))
            volume = harmonize(dataclasses.replace(series.volume, array=array)).volume
            scan = NoduleScan(series.name, series.patient, kernel, start, inserted_here, real,
                              evaluate.scorable(volume, ground_glass), volume)
            if keep is not None:
                _save(scan, keep / f"scan-{count:03d}.npz")
            count += 1
            yield scan


def _save(scan: NoduleScan, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    found = scan.candidates
    np.savez(path, meta=np.array(json.dumps(
        {"series": scan.series, "patient": scan.patient, "kernel": scan.kernel, "start": scan.start,
         "truths": [{"mm": t.diameter_mm, "kind": t.kind} for t in scan.truths]})),
        truth_boxes=np.array([t.lps_box for t in scan.truths]).reshape(-1, 2, 3),
        real=np.array(scan.real).reshape(-1, 2, 3), boxes=found.boxes, corners=found.corners,
        patches=found.patches, scalars=found.scalars)


def kept_scans(folder: Path) -> Iterator[NoduleScan]:
    """The scans ``nodule_scans`` kept in ``folder``, in their order."""
    for path in sorted(folder.glob("scan-*.npz")):
        with np.load(path) as kept:
            meta = json.loads(str(kept["meta"]))
            truths = [evaluate.Truth(box, t["mm"], t["kind"]) for box, t in zip(kept["truth_boxes"], meta["truths"])]
            yield NoduleScan(meta["series"], meta["patient"], meta["kernel"], meta["start"], truths, list(kept["real"]),
                             evaluate.Scorable(kept["boxes"], kept["corners"], kept["patches"], kept["scalars"]))


def nodules(scans: Iterator[NoduleScan], folders: dict[str, Path], folds: bool) -> dict[str, Any]:
    """The FROC table of each scorer folder (by name) on the same scans; ``folds``: each scan scored
    by the folder's fold of its own patient, at that fold's threshold (leave one patient out)."""
    marks: dict[str, list[dict[str, Any]]] = {n: [] for n in folders}
    thresholds: dict[str, list[float]] = {n: [] for n in folders}
    truths: list[list[evaluate.Truth]] = []
    loaded: dict[Path, CandidateDetector] = {}
    for scan in scans:
        truths.append(scan.truths)
        for name, folder in folders.items():
            where = patients.folds_of(folder) / scan.patient if folds else folder
            if where not in loaded:
                loaded[where] = CandidateDetector.load(where, "cpu")
            detector = loaded[where]
            threshold = detector.settings.report_threshold
            scored = evaluate.score_scan(evaluate.scored_by(detector, scan.candidates), scan.truths, scan.real)
            marks[name].append(scored)
            thresholds[name].append(threshold)
            fps = sorted((s for s, k in scored["marks"] if k == "fp"), reverse=True)
            print(name, scan.series, scan.kernel, scan.start, f"{len(scored['found'])}/{len(scan.truths)} candidates "
                  f"on nodules, fps above threshold {sum(s >= threshold for s in fps)}", flush=True)
            print("RUN", json.dumps({"scorer": name, "series": scan.series, "kernel": scan.kernel, "fps": fps,
                                     "threshold": threshold,
                                     "nodules": [{"mm": t.diameter_mm, "kind": t.kind, "score": scored["found"].get(n)}
                                                 for n, t in enumerate(scan.truths)]}), flush=True)
    return {"tables": {n: _froc_table(marks[n], truths, thresholds[n]) for n in folders}, "scans": len(truths),
            "leave_one_patient_out": folds}


def _froc_table(scans: list[dict[str, Any]], truths: list[list[evaluate.Truth]], thresholds: list[float]) -> dict[str, Any]:
    """Sensitivity at each FP rate per scan and at each scan's threshold, for every group of nodules."""
    fps = sorted((s for scan in scans for s, k in scan["marks"] if k == "fp"), reverse=True)
    count = len(scans)

    def group(select: Any) -> dict[str, Any]:
        scores = [(scan["found"].get(n, None), threshold) for scan, ts, threshold in zip(scans, truths, thresholds)
                  for n, t in enumerate(ts) if select(t)]
        total = len(scores)
        hit = [(s, threshold) for s, threshold in scores if s is not None]
        row: dict[str, Any] = {"n": total}
        for rate in FP_RATES:
            allowed = int(rate * count)
            cut = fps[allowed] if allowed < len(fps) else -1.0  # scores above the (allowed+1)th FP
            row[f"{rate:g}"] = round(sum(s > cut for s, _ in hit) / max(total, 1), 2)
        row["at threshold"] = round(sum(s >= threshold for s, threshold in hit) / max(total, 1), 2)
        row["any candidate"] = round(len(hit) / max(total, 1), 2)
        return row

    table: dict[str, Any] = {name: group(select) for name, select in _groups(truths).items()}
    table["fp per scan at threshold"] = round(sum(s >= threshold for scan, threshold in zip(scans, thresholds)
                                                  for s, k in scan["marks"] if k == "fp") / count, 2)
    return table


def _groups(truths: list[list[evaluate.Truth]]) -> dict[str, Any]:
    """The table's rows: each size and kind, each site, and solid >= 6 mm (with and without perifissural)."""
    groups: dict[str, Any] = {}
    for mm in NODULE_MM:
        for kind in NODULE_KINDS:
            groups[f"{mm:g} mm {kind}"] = lambda t, mm=mm, kind=kind: t.diameter_mm == mm and t.kind.startswith(kind + "|")
    for where in sorted({t.kind.split("|")[1] for ts in truths for t in ts}):
        groups[where] = lambda t, where=where: t.kind.endswith("|" + where)
    groups["solid >= 6 mm"] = lambda t: t.diameter_mm >= 6 and t.kind.startswith("solid|")
    groups["solid >= 6 mm, not perifissural"] = (
        lambda t: t.diameter_mm >= 6 and t.kind.startswith("solid|") and not t.kind.endswith("|perifissural"))
    return groups


def as_reported(scans: Iterator[NoduleScan], folders: dict[str, Path]) -> dict[str, Any]:
    """The FROC table of each scorer folder counted on what the pipeline reports (``pipeline.reported``,
    the pipeline's own tail) at every threshold of ``REPORT_GRID`` and at each fold's own, leave one
    patient out; the first scan of each series and kernel is also run through the pipeline itself
    at its fold's threshold, to check that the two agree."""
    runs: dict[str, list[dict[float, tuple[int, frozenset[int]]]]] = {n: [] for n in folders}
    thresholds: dict[str, list[float]] = {n: [] for n in folders}
    truths: list[list[evaluate.Truth]] = []
    checks: list[dict[str, Any]] = []
    loaded: dict[Path, CandidateDetector] = {}
    checked: set[tuple[str, str]] = set()
    for scan in scans:
        if scan.volume is None:
            raise SystemExit("--as-reported needs the scans' volumes: insert anew (not --kept)")
        truths.append(scan.truths)
        lungs = parenchyma(scan.volume)
        found_masses, _ = mass_rule.find(scan.volume, lungs)
        measured: dict[bytes, Measurement | None] = {}
        for name, folder in folders.items():
            where = patients.folds_of(folder) / scan.patient
            if where not in loaded:
                loaded[where] = CandidateDetector.load(where, "cpu")
            threshold = loaded[where].settings.report_threshold
            near = evaluate.scored_by(loaded[where], scan.candidates)
            judged = _reported_at(scan, lungs, found_masses, near, measured, sorted({*REPORT_GRID, threshold}))
            runs[name].append(judged)
            thresholds[name].append(threshold)
            print(name, scan.series, scan.kernel, scan.start, "at the fold's threshold: false positives",
                  judged[threshold][0], f"nodules {len(judged[threshold][1])}/{len(scan.truths)}", flush=True)
            if (scan.series, scan.kernel) not in checked:
                checks.append(_check(scan, where, judged[threshold]))
        checked.add((scan.series, scan.kernel))
    return {"tables": {n: _reported_table(runs[n], truths, thresholds[n]) for n in folders}, "scans": len(truths),
            "checks": checks, "leave_one_patient_out": True}


def _reported_at(scan: NoduleScan, lungs: Parenchyma, found_masses: list[mass_rule.Mass], near: list[Detection],
                 measured: dict[bytes, Measurement | None], grid: list[float]) -> dict[float, tuple[int, frozenset[int]]]:
    """Per threshold: the reported false positives and the inserted nodules found (their indices)."""
    assert scan.volume is not None
    volume = scan.volume
    judged: dict[float, tuple[int, frozenset[int]]] = {}
    previous: tuple[int, ...] | None = None
    for threshold in sorted(grid, reverse=True):
        above = [d for d in near if d.score >= threshold]
        key = tuple(id(d) for d in above)
        if key != previous:
            pairs = []
            for d in above:
                box = d.lps_corners.tobytes()
                if box not in measured:
                    measured[box] = measure(volume, *source_box(volume, d.lps_corners))
                if measured[box] is not None:
                    pairs.append((d, measured[box]))
            lesions, _ = reported(volume, lungs, found_masses, near, pairs)
            outcome = _judge(scan, [d for d, _ in lesions])
            previous = key
        judged[threshold] = outcome
    return judged


def _judge(scan: NoduleScan, lesions: list[Detection]) -> tuple[int, frozenset[int]]:
    """How many reported lesions are false positives, and which inserted nodules they find."""
    found = {n for d in lesions for n, t in enumerate(scan.truths) if evaluate.hits(d, t.lps_box)}
    false = sum(not any(evaluate.hits(d, t.lps_box) for t in scan.truths)
                and not any(evaluate.hits(d, box) for box in scan.real) for d in lesions)
    return false, frozenset(found)


def _check(scan: NoduleScan, fold: Path, judged: tuple[int, frozenset[int]]) -> dict[str, Any]:
    """The pipeline itself on the scan, at the fold's threshold, against the bench's tail there."""
    assert scan.volume is not None
    pipeline = NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(fold)))
    itself = _judge(scan, [d for d, _ in pipeline.search(scan.volume).nodules])
    check = {"series": scan.series, "kernel": scan.kernel, "fold": fold.name,
             "pipeline": [itself[0], sorted(itself[1])], "bench": [judged[0], sorted(judged[1])],
             "agree": itself == judged}
    print("CHECK", json.dumps(check), flush=True)
    return check


def _reported_table(runs: list[dict[float, tuple[int, frozenset[int]]]], truths: list[list[evaluate.Truth]],
                    thresholds: list[float]) -> dict[str, Any]:
    """Sensitivity at each rate of reported false positives per scan: at the lowest grid threshold
    where the false positives over all scans, at it and every higher one, stay within the rate."""
    count = len(runs)
    totals = {t: sum(run[t][0] for run in runs) for t in REPORT_GRID}
    cuts: dict[str, float] = {}
    for rate in FP_RATES:
        cut = float("inf")  # no grid threshold stays within the rate: nothing is found at it
        for t in sorted(REPORT_GRID, reverse=True):
            if totals[t] > rate * count:
                break
            cut = t
        cuts[f"{rate:g}"] = cut

    def group(select: Any) -> dict[str, Any]:
        members = [(n_scan, n) for n_scan, ts in enumerate(truths) for n, t in enumerate(ts) if select(t)]
        total = max(len(members), 1)
        row: dict[str, Any] = {"n": len(members)}
        for rate, cut in cuts.items():
            row[rate] = round(sum(n in runs[s][cut][1] for s, n in members) / total, 2) if cut != float("inf") else 0.0
        row["at threshold"] = round(sum(n in runs[s][thresholds[s]][1] for s, n in members) / total, 2)
        return row

    table: dict[str, Any] = {name: group(select) for name, select in _groups(truths).items()}
    table["threshold at each rate"] = {rate: cut for rate, cut in cuts.items()}
    table["grid floor"] = {rate: cut == min(REPORT_GRID) for rate, cut in cuts.items()}
    table["fp per scan at threshold"] = round(sum(run[t][0] for run, t in zip(runs, thresholds)) / count, 2)
    table["fp per scan at each grid threshold"] = {f"{t:.3f}": round(totals[t] / count, 2) for t in REPORT_GRID}
    return table


def _candidate_stage(folder: Path, folds: bool) -> bool:
    """Whether a scorer folder (``folds``: each of its folds) ran the candidate stage's ground glass."""
    where = sorted(p for p in patients.folds_of(folder).iterdir() if p.is_dir()) if folds else [folder]
    stages = {load_params(w, ScorerParams).candidates.ground_glass for w in where}
    if len(stages) != 1:
        raise SystemExit(f"the folds of {folder} ran different candidate stages ([candidates] ground_glass)")
    return stages.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("masses", "nodules"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--without-mass-net", action="store_true", help="the pipeline before the mass safety net")
    parser.add_argument("--runs", type=int, default=len(MASS_RUNS), help="only the first RUNS of MASS_RUNS")
    parser.add_argument("--run", type=int, nargs="+", choices=range(len(MASS_RUNS)),
                        help="masses: only these runs of MASS_RUNS (0-based; overrides --runs)")
    parser.add_argument("--patients", nargs="+", default=[],
                        help="only patients whose name holds one of these")
    parser.add_argument("--types", nargs="+", choices=NODULE_SITES, default=list(NODULE_SITES),
                        help="nodules: only these types (sites)")
    parser.add_argument("--folds", type=Path, nargs="+", default=[],
                        help="nodules: scorer folders with folds/, each series scored by its patient's fold "
                             "(leave one patient out); several are scored on the same candidates")
    parser.add_argument("--keep", type=Path, help="nodules: save each scan's candidates in this folder")
    parser.add_argument("--kept", type=Path, help="nodules: score the scans saved by --keep instead of inserting anew")
    parser.add_argument("--as-reported", action="store_true",
                        help="nodules, with --folds: count what the pipeline reports (its own tail at every "
                             "threshold of REPORT_GRID), not the scored candidates")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "nodules":
        folders = {str(f): f for f in args.folds} or {"shipped": DEFAULT_SCORER_DIR}
        ground_glass = {_candidate_stage(f, bool(args.folds)) for f in folders.values()}
        if len(ground_glass) != 1:
            parser.error("these scorer folders ran different candidate stages ([candidates] ground_glass): "
                         "score them in separate runs")
        scans = (kept_scans(args.kept) if args.kept
                 else nodule_scans(tuple(args.types), ground_glass.pop(), args.keep, tuple(args.patients)))
        if args.patients:
            scans = (scan for scan in scans if any(part in scan.patient for part in args.patients))
        if args.as_reported and not args.folds:
            parser.error("--as-reported scores leave one patient out: give --folds")
        result = as_reported(scans, folders) if args.as_reported else nodules(scans, folders, bool(args.folds))
    else:
        if args.without_mass_net:
            mass_rule.MASS_MM = float("inf")
        pipeline = NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=DEFAULT_SCORER_DIR))
        runs = tuple(args.run) if args.run else tuple(range(args.runs))
        result = masses(pipeline, runs, tuple(args.patients))
    print(json.dumps(result.get("summary", result.get("tables")), indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
