"""nodule-detection with the shipped weights on the held-out real chest CT (lung-pet-ct-dx-A0002).

The scan was never trained on (``training.nodule.data``). Detection is checked on synthetic
nodules inserted with a fixed seed (6-30 mm: on 8 mm slices a 4-5 mm nodule is a faint smudge on
one slice, the model card reports that band separately), on the real annotated tumour, and the
measurements on an inserted sphere of known size. Thresholds are set a margin below what the
model card's evaluation measured, so they catch a broken pipeline, not seed noise.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.data.box_utils import box_iou

from pipelines.base import JobInput, NotApplicable, PipelineSettings
from pipelines.model_folder import ModelFolderError
from pipelines.nodule import candidates, scorer
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR, CandidateDetector
from pipelines.nodule.detector import DEFAULT_MODEL_DIR, Detection, NoduleDetector, Settings
from pipelines.nodule.lungs import lung_mask
from pipelines.nodule.measure import measure, source_box
from pipelines.nodule.network import Architecture
from pipelines.nodule.pipeline import NoduleDetection, fuse_nested, near_lungs
from pipelines.nodule.scorer import ScorerNet
from pipelines.volume import Volume
from tests.support.cpu_share import CPU_THREADS
from tests.support.nodule_series import chest_files, rewrite_series, water_phantom
from training.nodule import data, evaluate, synthesis, train, train_scorer

#: Inserted nodules per trial scan, their size range, and what the pipeline must achieve on them.
NODULES = 6
SIZE_RANGE_MM = (6.0, 30.0)
#: Measured at the calibrated reporting threshold (0.994): 2 of 12 found, no false positive. The
#: floors keep a margin below that: they catch a broken pipeline, not a weak model.
MIN_SENSITIVITY = 0.08
MAX_FP_PER_SCAN = 1.0
SEEDS = (11, 12)
#: Inserted sphere for the measurement check, and the tolerances stated in
#: training/nodule/LOG.md, "Measurements (`measure.py`, tests in `tests/pipelines/nodule/test_nodule_pipeline.py`)": the
#: voxel-count volume of a 20 mm sphere on 8 mm slices depends on where the slices cut it.
SPHERE_MM = 20.0
DIAMETER_TOLERANCE_MM = 2.5
MEASURED_SCANS = [(data.HELD_OUT[0], 0.40), (data.TRAINING, 0.15)]
#: The real tumour (A0002 B40f). Its best candidate scores at least MIN_TUMOR_SCORE (measured
#: 0.985, below the reporting threshold). Its largest candidate scoring TUMOR_CANDIDATE_SCORE or
#: more (the bundle's default threshold) measures within TUMOR_LONG_AXIS_TOLERANCE of the longest
#: annotated side (76 mm), at least TUMOR_MIN_VOLUME_MM3, with TUMOR_MIN_INSIDE of its voxels in
#: the annotated box. Measured: 35.5 mm (-53 %), 12.7 mL, all inside: the model boxes the mass in
#: pieces, and the largest box holds only its lung part (model card, "Limits").
MIN_TUMOR_SCORE = 0.95
TUMOR_CANDIDATE_SCORE = 0.5
TUMOR_LONG_AXIS_TOLERANCE = 0.6
TUMOR_MIN_VOLUME_MM3 = 8_000.0
TUMOR_MIN_INSIDE = 0.8
#: Best IoU of a centred nodule box with an anchor shape, for every size synthesised. ATSS sets
#: each box's own IoU cut (mean + std over its candidate anchors), so this only has to show that
#: no size falls in a gap between shapes; the worst case, near 6.5 mm, is 0.45.
MIN_ANCHOR_IOU = 0.4


@pytest.fixture(scope="module")
def pipeline() -> NoduleDetection:
    torch.set_num_threads(CPU_THREADS)
    # The RetinaNet folder (no longer the default detector): these tests are about it.
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(DEFAULT_MODEL_DIR)))


@pytest.fixture(scope="module")
def held_out(data_dir) -> Volume:
    return data.load(data_dir, data.HELD_OUT[0])


@pytest.fixture(scope="module")
def tumor_box(data_dir, held_out) -> np.ndarray:
    return data.tumor_boxes(data_dir, data.HELD_OUT[0], held_out)[0]


def reported(pipeline: NoduleDetection, volume: Volume):
    """The pipeline's post-processed, measured findings for a volume: [(detection, measurement)]."""
    return pipeline.search(volume).nodules


@pytest.mark.slow
def test_inserted_nodules_in_held_out_ct_are_found(pipeline, held_out, tumor_box):
    """Pooled over two seeded trial scans (12 nodules): per-scan counts of 6 are too noisy."""
    found, total, false, missed = 0, 0, 0, []
    for seed in SEEDS:
        volume, truths = evaluate.insert_nodules(
            held_out, NODULES, np.random.default_rng(seed), [tumor_box], *SIZE_RANGE_MM
        )
        findings = reported(pipeline, volume)
        hit = {n for n, t in enumerate(truths) for d, _ in findings if evaluate.hits(d, t.lps_box)}
        found, total = found + len(hit), total + len(truths)
        missed += [round(t.diameter_mm, 1) for n, t in enumerate(truths) if n not in hit]
        false += sum(1 for d, _ in findings
                     if not any(evaluate.hits(d, t.lps_box) for t in truths) and not evaluate.hits(d, tumor_box))
    assert found / total >= MIN_SENSITIVITY, f"found {found}/{total}; missed nodules of {sorted(missed)} mm"
    assert false / len(SEEDS) <= MAX_FP_PER_SCAN, f"{false} false positives in {len(SEEDS)} scans"


@pytest.mark.slow
def test_real_annotated_tumor_is_a_top_candidate_and_its_largest_box_is_measured(
    pipeline, data_dir, held_out, tumor_box
):
    """The real tumour, through the pipeline's detection path (lung filter, fusion of nested boxes).

    Its best score is checked against ``MIN_TUMOR_SCORE``, not the reporting threshold, which it
    misses (see the model card). Its largest candidate at or above ``TUMOR_CANDIDATE_SCORE`` is
    segmented and measured as the pipeline would; the long axis is compared with the longest side
    of the annotated per-slice boxes and its SEG voxels must lie in the annotated box.
    """
    grid = pipeline.detector.grid(held_out)
    boxes = fuse_nested(near_lungs(grid, lung_mask(grid.hu, slice_axis=2), pipeline.detector.detect(grid),
                                   pipeline.lung_margin_mm))
    on_tumor = [d for d in boxes if _box_overlap(d.lps_corners, tumor_box) > 0.3]
    assert on_tumor and on_tumor[0].score >= MIN_TUMOR_SCORE, [round(d.score, 3) for d in on_tumor[:3]]
    measured = [measure(held_out, *source_box(held_out, d.lps_corners))
                for d in on_tumor if d.score >= TUMOR_CANDIDATE_SCORE]
    tumor = max((m for m in measured if m is not None), key=lambda m: m.volume_mm3)
    side_mm = max(max(b[2] - b[0], b[3] - b[1]) * held_out.spacing[0]
                  for _, b in data.annotated_slices(data_dir, data.HELD_OUT[0], held_out))
    assert abs(tumor.diameter_mm - side_mm) <= TUMOR_LONG_AXIS_TOLERANCE * side_mm, (tumor.diameter_mm, side_mm)
    assert tumor.volume_mm3 >= TUMOR_MIN_VOLUME_MM3, tumor.volume_mm3
    voxels = np.argwhere(tumor.mask) + [s.start for s in tumor.window]
    lps = held_out.kji_to_lps(voxels)
    within = np.all((lps >= tumor_box[0] - 2.0) & (lps <= tumor_box[1] + 2.0), axis=1).mean()
    assert within >= TUMOR_MIN_INSIDE, f"{within:.2f} of the tumour's SEG voxels lie in the annotated box"


def test_pieces_of_a_mass_are_folded_into_its_box():
    def box(low, high, score):
        grid_box = np.array([*low, *high], dtype=float)
        return Detection(grid_box, np.array([low, high], dtype=float), score)

    mass, piece = box((0, 0, 0), (40, 40, 20), 0.7), box((5, 5, 2), (12, 12, 6), 0.95)
    elsewhere, faint = box((60, 60, 0), (66, 66, 4), 0.9), box((50, 50, 0), (90, 90, 20), 0.3)
    fused = fuse_nested([piece, elsewhere, mass, faint])
    expected = [((0, 0, 0), 0.95), ((60, 60, 0), 0.9), ((50, 50, 0), 0.3)]
    assert [(tuple(d.grid_box[:3]), d.score) for d in fused] == expected


def test_anchors_cover_the_nodule_sizes():
    """Every synthetic size (4-60 mm) has an anchor shape that a centred box overlaps well."""
    s = NoduleDetector.load(DEFAULT_MODEL_DIR, "cpu").settings
    shapes = np.array([np.multiply(b, f) for f in s.feature_map_scales for b in s.base_anchor_shapes], float)
    anchors = torch.as_tensor(np.concatenate([-shapes / 2, shapes / 2], axis=1))
    for diameter in np.geomspace(4.0, 60.0, 12):
        size = np.maximum(diameter / np.asarray(s.spacing_mm), 1.0)
        box = torch.as_tensor(np.concatenate([-size / 2, size / 2])[None])
        assert float(box_iou(box, anchors).max()) >= MIN_ANCHOR_IOU, diameter


def test_mass_band_draws_lobulated_solid_masses_of_60_to_90_mm():
    """The training-only mass band (``train --mass-every``): sizes and what such masses look like."""
    rng = np.random.default_rng(0)
    masses = [synthesis.sample_spec(rng, max_mm=90.0, bands=(0.0, 0.0, 0.0, 1.0)) for _ in range(50)]
    assert all(60.0 <= m.diameter_mm <= 90.0 and m.lobes and m.kind != "ground-glass" for m in masses)
    assert sum(m.attachment == "pleura" for m in masses) >= 20


@pytest.mark.parametrize("rendering", synthesis.GROUND_GLASS_RENDERINGS)
def test_lifted_ground_glass_keeps_the_lungs_noise_where_the_plateau_smooths_it_away(rendering):
    """A 30 mm ground-glass nodule at -600 HU in lung of -850 HU with 40 HU of noise: both renderings
    reach the density (within 15 HU; measured -600 / -601); only the lifted one keeps the scan's
    noise (standard deviation 41 HU, the plateau 10 HU: a texture no real ground glass has)."""
    hu = np.random.default_rng(1).normal(-850.0, 40.0, (40, 40, 40)).astype(np.float32)
    spec = synthesis.NoduleSpec(diameter_mm=30.0, kind="ground-glass", ground_glass_hu=-600.0, texture_hu=20.0)
    synthesis.insert(hu, (1.0, 1.0, 1.0), (20.0, 20.0, 20.0), spec, np.random.default_rng(5), rendering)
    inside = hu[12:28, 12:28, 12:28]
    assert abs(float(inside.mean()) + 600.0) <= 15.0, float(inside.mean())
    if rendering == "lifted":
        assert 0.8 * 40.0 <= float(inside.std()) <= 1.3 * 40.0, float(inside.std())
    else:
        assert float(inside.std()) < 0.5 * 40.0, float(inside.std())
    with pytest.raises(ValueError, match="plateau or lifted"):
        synthesis.insert(hu, (1.0, 1.0, 1.0), (20.0, 20.0, 20.0), spec, np.random.default_rng(5), "smooth")


def test_a_mediastinal_mass_grows_from_the_medial_lung_border_into_the_mediastinum():
    """The training-only mediastinal site (``train --mass-sites``), on a phantom hemithorax whose
    midline lies toward +x: chest wall at low x, mediastinum at high x."""
    spacing = np.array([1.25, 1.25, 2.5])
    hu = np.full((100, 100, 50), 40.0, dtype=np.float32)
    hu[8:80, 10:90, 5:45] = -850.0
    lungs = hu < -400.0
    depth, medial = train._medial_border(lungs, spacing, toward_midline=1)
    assert medial[78, 50, 25] and not medial[9, 50, 25], "the medial border is the side toward the midline"
    assert not medial[44, 11, 25] and not medial[44, 50, 6], "front, back, apex and base are not medial"

    rng = np.random.default_rng(3)
    spec = synthesis.sample_spec(rng, max_mm=90.0, bands=(0.0, 0.0, 0.0, 1.0), mass_sites=(0.0, 0.0, 1.0))
    assert spec.attachment == "mediastinum"
    for _ in range(5):
        centre = synthesis.pick_center(lungs, spacing, spec, rng, depth_mm=depth * medial)
        inside_mm = (80 - 0.5 - centre[0]) * spacing[0]
        assert 0.1 * spec.diameter_mm / 2 - spacing[0] <= inside_mm <= 0.5 * spec.diameter_mm / 2 + spacing[0]
    inserted = synthesis.insert(hu.copy(), spacing, centre, spec, rng)
    lows, highs = np.array(inserted.box[:3]), np.array(inserted.box[3:])
    beyond = (highs[0] - 79.5) / (highs[0] - lows[0])
    assert 0.2 <= beyond <= 0.6, f"{beyond:.2f} of the mass's box lies in the mediastinum"


def test_settings_for_a_deeper_fpn_have_one_anchor_level_per_feature_map():
    assert Settings.for_architecture(Architecture()) == Settings()
    deeper = Settings.for_architecture(Architecture(returned_layers=[1, 2, 3]))
    assert deeper.feature_map_scales == (1, 2, 4, 8)
    assert all(r % d == 0 and r >= 400 for r, d in zip(deeper.roi_size[:2], deeper.size_divisible[:2]))


def _box_overlap(corners: np.ndarray, box: np.ndarray) -> float:
    """Intersection over the smaller box's volume (the annotation is per-slice, the box 3D)."""
    low, high = corners.min(axis=0), corners.max(axis=0)
    inter = np.prod(np.clip(np.minimum(high, box[1]) - np.maximum(low, box[0]), 0, None))
    return float(inter / min(np.prod(high - low), np.prod(box[1] - box[0])))


@pytest.mark.parametrize("name, volume_tolerance", MEASURED_SCANS)
@pytest.mark.slow
def test_inserted_sphere_is_measured_within_tolerance(data_dir, name, volume_tolerance):
    """Segmentation and measurement in the box a detector should give (the sphere's own box),
    independent of the detector's weights."""
    source = data.load(data_dir, name)
    array = source.array.copy()
    spacing = np.asarray(source.spacing[::-1])
    rng = np.random.default_rng(5)
    spec = synthesis.NoduleSpec(diameter_mm=SPHERE_MM, texture_hu=10.0)
    avoid = [(source.lps_to_kji(b.mean(axis=0)), 45.0) for b in data.tumor_boxes(data_dir, name, source)]
    centre = synthesis.pick_center(lung_mask(array, slice_axis=0), spacing, spec, rng, avoid)
    box = np.array(synthesis.insert(array, spacing, centre, spec, rng).box)
    volume = Volume(**{**source.__dict__, "array": array})

    measured = measure(volume, box[:3], box[3:])
    true_volume = np.pi / 6 * SPHERE_MM**3
    assert measured is not None
    # The centre is known to about half a slice.
    assert np.linalg.norm(np.asarray(measured.center_lps) - source.kji_to_lps(centre)) < source.spacing[2] / 2 + 1.0
    assert abs(measured.diameter_mm - SPHERE_MM) <= DIAMETER_TOLERANCE_MM, measured.diameter_mm
    assert abs(measured.volume_mm3 - true_volume) <= volume_tolerance * true_volume, measured.volume_mm3
    assert -100.0 < measured.mean_hu < 80.0  # a solid nodule, partial-volume edges included


@pytest.mark.slow
def test_a_torchscript_model_folder_gives_the_same_detections(pipeline, held_out, tmp_path):
    folder = tmp_path / "scripted"
    folder.mkdir()
    torch.jit.script(pipeline.detector.detector.network).save(str(folder / "model.ts"))
    shutil.copy(DEFAULT_MODEL_DIR / "params.toml", folder / "params.toml")
    scripted = NoduleDetector.load(folder, "cpu")
    grid = pipeline.detector.grid(held_out)
    ours, theirs = pipeline.detector.detect(grid)[:10], scripted.detect(grid)[:10]
    np.testing.assert_allclose([d.score for d in theirs], [d.score for d in ours], atol=1e-5)


def test_a_model_folder_without_parameters_is_refused_with_its_name(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="params"):
        NoduleDetector.load(tmp_path, "cpu")


def test_a_scorer_folder_without_its_threshold_or_with_foreign_weights_is_refused_with_its_name(tmp_path):
    folder = tmp_path / "scorer"
    train_scorer.write_folder(folder, {"scorer.pt": ScorerNet()}, 0.5, ground_glass=False)
    written = (folder / "params.toml").read_text()
    (folder / "params.toml").write_text("[scorer]\n")
    with pytest.raises(ModelFolderError, match="report_threshold"):
        CandidateDetector.load(folder, "cpu")
    (folder / "params.toml").write_text(written)
    torch.save({"weight": torch.zeros(3)}, folder / "scorer.pt")
    with pytest.raises(ModelFolderError, match="scorer.pt is not a state dict"):
        CandidateDetector.load(folder, "cpu")


def test_a_scorer_folder_with_two_weightings_reports_their_mean_probability(tmp_path):
    folder = tmp_path / "scorer"
    torch.manual_seed(0)
    train_scorer.write_folder(folder, {"scorer.pt": ScorerNet(), "scorer-lesions.pt": ScorerNet()}, 0.5,
                              ground_glass=False)
    assert "weights = ['scorer.pt', 'scorer-lesions.pt']" in (folder / "params.toml").read_text()
    pair = CandidateDetector.load(folder, "cpu")
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (4, 2, 24, 24, 24), dtype=np.uint8)
    scalars = rng.normal(size=(4, 2)).astype(np.float32)
    singles = [scorer.score(net, patches, scalars) for net in pair.nets]
    assert len(pair.nets) == 2 and not np.allclose(*singles)
    np.testing.assert_allclose(scorer.mean_score(pair.nets, patches, scalars), (singles[0] + singles[1]) / 2, atol=1e-6)
    (folder / "params.toml").write_text('[scorer]\nreport_threshold = 0.5\nweights = "scorer.pt"\n')
    with pytest.raises(ModelFolderError, match="weights must be a list"):
        CandidateDetector.load(folder, "cpu")


def test_a_scorer_folder_runs_the_candidate_stage_its_scorer_was_trained_with(tmp_path):
    shipped = CandidateDetector.load(DEFAULT_SCORER_DIR, "cpu")
    assert shipped.settings.ground_glass is (
        "ground_glass = true" in (DEFAULT_SCORER_DIR / "params.toml").read_text())
    folder = tmp_path / "scorer"
    for ground_glass in (True, False):
        train_scorer.write_folder(folder, {"scorer.pt": ScorerNet()}, 0.5, ground_glass)
        assert CandidateDetector.load(folder, "cpu").settings.ground_glass is ground_glass
    (folder / "params.toml").write_text("[scorer]\nreport_threshold = 0.5\n[candidates]\nground_glass = 1\n")
    with pytest.raises(ModelFolderError, match="ground_glass must be true or false"):
        CandidateDetector.load(folder, "cpu")


def test_a_ground_glass_ball_is_a_candidate_and_a_10_mm_vessel_beside_it_is_not():
    # 2 mm grid of aerated lung (-850 HU, noise 20): a 32 mm ball at -650 HU, a 10 mm solid vessel.
    rng = np.random.default_rng(0)
    n = 80
    hu = np.full((n, n, n), -850.0, np.float32) + rng.normal(0, 20, (n, n, n)).astype(np.float32)
    x, y, z = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    ball = (x - 25) ** 2 + (y - 40) ** 2 + (z - 40) ** 2 <= 8 ** 2
    hu[ball] = -650.0
    hu[(y - 40) ** 2 + (z - 15) ** 2 <= 2.5 ** 2] = 40.0
    found = candidates.subsolid_candidates(hu, np.ones(hu.shape, dtype=bool))
    assert len(found) == 1, [(c.center, c.diameter_mm) for c in found]
    # Measured: centre 0.1 voxel off, equivalent diameter 34.4 mm (the ball's coverage after smoothing).
    assert np.linalg.norm(found[0].center - [25, 40, 40]) <= 1.0
    assert 24.0 <= found[0].diameter_mm <= 40.0


def test_tiny_series_is_not_applicable(pipeline, data_dir, tmp_path):
    files = rewrite_series(chest_files(data_dir)[:4], tmp_path / "tiny")
    with pytest.raises(NotApplicable, match="covers 32 mm"):
        pipeline.run(JobInput(series={"series": files}, output_dir=tmp_path / "out"))


def test_a_series_of_slices_thicker_than_validated_is_not_applicable_instead_of_none_detected(
        pipeline, data_dir, tmp_path):
    """Every other slice of the 8 mm chest series (the thickest the detector was validated on) is a
    16 mm series: no "none detected" or finding is written, and the reason names the thickness."""
    files = rewrite_series(chest_files(data_dir)[::2], tmp_path / "thick", SliceThickness="16")
    with pytest.raises(NotApplicable, match="slices of 16 mm: nodule detection is validated on slices of at most 8 mm"):
        pipeline.run(JobInput(series={"series": files}, output_dir=tmp_path / "out"))


def test_ct_without_lungs_is_not_applicable(pipeline, data_dir, tmp_path):
    files = water_phantom(data_dir, tmp_path / "phantom")
    with pytest.raises(NotApplicable, match="aerated lung"):
        pipeline.run(JobInput(series={"series": files}, output_dir=tmp_path / "out"))
