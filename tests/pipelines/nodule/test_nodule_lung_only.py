"""Findings a radiologist can trust: only in the lung, one per lesion, the same on every reconstruction.

- On cptac-luad-C3N-00247 the shipped detector found, before, a 21 mm "nodule" on the oesophagus
  beside the right main bronchus (centre at LPS -5.6, -125.4, -75.7). Checked against a
  mediastinum mask made independently of the pipeline (``tests.support.mediastinum``, its picture in
  ``tests/artefacts/``).
- On LIDC-IDRI-0003 the 14.3 mm lesion was reported twice (two boxes, overlapping masks).
- On Lung-PET-CT-Dx A0002 (one acquisition, B40f and B70f) the mass measured 79.6 and 103.1 mm.
- The parts: the lung-contact rule on a chest phantom whose answer is known, the merge of touching
  segmentations, the airway tree and the noise index on real scans.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipelines.base import PipelineSettings
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR
from pipelines.nodule.detector import Detection
from pipelines.nodule.harmonize import SHARP_NOISE_HU, TARGET_NOISE_HU, harmonize
from pipelines.nodule.lesions import CALCIFIED_HU, CALCIFIED_MM, in_lung, merge_touching, not_skeletal
from pipelines.nodule.measure import Measurement, measure, measure_mask, source_box, touch, voxel_window
from pipelines.nodule.parenchyma import MIN_LUNG_CONTACT, parenchyma
from pipelines.nodule.pipeline import NoduleDetection
from pipelines.volume import Volume
from tests.support.mediastinum import mediastinum_mask
from training.nodule import data, evaluate, patients

C3N = "ct-chest/cptac-luad-C3N-00247"
LIDC_0003 = "ct-chest/lidc-idri-0003/ct"
LIDC_0002 = "ct-chest/lidc-idri-0002/ct"
#: LIDC-IDRI-0002's osteophyte on a thoracic vertebral body, bulging into the right paravertebral
#: lung (centre LPS mm): reported as a 15.6 mm, 524 HU "nodule" by a retrained scorer (training/nodule/LOG.md,
#: "More small nodules in the scorer's training copies"), and passing the in-lung rule.
OSTEOPHYTE_LPS = (-13.2, 27.8, -192.5)
#: The box (LPS mm, corners) of the old pipeline's "nodule" on C3N-00247's oesophagus: segmented
#: in it, 88 % of its voxels lie in the mediastinum mask (the real tumour's: 23 %, against the heart).
OESOPHAGUS_BOX_LPS = ((-15.8, -133.8, -81.0), (0.2, -117.8, -65.0))
#: A finding is in the mediastinum when its centre is, or more than this share of its voxels.
MEDIASTINAL_SHARE = 0.5
#: C3N-00247's calcified focus (6.9 mm, 363 HU), a false positive of the shipped scorer before (issue 64).
CALCIFIED_FOCUS_LPS = (-19.0, -232.0, -157.0)
#: The A0002 mass's long axis on the two kernels: measured 79.6 mm (B40f) and 75.0 mm (B70f), 6 %
#: (86.8 and 83.5 mm, 4 %, while the vessels and spicules around it were taken as its halo).
SAME_SIZE_TOLERANCE = 0.15


def shipped() -> NoduleDetection:
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(DEFAULT_SCORER_DIR)))


def fold(patient: str) -> NoduleDetection:
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu",
                                            model=str(patients.SCORER_FOLDS / patient)))


def _index(volume: Volume, lps) -> tuple[int, int, int]:
    k, j, i = np.round(volume.lps_to_kji(np.asarray(lps, dtype=np.float64))).astype(int)
    return int(k), int(j), int(i)


@pytest.fixture(scope="module")
def c3n_found(data_dir):
    """C3N-00247 as acquired and what the shipped pipeline reports on it."""
    series = patients.load(data_dir, "cptac-luad-C3N-00247", C3N)
    return series, shipped().search(series.volume).nodules


@pytest.mark.slow
def test_on_c3n_00247_the_tumour_is_reported_and_nothing_whose_centre_is_in_the_mediastinum(c3n_found):
    series, found = c3n_found
    mediastinum = mediastinum_mask(series.volume)
    old = measure(series.volume, *source_box(series.volume, np.array(OESOPHAGUS_BOX_LPS)))
    assert old is not None and _mediastinal_share(mediastinum, old) > MEDIASTINAL_SHARE, "the mask misses the old finding"
    tumour = series.lesions[0]
    assert any(evaluate.hits(d, tumour.lps_box) for d, _ in found), "the tumour (25.4 mm) is not reported"
    inside = [(m.center_lps, _mediastinal_share(mediastinum, m)) for _, m in found
              if mediastinum[_index(series.volume, m.center_lps)] or _mediastinal_share(mediastinum, m) > MEDIASTINAL_SHARE]
    assert inside == [], inside


@pytest.mark.slow
def test_the_calcified_granuloma_of_c3n_00247_is_not_reported_as_a_nodule(c3n_found):
    """The 6.9 mm focus at LPS [-19, -232, -157], segment mean 363 HU, scored 0.823 by the shipped
    scorer, is calcified throughout (``lesions.not_calcified``: below 10 mm, mean above 200 HU)."""
    series, found = c3n_found
    spacing = np.asarray(series.volume.spacing[::-1])
    focus = series.volume.lps_to_kji(np.array(CALCIFIED_FOCUS_LPS))
    near = [m.center_lps for _, m in found
            if np.linalg.norm((series.volume.lps_to_kji(np.asarray(m.center_lps)) - focus) * spacing) < 5.0]
    assert near == [], near


def _mediastinal_share(mediastinum: np.ndarray, measured: Measurement) -> float:
    return float(mediastinum[measured.window][measured.mask].mean())


@pytest.mark.slow
def test_lidc_0003_gives_three_findings_one_per_consensus_lesion(data_dir):
    series = patients.load(data_dir, "lidc-idri-0003", LIDC_0003)
    found = shipped().search(series.volume).nodules
    per_lesion = [sum(evaluate.hits(d, les.lps_box) for d, _ in found) for les in series.lesions]
    assert per_lesion == [1, 1, 1], [(round(les.diameter_mm, 1), n) for les, n in zip(series.lesions, per_lesion)]
    assert len(found) == 3, [(round(d.score, 3), round(m.diameter_mm, 1)) for d, m in found]


@pytest.mark.slow
def test_the_a0002_mass_is_found_on_both_kernels_and_measured_alike_within_15_percent(data_dir):
    pipeline = fold("lung-pet-ct-dx-A0002")
    long_axes = {}
    for name in data.HELD_OUT:
        series = patients.load(data_dir, "lung-pet-ct-dx-A0002", name)
        on_mass = [m.diameter_mm for d, m in pipeline.search(series.volume).nodules
                   if evaluate.hits(d, series.lesions[0].lps_box)]
        assert on_mass, f"the mass is not reported on {name}"
        long_axes[name] = max(on_mass)
    low, high = sorted(long_axes.values())
    assert high - low <= SAME_SIZE_TOLERANCE * high, long_axes


def test_a_sharp_kernel_is_softened_to_a_standard_kernels_noise_and_a_soft_one_left_alone(data_dir):
    b70f, b40f = data.load(data_dir, data.HELD_OUT[1]), data.load(data_dir, data.HELD_OUT[0])
    sharp, soft = harmonize(b70f), harmonize(b40f)  # noise index 39.7 HU (10.3 after 0.5 mm) and 8.9 HU
    assert sharp.noise_hu > SHARP_NOISE_HU and sharp.sigma_mm > 0 and sharp.seen_noise_hu <= TARGET_NOISE_HU, sharp
    assert soft.sigma_mm == 0 and soft.noise_hu < SHARP_NOISE_HU and soft.volume is b40f, soft
    # Softened in-plane only: each slice keeps its mean (within 1 HU) and its place.
    assert np.abs(sharp.volume.array.mean(axis=(1, 2)) - b70f.array.mean(axis=(1, 2))).max() < 1.0


def test_the_airway_tree_of_c3n_00247_is_its_trachea_and_bronchi_and_not_its_lungs(data_dir):
    lungs = parenchyma(data.load(data_dir, C3N))
    voxel_ml = float(np.prod(lungs.spacing)) / 1000
    airway_ml = lungs.airways.sum() * voxel_ml  # measured 26 mL with walls, of 4430 mL aerated
    aerated_ml = lungs.aerated.sum() * voxel_ml
    assert 10 <= airway_ml <= 120, airway_ml
    assert airway_ml < 0.05 * aerated_ml, (airway_ml, aerated_ml)
    # The tree runs from the top of the thorax down to the hila: 49 of the 99 slices.
    slices_with_airway = np.flatnonzero(lungs.airways.any(axis=(1, 2)))
    assert slices_with_airway.size < 0.6 * lungs.airways.shape[0]


# The lung-contact rule on a phantom: a body of soft tissue, two lungs, a trachea between them.

def phantom() -> Volume:
    """40 slices x 96 x 128 at 2 mm, slice 0 the most superior: soft tissue (40 HU), two lungs
    (-850 HU) 16 mm apart, air outside, a trachea (-1000 HU, 16 mm wide) between the lungs on the
    top 20 slices, and main bronchi joining it to both lungs."""
    k, j, i = np.mgrid[:40, :96, :128]
    hu = np.full(k.shape, -1000.0, dtype=np.float32)
    body = ((j - 48) / 44.0) ** 2 + ((i - 64) / 60.0) ** 2 <= 1
    hu[body] = 40.0
    for centre in (38, 90):
        hu[(((j - 48) / 32.0) ** 2 + ((i - centre) / 22.0) ** 2 <= 1) & (k >= 4) & (k < 38)] = -850.0
    hu[((j - 30) ** 2 + (i - 64) ** 2 <= 16) & (k < 20)] = -1000.0
    hu[(k >= 17) & (k < 20) & (abs(j - 30) <= 2) & (i >= 40) & (i <= 88)] = -1000.0
    return Volume(array=hu, spacing=(2.0, 2.0, 2.0), origin=np.array([0.0, 0.0, 80.0]),
                  direction=np.diag([1.0, -1.0, -1.0]), sources=(), frames=(), frame_of_reference_uid=None,
                  modality="CT")


def ball(volume: Volume, centre_kji, radius_vox: float) -> Measurement:
    """A solid ball of soft tissue segmented at ``centre_kji``."""
    centre = np.array(centre_kji)
    start = np.maximum(centre - int(radius_vox) - 1, 0)
    stop = np.minimum(centre + int(radius_vox) + 2, volume.array.shape)
    grid = np.mgrid[tuple(slice(a, b) for a, b in zip(start, stop))]
    mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius_vox ** 2
    return measure_mask(volume, voxel_window(start, stop), mask)


def test_a_nodule_in_the_lung_and_one_on_the_pleura_are_kept_one_beside_the_trachea_is_not():
    volume = phantom()
    lungs = parenchyma(volume)
    assert lungs.airways[5, 30, 64] and not lungs.aerated[5, 30, 64], "the trachea is airway, not lung"
    inside = ball(volume, (25, 48, 38), 3)       # in the left-hand lung
    pleural = ball(volume, (25, 48, 18), 4)      # against its lateral wall, partly in the chest wall
    beside_trachea = ball(volume, (10, 22, 64), 3)  # between the lungs, against the trachea
    contacts = [lungs.lung_contact(m) for m in (inside, pleural, beside_trachea)]  # measured 1.0, 0.67, 0.0
    assert contacts[0] > 0.9 and contacts[1] >= MIN_LUNG_CONTACT > contacts[2], contacts
    detections = [Detection(np.zeros(6), np.zeros((8, 3)), score) for score in (0.9, 0.8, 0.7)]
    kept, outside = in_lung(lungs, list(zip(detections, (inside, pleural, beside_trachea))))
    assert [d.score for d, _ in kept] == [0.9, 0.8] and outside == 1


def test_a_spur_of_the_spine_is_left_out_as_bone_and_a_calcified_nodule_standing_in_the_lung_is_kept(data_dir):
    volume = harmonize(patients.load(data_dir, "lidc-idri-0002", LIDC_0002).volume).volume
    centre = np.asarray(OSTEOPHYTE_LPS)
    corners = np.array([centre + np.array([x, y, z]) for x in (-8, 8) for y in (-8, 8) for z in (-8, 8)])
    spur = measure(volume, *source_box(volume, corners))  # measured 20.0 mm, 474 HU
    assert spur is not None and spur.mean_hu is not None and spur.mean_hu > CALCIFIED_HU, spur
    assert spur.diameter_mm >= CALCIFIED_MM, spur.diameter_mm  # over the granuloma rule's size
    with_granuloma, granuloma = _calcified_nodule_deep_in_the_lung(volume, diameter_mm=12.0, hu=400.0)
    detections = [Detection(np.zeros(6), np.zeros((8, 3)), score) for score in (0.9, 0.8)]
    kept = not_skeletal(with_granuloma, list(zip(detections, (spur, granuloma))))
    assert [d.score for d, _ in kept] == [0.8], [(round(m.diameter_mm, 1), m.mean_hu) for _, m in kept]


def _calcified_nodule_deep_in_the_lung(volume: Volume, diameter_mm: float, hu: float) -> tuple[Volume, Measurement]:
    """``volume`` with a uniform ball painted where the aerated lung is deepest, and its segment."""
    lungs = parenchyma(volume)
    depth = ndi.distance_transform_edt(lungs.aerated, sampling=lungs.spacing)  # LIDC-0002: 21.8 mm deep
    centre = np.array(np.unravel_index(np.argmax(depth), depth.shape)) * lungs.stride
    spacing = np.asarray(volume.spacing[::-1])
    reach = np.ceil(diameter_mm / 2 / spacing).astype(int) + 1
    window = voxel_window(centre - reach, centre + reach + 1)
    grid = np.mgrid[window]
    mask = sum(((g - c) * d) ** 2 for g, c, d in zip(grid, centre, spacing)) <= (diameter_mm / 2) ** 2
    painted = volume.array.copy()
    painted[window][mask] = hu
    with_ball = dataclasses.replace(volume, array=painted)
    return with_ball, measure_mask(with_ball, window, mask)


def test_touching_segmentations_are_one_lesion_measured_once_with_the_best_score():
    volume = phantom()
    first = ball(volume, (25, 48, 38), 3)
    overlapping = ball(volume, (25, 48, 42), 3)
    beside = ball(volume, (25, 48, 49), 3)  # touches only ``overlapping``: joined through it
    apart = ball(volume, (25, 48, 90), 3)
    scores = (0.95, 0.7, 0.9, 0.8)
    found = [(Detection(np.zeros(6), np.tile(np.asarray(m.center_lps), (8, 1)), s), m)
             for s, m in zip(scores, (first, apart, overlapping, beside))]
    found.sort(key=lambda f: -f[0].score)
    merged = merge_touching(volume, found)
    assert [round(d.score, 2) for d, _ in merged] == [0.95, 0.7]
    joined = merged[0][1]
    separate_mm3 = sum(m.mask.sum() for m in (first, overlapping, beside)) * 8.0
    assert joined.volume_mm3 is not None and joined.volume_mm3 < separate_mm3  # the overlap counted once
    assert joined.diameter_mm >= 2 * first.diameter_mm, (joined.diameter_mm, first.diameter_mm)  # 13 voxels end to end
    assert merged[1][1] is apart


def test_a_mass_touching_another_mass_of_the_safety_net_is_measured_on_its_own_not_as_one_lesion_across_both():
    """LIDC-0002's bench copy: a 65 mm part-solid mass whose halo touches the 36 mm hilar "mass"
    was one 82 mm lesion (69.9 mm alone). A scorer finding touching both joins the better mass only."""
    volume = phantom()
    tumour = ball(volume, (25, 48, 33), 5)
    hilar = ball(volume, (25, 48, 44), 5)  # 11 voxels apart: the two balls lie side by side
    bridge = ball(volume, (25, 48, 38), 1)  # a scorer finding on the seam, touching both
    found = [(Detection(np.zeros(6), np.tile(np.asarray(m.center_lps), (8, 1)), score, mass), m)
             for score, mass, m in ((0.72, True, tumour), (0.6, False, bridge), (0.51, True, hilar))]
    assert touch(tumour, hilar)
    merged = merge_touching(volume, found)
    assert [(round(d.score, 2), d.mass) for d, _ in merged] == [(0.72, True), (0.51, True)]
    assert merged[0][1].diameter_mm == pytest.approx(tumour.diameter_mm, abs=2.0)  # 20 mm, not 42 across both
    assert merged[1][1] is hilar
