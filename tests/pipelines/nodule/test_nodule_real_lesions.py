"""Real lesions: LIDC-IDRI reader XML turned into lesions (lidc-idri-0001..0003), the candidate
stage on them and on the real A0002 mass, and the pipeline's findings on each real patient by the
scorer that never saw that patient (leave-one-patient-out folds kept in ``training/nodule/scorer_folds``).

What the data README says the scans hold (each a ~3 cm lesion contoured by at least two readers,
0003 two more of 11-16 mm) must come out of ``training.nodule.lidc``, on the right voxels, with
the readers' other marks kept as ignore regions. The candidate stage (``candidates``) must put a
candidate on every one of those lesions, box 0002's ground-glass nodule with a ground-glass candidate
and the A0002 mass close to whole, within its budget.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.base import JobInput, PipelineSettings
from pipelines.nodule import candidates
from pipelines.nodule.pipeline import NoduleDetection
from tests.support.cpu_share import CPU_THREADS
from tests.support.nodule_series import chest_files
from tests.support.peers import dciodvfy
from training.nodule import data, evaluate, lidc, patients, synthesis, train_scorer

SCANS = ("ct-chest/lidc-idri-0001/ct", "ct-chest/lidc-idri-0002/ct", "ct-chest/lidc-idri-0003/ct")
#: Consensus lesions per scan, long axes (mm) of the consensus masks as measured: 31.8 | 31.0 |
#: 31.0, 14.3, 12.6.
EXPECTED_LESIONS = {SCANS[0]: 1, SCANS[1]: 1, SCANS[2]: 3}
#: Consensus long axis vs the mean of the readers' long axes. Measured worst 0.9 mm (0002, whose
#: two readers' masks are united by the 50 % vote).
DIAMETER_TOLERANCE_MM = 2.0
#: 0001's lesion is solid: its mask on the CT must be soft tissue, not lung. Measured -77 HU.
SOLID_MIN_HU = -300.0
#: Every lesion, ground glass included, is denser than aerated lung (~ -850 HU). Measured -704 HU
#: for 0002's ground-glass nodule, the faintest.
ANY_MIN_HU = -750.0


#: The A0002 mass (longest annotated side 76.3 mm): its largest candidate box's longest side must
#: reach this share of it (the target: a mass reported as one box, not in pieces). Measured: 68.0 mm, 0.89.
MASS_EXTENT_SHARE = 0.6
#: LIDC-IDRI-0002's 31.0 mm ground-glass nodule (median -725 HU): a ground-glass component boxes it,
#: its box's longest side at least this share of the long axis (the rule of training/nodule/LOG.md,
#: "Ground-glass candidates"). Measured 28.0 mm, 0.90.
GROUND_GLASS_EXTENT_SHARE = 0.6
#: The pipeline's findings on each real patient by the fold's scorers that never saw it (the
#: mean of its four inner scorers), at that fold's nested threshold (their out-of-fold scores of
#: its training patients, thin and slab-averaged series; model card), through today's pipeline
#: (kernel harmonization, touching segmentations merged, findings outside the lung left out).
#: Targets: every lesion >= 10 mm reported at <= 1 false positive per scan; measured 7 of 8
#: lesion-series at 0.50 with the scorer trained on small nodules too (``bench/nodule_real_lesions.py
#: --detector scorer``, saved in scorer_weights/real_lesions.json; 0.33 with the scorer before it);
#: the tests assert those results as regression floors: per LIDC scan, the long axes (mm) of the
#: lesions reported and the false positives (0001: one, at 0.678 against its fold's 0.665; 0003:
#: none, one before). Missed: 0002's 31.0 mm ground-glass nodule. 0002's false positive: a 38.5 mm
#: "mass" on the left hilum (pulmonary artery), reported by the mass rule (pipelines/nodule/masses.py).
MIN_LESION_MM = 10.0
LIDC_FLOORS = {SCANS[0]: ([31.8], 1), SCANS[1]: ([], 1), SCANS[2]: ([31.0, 14.3, 12.6], 0)}
#: A0002 (one patient, two kernels): the mass is reported on both (0.98, 0.98), with no false
#: positive since the 3.3 mm finding beside it lies in the mass's ground glass and is folded into it
#: (``masses.Segment``; 1 each before the mass safety net). Measured 79.6 mm against 76.3 mm on
#: B40f and, softened 0.5 mm first, 75.0 against 77.6 on B70f (test_nodule_lung_only: within 15 %
#: of each other, 6 %); its solid part 68.7 mm on both.
A0002_MAX_FALSE_POSITIVES = {"B40f": 1, "B70f": 1}
#: The mass's measured long axis against the annotation's longest side (measured +4 % on B40f;
#: +14 % while the vessels and spicules around it were taken as its halo).
MASS_LONG_AXIS_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def scans(data_dir):
    loaded = {}
    for name in SCANS:
        volume = data.load(data_dir, name)
        loaded[name] = (volume, lidc.load_annotation(volume, data_dir / name))
    return loaded


@pytest.fixture(scope="module")
def a0002(data_dir) -> patients.Series:
    return patients.load(data_dir, "lung-pet-ct-dx-A0002", data.HELD_OUT[0])


@pytest.fixture(scope="module")
def a0002_findings(data_dir) -> dict[str, tuple[patients.Series, list]]:
    """Per kernel: the series and the pipeline's reported findings by the fold that never saw A0002."""
    pipeline = fold_pipeline("lung-pet-ct-dx-A0002")
    found = {}
    for name in data.HELD_OUT:
        series = patients.load(data_dir, "lung-pet-ct-dx-A0002", name)
        found[name.rsplit("/", 1)[-1]] = (series, pipeline.search(series.volume).nodules)
    return found


@pytest.mark.slow
def test_each_scan_has_the_consensus_lesions_its_readers_agree_on(scans):
    for name, (_, annotation) in scans.items():
        sizes = [round(les.diameter_mm, 1) for les in annotation.lesions]
        assert len(annotation.lesions) == EXPECTED_LESIONS[name], (name, sizes)
        assert 28.0 <= annotation.lesions[0].diameter_mm <= 36.0, (name, sizes)
        assert all(len({r.reader for r in les.readers}) >= lidc.MIN_READERS for les in annotation.lesions)
    small = sorted(les.diameter_mm for les in scans[SCANS[2]][1].lesions[1:])
    assert 11.0 <= small[0] and small[-1] <= 16.0, small


@pytest.mark.slow
def test_consensus_long_axis_matches_the_readers_mean(scans):
    for name, (_, annotation) in scans.items():
        for les in annotation.lesions:
            difference = abs(les.diameter_mm - les.readers_mean_diameter_mm)
            assert difference <= DIAMETER_TOLERANCE_MM, (name, les.diameter_mm, les.readers_mean_diameter_mm)


@pytest.mark.slow
def test_lesion_masks_lie_on_the_lesions_in_the_ct(scans):
    volume, annotation = scans[SCANS[0]]
    solid = annotation.lesions[0]
    assert volume.array[solid.window][solid.mask].mean() > SOLID_MIN_HU
    # The same mask flipped top to bottom in its slices would sit on other tissue: a check that
    # rows and columns were not swapped or mirrored (the LIDC edge map is x = column, y = row).
    for name, (volume, annotation) in scans.items():
        for les in annotation.lesions:
            assert volume.array[les.window][les.mask].mean() > ANY_MIN_HU, (name, les.diameter_mm)
            centre = volume.lps_to_kji(les.center_lps)
            window_centre = [(s.start + s.stop - 1) / 2 for s in les.window]
            assert np.allclose(centre, window_centre, atol=max(les.mask.shape) / 2)


@pytest.mark.slow
def test_small_nodules_non_nodules_and_single_reader_marks_are_ignore_regions(scans):
    _, first = scans[SCANS[0]]
    reasons = {region.reason for region in first.ignore}
    assert reasons == {"small nodule", "non-nodule"}, reasons
    _, third = scans[SCANS[2]]
    single = [r for r in third.ignore if r.reason == "single reader"]
    # One reader drew a second contour below 0003's large lesion; nobody else did.
    assert len(single) == 1
    assert not any(_inside(les.center_lps, r.lps_box) for les in third.lesions for r in single)


@pytest.mark.slow
def test_an_xml_of_another_series_is_refused_with_a_clear_message(scans, data_dir):
    volume, _ = scans[SCANS[0]]
    other = lidc.read(lidc.xml_path(data_dir / SCANS[2]))
    with pytest.raises(lidc.LidcError, match="another series"):
        lidc.annotate(volume, other)


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(np.all(point >= box[0]) and np.all(point <= box[1]))


@pytest.mark.slow
def test_every_lidc_consensus_lesion_gets_a_candidate_within_the_budget(scans):
    for name, (volume, annotation) in scans.items():
        scan = candidates.find(volume)
        assert len(scan.candidates) <= candidates.MAX_CANDIDATES
        for les in annotation.lesions:
            on = [c for c in scan.candidates if _inside(scan.center_lps(c), _grown(les.lps_box))]
            assert on, (name, round(les.diameter_mm, 1))


@pytest.mark.slow
def test_the_faint_ground_glass_nodule_of_lidc_0002_is_boxed_by_a_ground_glass_candidate_28_of_31_mm(scans):
    volume, annotation = scans[SCANS[1]]
    nodule = annotation.lesions[0]
    scan = candidates.find(volume)
    sides = [scan.box_long_side_mm(c) for c in scan.candidates
             if c.source == "subsolid" and _inside(scan.center_lps(c), _grown(nodule.lps_box))]
    assert sides, "no ground-glass candidate on the nodule"
    assert max(sides) >= GROUND_GLASS_EXTENT_SHARE * nodule.diameter_mm, (sides, nodule.diameter_mm)


@pytest.mark.slow
def test_the_real_a0002_mass_is_a_candidate_boxed_close_to_whole(a0002):
    series = a0002
    mass = series.lesions[0]
    scan = candidates.find(series.volume)
    on = [c for c in scan.candidates if _inside(scan.center_lps(c), _grown(mass.lps_box))]
    largest = max(scan.box_long_side_mm(c) for c in on)
    assert largest >= MASS_EXTENT_SHARE * mass.diameter_mm, (largest, mass.diameter_mm)


def _grown(box: np.ndarray) -> np.ndarray:
    return np.array([box[0] - evaluate.HIT_MARGIN_MM, box[1] + evaluate.HIT_MARGIN_MM])


def fold_pipeline(patient: str) -> NoduleDetection:
    """The nodule pipeline with the scorer trained without ``patient``, at that fold's threshold."""
    torch.set_num_threads(CPU_THREADS)
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu",
                                            model=str(patients.SCORER_FOLDS / patient)))


def reported_on(pipeline: NoduleDetection, series: patients.Series) -> tuple[dict[str, bool], list]:
    """The pipeline's reported findings on a series: which lesions >= 10 mm were reported, and the
    findings on no lesion and in no ignore region (false positives)."""
    findings = pipeline.search(series.volume).nodules
    hit = {f"{les.label} {les.diameter_mm:.1f} mm": any(evaluate.hits(d, les.lps_box) for d, _ in findings)
           for les in series.lesions if les.diameter_mm >= MIN_LESION_MM}
    false = [d for d, _ in findings
             if not any(evaluate.hits(d, b) for b in [les.lps_box for les in series.lesions] + series.ignore)]
    return hit, false


@pytest.mark.parametrize("name", SCANS)
@pytest.mark.slow
def test_lidc_lesions_are_reported_by_the_scorer_that_never_saw_their_patient(scans, data_dir, name):
    volume, _ = scans[name]
    patient = name.split("/")[1]
    series = patients.load(data_dir, patient, name, volume)
    hit, false = reported_on(fold_pipeline(patient), series)
    expected, max_false = LIDC_FLOORS[name]
    reported = sorted(round(les.diameter_mm, 1) for les in series.lesions
                      if les.diameter_mm >= MIN_LESION_MM and hit[f"{les.label} {les.diameter_mm:.1f} mm"])
    assert set(expected) <= set(reported), (reported, hit)
    assert len(false) <= max_false, [round(d.score, 3) for d in false]


@pytest.mark.parametrize("kernel", ["B40f", "B70f"])
@pytest.mark.slow
def test_the_a0002_mass_is_reported_by_the_scorers_that_never_saw_the_patient(a0002_findings, kernel):
    series, findings = a0002_findings[kernel]
    mass = series.lesions[0]
    assert any(evaluate.hits(d, mass.lps_box) for d, _ in findings), "the mass is not reported"
    false = [d for d, _ in findings if not evaluate.hits(d, mass.lps_box)]
    assert len(false) <= A0002_MAX_FALSE_POSITIVES[kernel], [round(d.score, 3) for d in false]


@pytest.mark.slow
def test_on_b40f_the_a0002_mass_is_reported_whole_and_measured_within_25_percent(a0002_findings):
    series, findings = a0002_findings["B40f"]
    mass = series.lesions[0]
    on = [(d, m) for d, m in findings if evaluate.hits(d, mass.lps_box)]
    box = max(float(np.max(d.lps_corners.max(axis=0) - d.lps_corners.min(axis=0))) for d, _ in on)
    assert box >= MASS_EXTENT_SHARE * mass.diameter_mm, (box, mass.diameter_mm)
    long_axis = max(m.diameter_mm for _, m in on)
    assert abs(long_axis - mass.diameter_mm) <= MASS_LONG_AXIS_TOLERANCE * mass.diameter_mm, long_axis


@pytest.mark.peers
@pytest.mark.slow
def test_the_scorer_pipeline_writes_the_mass_as_one_segment_and_sr_group_that_validate(data_dir, tmp_path):
    pipeline = fold_pipeline("lung-pet-ct-dx-A0002")
    result = pipeline.run(JobInput(series={"series": chest_files(data_dir, "B40f")}, output_dir=tmp_path))
    # SEG, SR, presentation state, KOS, and the summary plus a key image per nodule
    assert len(result.outputs) == 4 + 1 + len(result.summary.nodules)
    for path in result.outputs:
        report = dciodvfy(path)
        assert not report.errors, report.errors
    # One finding measures the mass (B40f: 79.6 mm long, 83 mL, as the bench measured it).
    longest = max(n.diameter_mm for n in result.summary.nodules)
    assert longest >= MASS_EXTENT_SHARE * 76.3, result.summary.nodules


def test_the_operating_point_is_the_lowest_score_with_at_most_2_false_positives_per_scan():
    # Two scans: negatives 0.9, 0.8, 0.7, 0.6, 0.5 and a lesion at 0.65: 4 false positives are
    # allowed, so the fifth-best negative (0.5) must fall below the threshold and 0.6 stay at it.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.65])
    labels = np.array([0, 0, 0, 0, 0, 1])
    threshold = train_scorer.operating_threshold(scores, labels, scans=2)
    assert 0.5 < threshold <= 0.6
    assert ((scores >= threshold) & (labels == 0)).sum() == 2 * train_scorer.TARGET_FP


def test_no_scorer_that_sets_a_threshold_has_seen_the_patient_it_scores_nor_the_held_out_one():
    # Three patients, a real series and a synthetic copy each, one row per (patient, copy).
    patients = np.array(["p1", "p1", "p2", "p2", "p3", "p3"])
    arrays = {"patient": patients, "copy": np.array([0, 1, 0, 1, 0, 1])}
    tasks = train_scorer.fold_tasks(arrays, np.arange(6), final=True)
    assert len(tasks) == 3 + 3 * 2 + 1  # outer folds, inner folds, the shipped scorer
    for key, task in tasks.items():
        trained_on = set(patients[task.train_rows])
        scored = set(patients[task.score_rows])
        assert not trained_on & set(key), key  # neither the held-out nor the left-out patient
        if len(key) == 2:  # an inner scorer scores only the real series of the patient it left out
            assert scored == {key[1]} and set(arrays["copy"][task.score_rows]) == {0}
    assert set(patients[tasks[()].train_rows]) == {"p1", "p2", "p3"}


def test_thin_slice_series_also_train_as_5_and_8_mm_slabs_and_thick_ones_as_they_are():
    thickness = {mm: [mm * f for f in train_scorer.slab_factors(mm)] for mm in (1.25, 2.5, 3.0, 8.0)}
    assert thickness == {1.25: [5.0, 7.5], 2.5: [5.0, 7.5], 3.0: [6.0, 9.0], 8.0: []}


def test_a_synthetic_copy_can_give_only_its_inserted_nodules_as_positives_not_the_real_mass_again():
    # Truth of a copy: one real lesion (index 0) then two inserted nodules; candidates on the real
    # lesion, on each nodule, a negative and one in a readers' ignore region.
    labels = np.array([1, 1, 1, 1, 0, -1], dtype=np.int8)
    which = np.array([0, 0, 1, 2, -1, -1], dtype=np.int32)
    inserted_only = train_scorer.copy_labels(labels, which, real_lesions=1, copy_positives="inserted")
    assert inserted_only.tolist() == [-1, -1, 1, 1, 0, -1]
    assert train_scorer.copy_labels(labels, which, 1, "all").tolist() == labels.tolist()


def test_a_cached_training_set_built_with_other_arguments_is_refused_naming_them():
    built = train_scorer.build_arguments(6, 8, 0, "inserted")
    arrays = {"built_with": np.array(json.dumps(built))}
    assert train_scorer.cache_mismatch(arrays, built) is None
    problem = train_scorer.cache_mismatch(arrays, train_scorer.build_arguments(10, 8, 0, "inserted"))
    assert problem is not None and "--synthetic 6 (asked 10)" in problem
    assert train_scorer.cache_mismatch({}, built) is None  # a cache from before the record
    lifted = train_scorer.build_arguments(6, 8, 0, "inserted", "lifted")
    problem = train_scorer.cache_mismatch(arrays, lifted)
    assert problem is not None and "--synthetic-ground-glass plateau (asked lifted)" in problem
    before_the_key = {k: v for k, v in built.items() if k != "synthetic_ground_glass"}
    assert train_scorer.cache_mismatch({"built_with": np.array(json.dumps(before_the_key))}, built) is None


def test_a_lesion_with_many_candidates_is_drawn_no_more_often_than_one_with_a_single_candidate():
    # A mass boxed by 40 candidates beside two nodules with one and three candidates.
    lesion = np.array([7] * 40 + [3] + [5] * 3)
    weights = train_scorer.lesion_weights(lesion)
    per_lesion = {int(k): float(weights[lesion == k].sum()) for k in np.unique(lesion)}
    assert per_lesion == pytest.approx({3: 1 / 3, 5: 1 / 3, 7: 1 / 3})


def test_each_fold_chooses_the_weighting_that_finds_most_lesions_then_fewest_false_positives_then_the_first():
    # One scan: negatives at 0.9, 0.5 and 0.3 (2 false positives allowed: the threshold falls
    # between 0.3 and 0.5), a 20 mm lesion (index 0, two candidates) and a 6 mm one (index 1, not counted).
    lesions = [{"diameter_mm": 20.0}, {"diameter_mm": 6.0}]
    arrays = {"label": np.array([0, 0, 0, 1, 1, 1]), "lesion": np.array([-1, -1, -1, 0, 0, 1]),
              "series": np.array(["s"] * 6)}
    rows = np.arange(6)
    misses = np.array([0.9, 0.5, 0.3, 0.1, 0.2, 0.9])  # the 20 mm lesion below the threshold
    finds = np.array([0.9, 0.5, 0.3, 0.1, 0.6, 0.0])  # one of its candidates above it
    chosen, numbers = train_scorer.choose(arrays, rows, {"candidates": misses, "mean": finds, "lesions": finds},
                                          lesions)
    # finds it; "lesions" ties with it and comes later in the tie order of
    # training/nodule/LOG.md, "Weighting chosen on the inner folds"
    assert chosen == "mean"
    assert numbers["candidates"]["lesion_series_found"] == 0 and numbers["mean"]["lesion_series_found"] == 1
    assert numbers["mean"]["lesion_series"] == 1 and numbers["mean"]["false_positives"] == 2
    assert train_scorer.choose(arrays, rows, {"candidates": misses, "mean": misses}, lesions)[0] == "candidates"


def test_scorer_training_counts_hits_as_the_evaluation_does():
    assert train_scorer.HIT_MARGIN_MM == evaluate.HIT_MARGIN_MM
    assert train_scorer.FP_RATES == evaluate.FP_RATES


def test_the_small_training_nodules_are_4_to_12_mm_mostly_solid_and_as_often_beside_something_as_free():
    rng = np.random.default_rng(0)
    specs = [synthesis.sample_small_spec(rng) for _ in range(2000)]
    assert all(4.0 <= s.diameter_mm <= 12.0 for s in specs)
    solid = np.mean([s.kind == "solid" for s in specs])
    beside = {"vessel": np.mean([s.vessel is not None for s in specs]),
              "pleura": np.mean([s.attachment == "pleura" for s in specs]),
              "fissure": np.mean([s.fissure is not None for s in specs])}
    assert solid == pytest.approx(0.7, abs=0.04)  # sampling spread of 2000 draws: about 0.01
    assert beside == pytest.approx({"vessel": 0.35, "pleura": 0.2, "fissure": 0.15}, abs=0.04)
    # A cache from before --small was built without small nodules.
    built = train_scorer.build_arguments(6, 8, 0, "inserted")
    before = {"built_with": np.array(json.dumps({k: v for k, v in built.items() if k != "small"}))}
    assert train_scorer.cache_mismatch(before, built) is None
    assert "--small 0 (asked 6)" in str(train_scorer.cache_mismatch(before, train_scorer.build_arguments(
        6, 8, 0, "inserted", small=6)))


def test_a_killed_scorer_training_resumes_from_the_scorers_it_had_finished(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"patches": rng.integers(0, 255, (8, 2, 24, 24, 24), dtype=np.uint8),
              "scalars": rng.normal(size=(8, 2)).astype(np.float32), "label": np.array([1, 0] * 4, dtype=np.int8),
              "lesion": np.array([0, -1] * 4)}
    train_scorer._SHARED.update(arrays=arrays, epochs=1, seed=0, device="cpu")
    first = {("candidates", "a"): train_scorer.Task(np.arange(4), np.arange(4, 8))}
    done = train_scorer.run_tasks(first, jobs=1, done=tmp_path)
    both = first | {("candidates", "b"): train_scorer.Task(np.arange(4, 8), np.arange(4))}
    resumed = train_scorer.run_tasks(both, jobs=1, done=tmp_path)
    assert resumed[("candidates", "a")].seconds == done[("candidates", "a")].seconds  # kept, not trained again
    assert np.array_equal(resumed[("candidates", "a")].scores, done[("candidates", "a")].scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates-a.pt", "candidates-b.pt"]
