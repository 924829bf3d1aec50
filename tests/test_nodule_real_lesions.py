"""Real lesions: LIDC-IDRI reader XML turned into lesions (lidc-idri-0001..0003), and the
candidate stage on them and on the real A0002 mass.

What the data README says the scans hold (each a ~3 cm lesion contoured by at least two readers,
0003 two more of 11-16 mm) must come out of ``pipelines.nodule.lidc``, on the right voxels, with
the readers' other marks kept as ignore regions. The candidate stage (``candidates``) must put a
candidate on every one of those lesions and box the A0002 mass close to whole, within its budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.nodule import candidates, data, evaluate, lidc, patients

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
#: reach this share of it (the issue's target). Measured: 68.0 mm, 0.89.
MASS_EXTENT_SHARE = 0.6


@pytest.fixture(scope="module")
def scans(data_dir):
    loaded = {}
    for name in SCANS:
        volume = data.load(data_dir, name)
        loaded[name] = (volume, lidc.load_annotation(volume, data_dir / name))
    return loaded


def test_each_scan_has_the_consensus_lesions_its_readers_agree_on(scans):
    for name, (_, annotation) in scans.items():
        sizes = [round(les.diameter_mm, 1) for les in annotation.lesions]
        assert len(annotation.lesions) == EXPECTED_LESIONS[name], (name, sizes)
        assert 28.0 <= annotation.lesions[0].diameter_mm <= 36.0, (name, sizes)
        assert all(len({r.reader for r in les.readers}) >= lidc.MIN_READERS for les in annotation.lesions)
    small = sorted(les.diameter_mm for les in scans[SCANS[2]][1].lesions[1:])
    assert 11.0 <= small[0] and small[-1] <= 16.0, small


def test_consensus_long_axis_matches_the_readers_mean(scans):
    for name, (_, annotation) in scans.items():
        for les in annotation.lesions:
            difference = abs(les.diameter_mm - les.readers_mean_diameter_mm)
            assert difference <= DIAMETER_TOLERANCE_MM, (name, les.diameter_mm, les.readers_mean_diameter_mm)


def test_lesion_masks_lie_on_the_lesions_in_the_ct(scans):
    volume, annotation = scans[SCANS[0]]
    solid = annotation.lesions[0]
    assert volume.array[solid.window][solid.mask].mean() > SOLID_MIN_HU
    # The same mask flipped top to bottom in its slices would sit on other tissue: a check that
    # rows and columns were not swapped or mirrored (the LIDC edge map is x = column, y = row).
    for name, (volume, annotation) in scans.items():
        for les in annotation.lesions:
            assert volume.array[les.window][les.mask].mean() > ANY_MIN_HU, (name, les.diameter_mm)
            centre = volume.lps_to_index(les.center_lps)
            window_centre = [(s.start + s.stop - 1) / 2 for s in les.window]
            assert np.allclose(centre, window_centre, atol=max(les.mask.shape) / 2)


def test_small_nodules_non_nodules_and_single_reader_marks_are_ignore_regions(scans):
    _, first = scans[SCANS[0]]
    reasons = {region.reason for region in first.ignore}
    assert reasons == {"small nodule", "non-nodule"}, reasons
    _, third = scans[SCANS[2]]
    single = [r for r in third.ignore if r.reason == "single reader"]
    # One reader drew a second contour below 0003's large lesion; nobody else did.
    assert len(single) == 1
    assert not any(_inside(les.center_lps, r.lps_box) for les in third.lesions for r in single)


def test_an_xml_of_another_series_is_refused_with_a_clear_message(scans, data_dir):
    volume, _ = scans[SCANS[0]]
    other = lidc.read(lidc.xml_path(data_dir / SCANS[2]))
    with pytest.raises(lidc.LidcError, match="another series"):
        lidc.annotate(volume, other)


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(np.all(point >= box[0]) and np.all(point <= box[1]))


def test_every_lidc_consensus_lesion_gets_a_candidate_within_the_budget(scans):
    for name, (volume, annotation) in scans.items():
        scan = candidates.find(volume)
        assert len(scan.candidates) <= candidates.MAX_CANDIDATES
        for les in annotation.lesions:
            on = [c for c in scan.candidates if _inside(scan.center_lps(c), _grown(les.lps_box))]
            assert on, (name, round(les.diameter_mm, 1))


def test_the_real_a0002_mass_is_a_candidate_boxed_close_to_whole(data_dir):
    series = patients.load(data_dir, "lung-pet-ct-dx-A0002", data.HELD_OUT[0])
    mass = series.lesions[0]
    scan = candidates.find(series.volume)
    on = [c for c in scan.candidates if _inside(scan.center_lps(c), _grown(mass.lps_box))]
    largest = max(float(np.max(np.diff(scan.box_lps(c), axis=0))) for c in on)
    assert largest >= MASS_EXTENT_SHARE * mass.diameter_mm, (largest, mass.diameter_mm)


def _grown(box: np.ndarray) -> np.ndarray:
    return np.array([box[0] - evaluate.HIT_MARGIN_MM, box[1] + evaluate.HIT_MARGIN_MM])
