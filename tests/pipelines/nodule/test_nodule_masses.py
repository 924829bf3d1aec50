"""A lung cancer against the chest wall or the mediastinum is reported, never "none detected" (issue 64).

Before: on a Philips 5 mm chest CT the 6-8 cm cancer of the posterior left upper lobe, against the
posterior chest wall and the aortic arch, was reported as "none detected" (kernel L) or as an
8.8 mm piece of its edge (kernel B): the lung-contact rule and the scorer let it go. Now the mass
safety net (``pipelines.nodule.masses``) reports any solid lesion of 30 mm or more in the lung
envelope. Here: 50 mm solid masses inserted into cptac-luad-C3N-00247 against the posterior chest
wall (right lung) and against the mediastinum beside the aortic arch (left lung, posterior medial
border, ``training.nodule.sites``), on its sharp B70f slices as acquired and re-reconstructed soft by the
measured NPS (``training.nodule.reconstruction``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.base import PipelineSettings
from pipelines.nodule import masses
from pipelines.nodule.candidate_detector import DEFAULT_SCORER_DIR
from pipelines.nodule.harmonize import harmonize
from pipelines.nodule.parenchyma import SHELL_MM, parenchyma, shell
from pipelines.nodule.pipeline import MIN_SIDE_ML, NoduleDetection
from tests.pipelines.nodule.test_nodule_lung_only import phantom
from tests.support.mediastinum import centred_in, mediastinum_mask
from training.nodule import evaluate, patients, sites, synthesis
from training.nodule.reconstruction import Reconstruction, reconstruct

C3N = "ct-chest/cptac-luad-C3N-00247"
A0002 = "ct-chest/lung-pet-ct-dx-A0002/B40f"
MASS_MM = 50.0
#: (side, wall, height) of the two masses: posterior chest wall, and beside the aortic arch.
SITES = (("right", "posterior", 0.5), ("left", "mediastinum", 0.7))
#: The issue's target: the marked extent (long axis) within 20 % of the inserted diameter.
#: Measured on this scan: posterior 51.3 / 50.4 mm, beside the arch 50.6 / 50.6 mm (sharp / soft),
#: each one finding of the mass safety net, the sides 2591 and 1832 mL of aerated lung.
EXTENT_TOLERANCE = 0.20


@pytest.fixture(scope="module")
def pipeline() -> NoduleDetection:
    return NoduleDetection(PipelineSettings(name="nodule-detection", device="cpu", model=str(DEFAULT_SCORER_DIR)))


@pytest.fixture(scope="module")
def c3n(data_dir) -> patients.Series:
    return patients.load(data_dir, "cptac-luad-C3N-00247", C3N)


@pytest.fixture(scope="module", params=["sharp as acquired", "soft by NPS"])
def with_masses(request, c3n: patients.Series):
    """C3N-00247 on one kernel with the two masses inserted, and their LPS boxes."""
    volume = c3n.volume
    if request.param == "soft by NPS":
        volume = reconstruct(volume, Reconstruction("softer"), np.random.default_rng(0))
    array = volume.array.copy()
    lungs = sites.lungs_of(volume)
    boxes = []
    for side, wall, height in SITES:
        centre = sites.site(volume, lungs, side, wall, height, MASS_MM / 2)
        inserted = synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre,
                                    synthesis.NoduleSpec(MASS_MM, solid_hu=35.0), np.random.default_rng(1))
        corners = np.array([[k, j, i] for k in inserted.box[0::3] for j in inserted.box[1::3] for i in inserted.box[2::3]])
        lps = volume.kji_to_lps(corners)
        boxes.append(np.array([lps.min(axis=0), lps.max(axis=0)]))
    return request.param, dataclasses.replace(volume, array=array), boxes


@pytest.mark.slow
def test_a_50_mm_mass_on_the_chest_wall_and_one_beside_the_arch_are_each_one_finding_of_their_size(
        with_masses, c3n, pipeline):
    kernel, volume, boxes = with_masses
    found = pipeline.search(volume)
    for (_, wall, _), box in zip(SITES, boxes):
        on = [m.diameter_mm for d, m in found.nodules if evaluate.hits(d, box)]
        assert len(on) == 1, f"{kernel}: the {wall} mass gave {len(on)} findings ({on})"
        assert abs(on[0] - MASS_MM) <= EXTENT_TOLERANCE * MASS_MM, f"{kernel}: the {wall} mass measures {on[0]:.1f} mm"
    # Nothing else reported is centred in the mediastinum (the independent mask of tests.support.mediastinum).
    mediastinum = mediastinum_mask(volume)
    known = boxes + [les.lps_box for les in c3n.lesions]
    others = [m.center_lps for d, m in found.nodules if not any(evaluate.hits(d, b) for b in known)]
    centred = [c for c in others if centred_in(mediastinum, volume, c)]
    assert centred == [], centred
    # The report names the masses: no "none detected" statement anywhere in what is written.
    written = pipeline.results(volume, found.nodules)
    report = next(d for d in written if getattr(d, "Modality", "") == "SR")
    assert "No lung nodule" not in str(report) and min(found.sides_ml) >= MIN_SIDE_ML, found.sides_ml


@pytest.mark.slow
def test_an_80_mm_mass_filling_the_back_corner_of_the_lung_is_one_mass_of_its_size(c3n):
    """Against the posterior chest wall an 80 mm mass leaves lung on two sides only, which the 3-D
    closing cannot take back; the bay of the lung's outline it fills reaches the lung's back and is
    lung envelope (``masses._with_back_bays``). Measured: 75.4 mm, the only mass of the scan (before:
    no mass at all)."""
    volume = c3n.volume
    array = volume.array.copy()
    centre = sites.site(volume, sites.lungs_of(volume), "right", "posterior", 0.5, 40.0)
    inserted = synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre,
                                synthesis.NoduleSpec(80.0, solid_hu=35.0), np.random.default_rng(1))
    with_mass = dataclasses.replace(volume, array=array)
    found, _ = masses.find(with_mass, parenchyma(with_mass))
    low, high = np.array(inserted.box[:3]), np.array(inserted.box[3:])
    centres = [with_mass.lps_to_kji(np.asarray(m.measured.center_lps)) for m in found]
    assert len(found) == 1 and np.all((centres[0] >= low) & (centres[0] <= high)), centres
    assert abs(found[0].measured.diameter_mm - 80.0) <= EXTENT_TOLERANCE * 80.0, found[0].measured.diameter_mm


@pytest.mark.slow
def test_an_80_mm_mass_on_8_mm_slices_is_one_mass_of_its_size(data_dir):
    """On A0002's 8 mm slices a 4 mm shell held no voxel of the slices above and below a mass, so
    the lung over and under it was not counted: an 80 mm mass against the posterior wall of the
    left lung touched lung on 0.34 of its shell, under ``MIN_LUNG_CONTACT``, and was not reported.
    The shell now reaches the next slice (``parenchyma.shell``). Measured: 74.9 mm (88.4 while the
    vessels beside it were taken as its halo), lung contact 0.47, beside the real tumour of the
    right lung (its solid part 68.7 mm)."""
    volume = patients.load(data_dir, "lung-pet-ct-dx-A0002", A0002).volume
    array = volume.array.copy()
    centre = sites.site(volume, sites.lungs_of(volume), "left", "posterior", 0.5, 40.0)
    inserted = synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre,
                                synthesis.NoduleSpec(80.0, solid_hu=35.0), np.random.default_rng(1))
    with_mass = harmonize(dataclasses.replace(volume, array=array)).volume
    found, _ = masses.find(with_mass, parenchyma(with_mass))
    low, high = np.array(inserted.box[:3]), np.array(inserted.box[3:])
    on = [m for m in found if np.all((with_mass.lps_to_kji(np.asarray(m.measured.center_lps)) >= low)
                                     & (with_mass.lps_to_kji(np.asarray(m.measured.center_lps)) <= high))]
    assert len(on) == 1, [m.measured.diameter_mm for m in found]
    assert abs(on[0].measured.diameter_mm - 80.0) <= EXTENT_TOLERANCE * 80.0, on[0].measured.diameter_mm


@pytest.mark.slow
@pytest.mark.parametrize("reconstruction", ["B40f", "B70f"])
def test_a_30_mm_solid_mass_on_8_mm_slices_is_measured_without_the_vessels_beside_it(data_dir, reconstruction):
    """On A0002's 8 mm slices the vessels beside a solid mass are smeared into blobs of ground-glass
    density; summed, four of them covered 0.28 of the ring around the 30 mm mass (more than the old
    ``MIN_HALO_COVER`` 0.1), so it measured 46.1 mm. A halo is one piece covering a quarter of the
    ring (these: 0.12 at most; a part-solid mass's band 0.86). On B70f two of them join into one
    piece covering 0.252 of the ring (45.9 mm), but 0.10 and 0.24 of two quarters facing lung: a
    halo surrounds the solid part (``masses.MIN_QUARTER_SHARE``). The bench's first run, the
    posterior mass (moved to the left lung by the real tumour): measured 29.7 mm on both."""
    volume = patients.load(data_dir, "lung-pet-ct-dx-A0002", f"ct-chest/lung-pet-ct-dx-A0002/{reconstruction}").volume
    array = volume.array.copy()
    centre = sites.site(volume, sites.lungs_of(volume), "left", "posterior", 0.5, 15.0)
    inserted = synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre,
                                synthesis.NoduleSpec(30.0, solid_hu=35.0, core_fraction=0.7),
                                np.random.default_rng(20261126))
    with_mass = harmonize(dataclasses.replace(volume, array=array)).volume
    found, _ = masses.find(with_mass, parenchyma(with_mass))
    on = _sizes_on(with_mass, found, inserted.box)
    assert len(on) == 1 and abs(on[0] - 30.0) <= EXTENT_TOLERANCE * 30.0, on


def test_the_shell_around_a_finding_on_thick_slices_holds_the_slices_above_and_below():
    """A finding one slice thick: on 8 mm slices its shell is the slice above, the slice below and
    a 4 mm ring in its own slice (a 4 mm ball's shell reached no other slice: the lung over and
    under a finding was not counted); on 2 mm slices it is the 4 mm ball's shell, two slices deep."""
    mask = np.zeros((5, 21, 21), dtype=bool)
    mask[2, 8:13, 8:13] = True
    thick = shell(mask, np.array([8.0, 1.0, 1.0]))
    assert thick[1, 10, 10] and thick[3, 10, 10] and not thick[0].any() and not thick[4].any()
    thin = shell(mask, np.array([2.0, 1.0, 1.0]))
    assert thin[0, 10, 10] and thin[4, 10, 10]
    for ring in (thick[2], thin[2]):
        assert ring[10, 8 - int(SHELL_MM)] and not ring[10, 8 - int(SHELL_MM) - 1]


def test_none_detected_needs_both_lungs_the_envelope_counts_each_side():
    """The phantom's two lungs measure 590 mL each; with one filled by soft tissue (collapsed, or
    outside the field of view) the sides measure 590 and 0 mL, and "none detected" may not be written."""
    both = phantom()
    one = dataclasses.replace(both, array=both.array.copy())
    one.array[:, :, 64:][one.array[:, :, 64:] == -850.0] = 40.0
    for volume, expected in ((both, 2), (one, 1)):
        sides_ml = masses.envelope(parenchyma(volume)).sides_ml
        assert sum(ml >= MIN_SIDE_ML for ml in sides_ml) == expected, sides_ml


def _bench_masses(volume, run: int, kind: str, sides: tuple[str, str] = ("right", "right")):
    """``volume`` with ``bench/nodule_froc.py masses``' run ``run`` (0-based) inserted, the posterior
    and the mediastinal mass in the lungs ``sides`` (as the bench puts them on that patient: both
    right on LIDC-0001, whose left lung holds a real lesion), harmonized as the pipeline sees it;
    and the boxes (kji) of the posterior and the mediastinal mass."""
    array = volume.array.copy()
    lungs = sites.lungs_of(volume)
    rng = np.random.default_rng(20261126 + run)
    boxes = []
    runs = ((30.0, 65.0), (50.0, 80.0), (65.0, 30.0), (80.0, 50.0))
    for wall, size, side in zip(("posterior", "mediastinum"), runs[run], sides):
        height = 0.5 if wall == "posterior" else 0.7
        centre = sites.site(volume, lungs, side, wall, height, size / 2)
        spec = synthesis.NoduleSpec(size, kind=kind, solid_hu=35.0, core_fraction=0.7)
        boxes.append(synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre, spec, rng).box)
    return harmonize(dataclasses.replace(volume, array=array)).volume, boxes


def test_a_65_mm_mass_beside_the_mediastinum_is_measured_without_the_strip_beside_it(data_dir):
    """With the back bays split, the solid component around the mass passes whole (fill 0.39)
    with a thin strip of the envelope's edge; its piece holding most of it, twice as compact, is the
    mass (``masses._main_piece``). LIDC-0001, the bench's first run, part-solid. Measured: 66.5 mm,
    fill 0.84 (before: 81.0 mm, 25 % too large); A0002's mass stays whole (piece 0.56, 1.2 times)."""
    series = patients.load(data_dir, "lidc-idri-0001", "ct-chest/lidc-idri-0001/ct")
    volume, boxes = _bench_masses(series.volume, 0, "part-solid")
    found, _ = masses.find(volume, parenchyma(volume))
    low, high = np.array(boxes[1][:3]), np.array(boxes[1][3:])
    centres = [(volume.lps_to_kji(np.asarray(m.measured.center_lps)), m.measured.diameter_mm) for m in found]
    on = [mm for c, mm in centres if np.all((c >= low) & (c <= high))]
    assert len(on) == 1 and abs(on[0] - 65.0) <= EXTENT_TOLERANCE * 65.0, on


def test_the_contrast_filled_descending_aorta_is_not_a_mass(data_dir):
    """LIDC-0001 is contrast-enhanced: beside the bench's run 2 masses (50 mm posterior, 80 mm
    mediastinal, solid) the envelope's closing took in a piece of the descending aorta, reported as
    a 30.1 mm mass centred in the mediastinum (median 282 HU; the masses 32-34 HU). Measured now:
    the two inserted masses only, 53.1 and 87.0 mm."""
    series = patients.load(data_dir, "lidc-idri-0001", "ct-chest/lidc-idri-0001/ct")
    volume, boxes = _bench_masses(series.volume, 1, "solid")
    found, _ = masses.find(volume, parenchyma(volume))
    centres = [volume.lps_to_kji(np.asarray(m.measured.center_lps)) for m in found]
    inside = [[bool(np.all((c >= np.array(b[:3])) & (c <= np.array(b[3:])))) for b in boxes] for c in centres]
    assert sorted(inside) == [[False, True], [True, False]], [(m.measured.diameter_mm, m.measured.center_lps)
                                                              for m in found]


def test_an_80_mm_mass_in_the_back_of_the_left_lower_lobe_is_one_mass_and_the_heart_is_not_another(data_dir):
    """Where a large mass has replaced the medial lung of the left lower lobe, the bay of the lung's
    outline it fills joins the heart's notch by a neck; the bays are split at such necks before the
    one reaching the lung's back is taken in (``masses._bay_pieces``). LIDC-0001 with the bench's
    80 mm solid mass in the back of its left lung (``bench/nodule_froc.py masses``, run 4). Measured:
    one mass, 83.6 mm, nothing centred in the mediastinum; before, a second "mass" of 76.3 mm centred
    in the heart (``tests.mediastinum``'s mask)."""
    series = patients.load(data_dir, "lidc-idri-0001", "ct-chest/lidc-idri-0001/ct")
    volume = series.volume
    array = volume.array.copy()
    centre = sites.site(volume, sites.lungs_of(volume), "left", "posterior", 0.5, 40.0)
    inserted = synthesis.insert(array, np.asarray(volume.spacing[::-1]), centre,
                                synthesis.NoduleSpec(80.0, solid_hu=35.0, core_fraction=0.7),
                                np.random.default_rng(20261126 + 3))
    with_mass = harmonize(dataclasses.replace(volume, array=array)).volume
    found, _ = masses.find(with_mass, parenchyma(with_mass))
    low, high = np.array(inserted.box[:3]), np.array(inserted.box[3:])
    centres = [with_mass.lps_to_kji(np.asarray(m.measured.center_lps)) for m in found]
    mediastinum = mediastinum_mask(with_mass)
    assert [centred_in(mediastinum, with_mass, m.measured.center_lps) for m in found] == [False], centres
    assert np.all((centres[0] >= low) & (centres[0] <= high)), centres
    assert abs(found[0].measured.diameter_mm - 80.0) <= EXTENT_TOLERANCE * 80.0, found[0].measured.diameter_mm


def _sizes_on(volume, found, box) -> list[float]:
    """The long axes of the masses in ``found`` centred in ``box`` (kji corners)."""
    low, high = np.array(box[:3]), np.array(box[3:])
    centres = [(volume.lps_to_kji(np.asarray(m.measured.center_lps)), m.measured.diameter_mm) for m in found]
    return [mm for c, mm in centres if np.all((c >= low) & (c <= high))]


def test_an_80_mm_mass_by_the_arch_is_measured_without_the_vessels_in_front_of_it(c3n):
    """C3N-00247 with the bench's second run, solid: the 80 mm mass beside the mediastinum touches
    the arch's vessels (median 117 HU) 50 mm in front of its centre; the solid part is the mass's
    body (``masses._body``: opened by half its thickness). Measured 89.1 mm (before: 105.0, 31 %
    too large); the 50 mm posterior mass 49.6 mm."""
    volume, boxes = _bench_masses(c3n.volume, 1, "solid", ("right", "left"))
    found, _ = masses.find(volume, parenchyma(volume))
    for box, size in zip(boxes, (50.0, 80.0)):
        on = _sizes_on(volume, found, box)
        assert len(on) == 1 and abs(on[0] - size) <= EXTENT_TOLERANCE * size, (size, on)


def test_solid_masses_of_lidc_0003_keep_neither_the_vessels_behind_a_neck_nor_a_halo_they_lack(data_dir):
    """LIDC-0003 with the bench's fourth run, solid (80 mm posterior, left; 50 mm beside the
    mediastinum, right). Before: 112.4 mm (the heart and vessels beyond a neck, 23 % of the
    segment) and 60.9 mm (the dependent lung beside it, -576 HU, taken as a halo covering 0.02 of
    its rim; ``masses.MIN_HALO_COVER`` was 0.1 then). Measured now: 80.7 and 49.4 mm."""
    series = patients.load(data_dir, "lidc-idri-0003", "ct-chest/lidc-idri-0003/ct")
    volume, boxes = _bench_masses(series.volume, 3, "solid", ("left", "right"))
    found, _ = masses.find(volume, parenchyma(volume))
    for box, size in zip(boxes, (80.0, 50.0)):
        on = _sizes_on(volume, found, box)
        assert len(on) == 1 and abs(on[0] - size) <= EXTENT_TOLERANCE * size, (size, on)


def test_a_bench_mass_beside_the_mediastinum_lies_mostly_in_the_lung_not_at_the_junction_line(data_dir):
    """On LIDC-0002 both lungs meet behind the trachea at 0.55-0.7 of the left lung's height, and a
    30 mm mass against that recess's tip held 0.12 of its ball in the lung: a mediastinal mass. The
    site moves down the lung to where half of it lies in that lung and none in the other (measured:
    0.82 and 0.00, at 0.5 of the height)."""
    volume = patients.load(data_dir, "lidc-idri-0002", "ct-chest/lidc-idri-0002/ct").volume
    lungs = sites.lungs_of(volume)
    left = np.zeros_like(lungs)
    points = np.argwhere(lungs)
    x = volume.kji_to_lps(points.astype(np.float64))[:, 0]
    left[tuple(points[x > (x.min() + x.max()) / 2].T)] = True
    centre = sites.site(volume, lungs, "left", "mediastinum", 0.7, 15.0)
    assert sites.lung_share(volume, left, centre, 15.0) >= sites.MIN_LUNG_SHARE
    assert sites.lung_share(volume, lungs & ~left, centre, 15.0) == 0.0


def test_the_rim_of_the_mediastinum_beside_the_trachea_is_not_a_mass_on_a_sharp_kernel(data_dir, monkeypatch):
    """LIDC-0002 re-reconstructed sharp (as the masses bench reads it): where the mediastinum's
    outline is concave beside the trachea, the envelope's closing takes a crescent of it into the
    left lung, 37.8 mm long; it was reported as a mass centred in the mediastinum in every bench
    copy of this scan. It holds a ball of 13.2 mm, under the 15 mm a 30 mm mass half in its lung
    holds (inserted masses found by the bench: 20.5 mm and more; LOG, "A mass is a lump")."""
    volume = patients.load(data_dir, "lidc-idri-0002", "ct-chest/lidc-idri-0002/ct").volume
    sharp = harmonize(reconstruct(volume, Reconstruction("sharper"), np.random.default_rng(20261126))).volume
    mediastinum = mediastinum_mask(sharp)

    def centred_in_mediastinum() -> list[bool]:
        found, _ = masses.find(sharp, parenchyma(sharp))
        return [centred_in(mediastinum, sharp, m.measured.center_lps) for m in found]

    assert centred_in_mediastinum() == []
    monkeypatch.setattr(masses, "MIN_BALL_SHARE", 0.0)
    assert centred_in_mediastinum() == [True]
