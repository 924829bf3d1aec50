"""Where each finding is: lung side and zone (``pipelines.nodule.location``), brain hemisphere and
lobe (``pipelines.tumor.location``), on phantoms and on real scans.

The phantoms are built in patient coordinates and sampled on grids of different orientations, so
a rule that read image axes instead of the direction matrix would fail on one of them. The real
scans' expected sides were established independently of the code under test, by eye on the
images and against a landmark (the spine for the chests, the brain's midline for the heads); each
constant says how.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage as ndi

from pipelines.nodule.location import lung_sides
from pipelines.nodule.lungs import lung_mask
from pipelines.tumor.brain_extraction import extract_brain
from pipelines.tumor.location import brain_location
from pipelines.volume import Volume
from training.nodule import data as chest_data
from training.nodule import lidc
from training.tumor import data as brain_data
from training.tumor.synthesis import rough_lesion_mask

#: Direction matrices (columns: where i, j, k grow in LPS). Axial as scanners usually write it;
#: axial with columns running to the patient's right and rows to the front; sagittal (rows to the
#: back, columns down, slices to the patient's right).
AXIAL = np.eye(3)
AXIAL_FLIPPED = np.diag([-1.0, -1.0, 1.0])
SAGITTAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
SIDES = {"left": codes.SCT.Left, "right": codes.SCT.Right}

# Phantom chest (LPS mm, centred on 0): lungs are ellipsoids at x = +-65 with semi-axes 50, 75, 120
# around z = -10 (height -130 to 110; thirds at -50 and 30), joined by a 3 mm air sheet in front
# (the anterior junction) and by the main bronchi to a trachea that runs up out of the volume.
LUNG_CENTRE_X, LUNG_CENTRE_Z = 65.0, -10.0
LUNG_AXES = (50.0, 75.0, 120.0)


def _lps_grid(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float],
              direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origin that centres the grid on 0, and the LPS of every voxel as an array (k, j, i, 3)."""
    size_ijk = np.array(shape_kji[::-1], dtype=np.float64)
    origin = -direction @ (np.asarray(spacing_ijk) * (size_ijk - 1) / 2)
    kji = np.indices(shape_kji).reshape(3, -1).T
    lps = (kji[:, ::-1] * np.asarray(spacing_ijk)) @ direction.T + origin
    return origin, lps.reshape(*shape_kji, 3)


def _chest(direction: np.ndarray, fused: bool = False) -> Volume:
    """The phantom chest in HU; ``fused``: the lungs one air space across the mediastinum as well."""
    shape, spacing = (64, 112, 144), (2.5, 2.5, 5.0)
    origin, p = _lps_grid(shape, spacing, direction)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = 0.0
    a, b, c = LUNG_AXES
    air = ((np.abs(x) - LUNG_CENTRE_X) / a) ** 2 + (y / b) ** 2 + ((z - LUNG_CENTRE_Z) / c) ** 2 <= 1
    if fused:
        air |= (np.abs(x) <= 40) & (np.abs(y) <= 60) & (np.abs(z - LUNG_CENTRE_Z) <= 100)
    air |= (np.abs(x) <= 40) & (np.abs(y + 60) <= 1.5) & (np.abs(z - LUNG_CENTRE_Z) <= 50)
    air |= (x ** 2 + y ** 2 <= 9 ** 2) & (z >= 60)
    air |= (np.abs(x) <= 40) & (y ** 2 + (z - 60) ** 2 <= 6 ** 2)
    hu[air] = -850.0
    n = shape[0]
    return Volume(hu, spacing, origin, direction, tuple(Dataset() for _ in range(n)), (1,) * n, None, "CT")


@pytest.mark.parametrize("direction", [AXIAL, AXIAL_FLIPPED], ids=["axial", "axial-columns-to-the-right"])
def test_a_point_in_the_left_lower_third_of_a_phantom_chest_is_left_lung_lower_zone(direction):
    volume = _chest(direction)
    lungs = lung_mask(volume.array, slice_axis=0)
    pieces = ndi.label(lungs)[1]
    assert pieces == 1, f"the phantom's lungs are {pieces} pieces; they must be one, joined as on a real CT"
    # left lung (x > 0), 40 mm above its base: 17 % of its height
    location = lung_sides(volume, lungs).locate([LUNG_CENTRE_X, 0.0, -90.0])
    assert location.label == "left lung, lower zone", location.rule
    assert location.laterality == codes.SCT.Left
    assert location.site == codes.SCT.LowerZoneOfLung
    location = lung_sides(volume, lungs).locate([-LUNG_CENTRE_X, 0.0, LUNG_CENTRE_Z])
    assert location.label == "right lung, middle zone", location.rule


@pytest.mark.parametrize("direction", [AXIAL, AXIAL_FLIPPED], ids=["axial", "axial-columns-to-the-right"])
def test_a_juxtapleural_centre_outside_the_mask_takes_the_nearest_lung_and_the_trachea_is_no_part_of_its_height(direction):
    volume = _chest(direction)
    lungs = lung_mask(volume.array, slice_axis=0)
    # 5.6 mm outside the left lung's lateral surface, 175 mm above its base: 73 % of the lung's
    # 240 mm (upper zone), but 60 % (middle) of 290 mm if the trachea counted up to the volume's top.
    centre = [115.0, 0.0, 45.0]
    assert not lungs[tuple(np.round(volume.lps_to_kji(centre)).astype(int))]
    location = lung_sides(volume, lungs).locate(centre)
    assert location.label == "left lung, upper zone", location.rule
    assert "73%" in location.rule, location.rule


def test_lungs_fused_across_the_mediastinum_are_split_at_the_midline():
    volume = _chest(AXIAL, fused=True)
    lungs = lung_mask(volume.array, slice_axis=0)
    location = lung_sides(volume, lungs).locate([LUNG_CENTRE_X, 0.0, -90.0])
    assert location.label == "left lung, lower zone", location.rule
    assert "split at the midline" in location.rule, location.rule


def test_a_mask_off_the_volume_grid_is_refused():
    volume = _chest(AXIAL)
    with pytest.raises(ValueError, match="must be on its grid"):
        lung_sides(volume, np.ones((3, 3, 3), dtype=bool)).locate([0.0, 0.0, 0.0])


# Real chests: the reader-consensus lesions of lidc.annotate (largest first). Sides established by
# eye on each lesion's slice (which lung holds it, on which side of the mediastinum) and by its x
# against the vertebral body's centre, read off a bone-window crop of that slice:
# - 0001, 31.8 mm solid mass: x +56 mm, spine -3 mm: 59 mm to the patient's left, posterior left lung;
# - 0002, 31.0 mm ground glass: x +60 mm, spine +8 mm: 52 mm left, posterior left lung;
# - 0003, 31.0 mm: x +73 mm, spine -25 mm: 97 mm left; 14.3 mm: x -47 mm, spine -22 mm: 25 mm right,
#   anterior right lung against the mediastinum; 12.6 mm: x +24 mm, spine -22 mm: 46 mm
#   left, anterior left lung behind the sternum.
LIDC_SIDES = {
    "lidc-idri-0001": ("left",),
    "lidc-idri-0002": ("left",),
    "lidc-idri-0003": ("left", "right", "left"),
}
# Zones asserted where the slice's landmarks agree and the centre is at least 4 % of the lung's
# height from a third: 0001 at the left hilum (62 % of the lung's height: middle), 0002 at the
# aortic arch, above the carina (74 %: upper), 0003's mass just below the carina (57 %: middle).
# 0003's small nodules (67 % and 64 %, at the carina) sit on the upper/middle boundary: side only.
LIDC_ZONES = {("lidc-idri-0001", 0): "middle", ("lidc-idri-0002", 0): "upper", ("lidc-idri-0003", 0): "middle"}


@pytest.mark.slow
@pytest.mark.parametrize("scan", sorted(LIDC_SIDES))
def test_each_lidc_consensus_lesion_is_placed_in_the_lung_the_images_show(scan, data_dir):
    series = f"ct-chest/{scan}/ct"
    volume = chest_data.load(data_dir, series)
    annotation = lidc.load_annotation(volume, data_dir / series)
    sides = lung_sides(volume)  # as the pipeline finds them: on the CT subsampled to 2 mm
    assert len(annotation.lesions) == len(LIDC_SIDES[scan])
    for number, (lesion, side) in enumerate(zip(annotation.lesions, LIDC_SIDES[scan])):
        location = sides.locate(lesion.center_lps)
        found = f"{scan} lesion {number} at x {lesion.center_lps[0]:.0f} mm: {location.label} ({location.rule})"
        assert location.laterality == SIDES[side], found
        assert location.label.startswith(f"{side} lung"), found
        zone = LIDC_ZONES.get((scan, number))
        if zone is not None:
            assert location.label.endswith(f"{zone} zone"), found


def _head(direction: np.ndarray, lesion_lps: np.ndarray, radius_mm: float) -> tuple[sitk.Image, np.ndarray]:
    """A phantom brain (ellipsoid, semi-axes x 65, y 85, z 65 mm) and a spherical lesion, on a 2 mm grid."""
    shape, spacing = (80, 96, 112), (2.0, 2.0, 2.0)
    origin, p = _lps_grid(shape, spacing, direction)
    brain = (p[..., 0] / 65) ** 2 + (p[..., 1] / 85) ** 2 + (p[..., 2] / 65) ** 2 <= 1
    image = sitk.GetImageFromArray(brain.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.ravel()))
    lesion = np.linalg.norm(p - lesion_lps, axis=-1) <= radius_mm
    return image, lesion & brain


def _in_phantom_brain(ap: float, si: float, lateral: float) -> np.ndarray:
    """LPS of a point at shares of the phantom brain's extent: from the front, from the bottom, and
    from the midline to the brain's right side (negative: its left) on that point's line."""
    y, z = -85 + 170 * ap, -65 + 130 * si
    half_width = 65 * np.sqrt(1 - (y / 85) ** 2 - (z / 65) ** 2)
    return np.array([-lateral * half_width, y, z])


@pytest.mark.parametrize("direction", [AXIAL, AXIAL_FLIPPED, SAGITTAL], ids=["axial", "axial-flipped", "sagittal"])
def test_a_lesion_in_the_right_anterior_part_of_a_phantom_brain_is_right_frontal(direction):
    brain, lesion = _head(direction, _in_phantom_brain(ap=0.2, si=0.6, lateral=0.5), radius_mm=8.0)
    location = brain_location(brain, lesion)
    assert location.label == "right frontal lobe", location.rule
    assert location.site == codes.SCT.FrontalLobe
    assert location.laterality == codes.SCT.Right


@pytest.mark.parametrize(("ap", "si", "lateral", "lobe"), [
    (0.65, 0.8, 0.4, "parietal lobe"),
    (0.9, 0.5, 0.4, "occipital lobe"),
    (0.4, 0.3, 0.7, "temporal lobe"),
    (0.8, 0.2, 0.4, "cerebellum (posterior fossa)"),
])
def test_each_lobe_rule_names_its_region_of_a_phantom_brain(ap, si, lateral, lobe):
    brain, lesion = _head(AXIAL, _in_phantom_brain(ap, si, -lateral), radius_mm=5.0)
    location = brain_location(brain, lesion)
    assert location.label == f"left {lobe}", location.rule


def test_a_lesion_across_the_midline_has_no_side():
    brain, lesion = _head(SAGITTAL, _in_phantom_brain(ap=0.2, si=0.6, lateral=0.0), radius_mm=12.0)
    location = brain_location(brain, lesion)
    assert location.label == "crossing the midline (corpus callosum), frontal lobe", location.rule
    assert location.laterality is None


@pytest.mark.parametrize(("ap", "si", "label"), [
    (0.45, 0.25, "brainstem (posterior fossa, midline)"),
    (0.7, 0.2, "cerebellar vermis, crossing the midline (posterior fossa)"),
])
def test_a_midline_lesion_of_the_posterior_fossa_is_named_as_such(ap, si, label):
    brain, lesion = _head(AXIAL, _in_phantom_brain(ap, si, 0.0), radius_mm=8.0)
    location = brain_location(brain, lesion)
    assert location.label == label, location.rule
    assert location.laterality is None


# Real heads. Sides by the lesion's centre of mass in patient x (LPS, through each file's direction
# matrix) against the brain mask's left-right centre, and checked by eye on axial slices shown
# with x growing to the right of the screen (the patient's left on the viewer's right):
# - BraTS-GLI-00001 (no label map; the lesion is the FLAIR-bright blob of the training code's
#   rough_lesion_mask, 75 mL): centre x 159.6 mm, brain 49-188 mm (midline 118.5): 41 mm to the
#   patient's LEFT. nibabel reads the same file's affine as L-P-S with the centre at RAS x -159.6
#   (brain -188 to -49): left again. The lesion is left temporo-parietal, around the Sylvian fissure.
# - TCGA-FG-6692 (fusion/mav label map on the skull-stripped 1 mm images): centre x 81.0 mm, brain
#   46-190 mm (midline 118): 37 mm to the RIGHT, frontal. The raw clinical T1c in the scanner's own
#   geometry shows the enhancing lesion in the right frontal lobe too (slices at z 38-60 mm).
BRATS_GLI_SIDE = "left"
TCGA_SIDE, TCGA_LOBE = "right", "frontal lobe"
# - the six BraTS-2015 cases with expert label maps, centre x against the brainmask's midline
#   (mm): pat0005 -34, pat0006 +18, pat0003 -24, pat0004 +32, pat0001 -37, pat0002 +21 (+ = left).
BRATS2015_SIDES = {
    "train/brats_2013_pat0005_1": "right", "train/brats_2013_pat0006_1": "left",
    "validation/brats_2013_pat0003_1": "right", "validation/brats_2013_pat0004_1": "left",
    "test/brats_2013_pat0001_1": "right", "test/brats_2013_pat0002_1": "left",
}


def _read(data_dir: Path, relative: str) -> sitk.Image:
    return sitk.ReadImage(str(data_dir / relative))


@pytest.mark.slow
def test_the_brats_gli_00001_glioma_is_in_the_left_hemisphere(data_dir):
    contrasts = brain_data.BRATS.contrasts
    t1c = sitk.Cast(_read(data_dir, contrasts["t1c"]), sitk.sitkFloat32)
    brain = extract_brain(t1c)
    flair = sitk.GetArrayFromImage(_read(data_dir, contrasts["flair"])).astype(np.float32)
    lesion = rough_lesion_mask(flair, sitk.GetArrayFromImage(brain) > 0, (1.0, 1.0, 1.0), margin_mm=0.0)
    location = brain_location(brain, lesion)
    assert location.laterality == SIDES[BRATS_GLI_SIDE], f"{location.label} ({location.rule})"


def test_the_tcga_fg_6692_tumor_is_right_frontal(data_dir):
    t1c = sitk.Cast(_read(data_dir, brain_data.TCGA.contrasts["t1c"]), sitk.sitkFloat32)
    labels = sitk.GetArrayFromImage(_read(data_dir, str(brain_data.TCGA.labels)))
    location = brain_location(extract_brain(t1c), labels > 0)
    assert location.label == f"{TCGA_SIDE} {TCGA_LOBE}", location.rule


def test_the_expert_labelled_brats_2015_tumors_are_in_the_hemisphere_their_label_maps_show(data_dir):
    for case, side in BRATS2015_SIDES.items():
        folder = f"{brain_data.BRATS2015_DIR}/{case}"
        brain = _read(data_dir, f"{folder}/brainmask.nii.gz")
        labels = sitk.GetArrayFromImage(_read(data_dir, f"{folder}/OTMultiClass.nii.gz"))
        location = brain_location(brain, labels > 0)
        assert location.laterality == SIDES[side], f"{case}: {location.label} ({location.rule})"


#: Synthetic lesions (8 mm spheres) in two real brains, at voxels (x, y, z of the LPS-ordered
#: skull-stripped T1c) picked on its sagittal and coronal slices: the front of the left cerebellar
#: hemisphere (in front of where the old rule's cerebellum began: it said "left temporal lobe")
#: and the pons (the old rule: "crossing the midline, frontal lobe").
POSTERIOR_FOSSA = [
    ("BRATS", (143, 138, 30), "left cerebellum (posterior fossa)", codes.SCT.Cerebellum),
    ("BRATS", (118, 115, 44), "brainstem (posterior fossa, midline)", codes.SCT.BrainStem),
    ("TCGA", (143, 144, 27), "left cerebellum (posterior fossa)", codes.SCT.Cerebellum),
    ("TCGA", (118, 118, 40), "brainstem (posterior fossa, midline)", codes.SCT.BrainStem),
]


@pytest.mark.parametrize(("subject", "voxel", "label", "site"), POSTERIOR_FOSSA)
def test_a_synthetic_lesion_in_the_posterior_fossa_of_a_real_brain_is_named_there(data_dir, subject, voxel, label,
                                                                                    site):
    t1c = sitk.DICOMOrient(_read(data_dir, getattr(brain_data, subject).contrasts["t1c"]), "LPS")
    brain = sitk.GetArrayFromImage(t1c) > 0
    z, y, x = np.ogrid[:brain.shape[0], :brain.shape[1], :brain.shape[2]]
    lesion = brain & ((x - voxel[0]) ** 2 + (y - voxel[1]) ** 2 + (z - voxel[2]) ** 2 <= 8**2)
    location = brain_location(sitk.Cast(t1c > 0, sitk.sitkUInt8), lesion)
    assert location.label == label, location.rule
    assert location.site == site


def test_a_lesion_mask_off_the_brain_grid_is_refused():
    brain, lesion = _head(AXIAL, _in_phantom_brain(ap=0.2, si=0.6, lateral=0.5), radius_mm=8.0)
    with pytest.raises(ValueError, match="must share a grid"):
        brain_location(brain, lesion[:-1])
