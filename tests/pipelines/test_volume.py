"""The series loader against real series: sorting, HU, world coordinates and each refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipelines.volume import VolumeError, load_series
from tests.conftest import DATA

pytestmark = [pytest.mark.data]

CHEST = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f"
GEOMETRY = DATA / "malformed" / "dicom2nifti-geometry"
ANATOMICAL = GEOMETRY / "generic" / "anatomical" / "001"
OBLIQUE = GEOMETRY / "generic" / "anatomical" / "002_non_isotropic"
DCMQI_SEGS = DATA / "reference-seg-sr" / "dcmqi" / "segmentations"


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def test_chest_ct_is_sorted_along_the_normal_and_in_hounsfield_units():
    files = dicom_files(CHEST)
    volume = load_series(files)

    assert volume.array.shape == (30, 512, 512)
    assert volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((0.646484375, 0.646484375, 8.0))
    np.testing.assert_allclose(volume.direction, np.eye(3))
    # The files run head to feet (z 312 down to 80); slices must run feet to head.
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.sources]
    assert z == sorted(z) and z[0] == 80.0 and z[-1] == 312.0
    assert "PixelData" not in volume.sources[0]
    for k in (0, 17):
        ds = pydicom.dcmread(files[29 - k])
        assert ds.SOPInstanceUID == volume.sop_instance_uids[k]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], hu)
    assert volume.array.min() == -1024.0


def test_oblique_series_world_coordinates_agree_with_simpleitk():
    files = dicom_files(OBLIQUE)
    volume = load_series(files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(OBLIQUE)))
    peer = reader.Execute()

    for kji in [(0, 0, 0), (3, 27, 63), (2, 5, 40), (1, 20, 3)]:
        lps = volume.kji_to_lps(kji)
        ijk_in_peer = peer.TransformPhysicalPointToIndex(tuple(lps))
        assert peer.GetPixel(ijk_in_peer) == pytest.approx(volume.array[kji], rel=1e-6)
        np.testing.assert_allclose(volume.lps_to_kji(lps), kji, atol=1e-6)
    # The first voxel of every slice is where that slice's header says it is.
    for k, ds in enumerate(volume.sources):
        np.testing.assert_allclose(
            volume.kji_to_lps((k, 0, 0)), ds.ImagePositionPatient, atol=1e-4
        )
    # Column index steps along the row cosine by the column spacing (PixelSpacing[1] = 6.4 mm).
    row_cosine = np.asarray(volume.sources[0].ImageOrientationPatient[:3], dtype=float)
    step = volume.kji_to_lps((0, 0, 1)) - volume.kji_to_lps((0, 0, 0))
    np.testing.assert_allclose(step, row_cosine * 6.39995861053464, atol=1e-6)
    own = volume.to_sitk()
    assert own.TransformIndexToPhysicalPoint((63, 27, 3)) == pytest.approx(
        tuple(volume.kji_to_lps((3, 27, 63)))
    )


def test_single_image_loads_when_allowed_with_its_nominal_thickness():
    path = DATA / "transfer-syntaxes" / "nema-wg04" / "REF" / "CT1_UNC"
    header = pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(VolumeError, match="too few slices: 1, a volume needs at least 3"):
        load_series([path])
    volume = load_series([path], min_slices=1)
    assert volume.array.shape == (1, header.Rows, header.Columns)
    assert volume.spacing[2] == float(header.SliceThickness)
    np.testing.assert_allclose(volume.origin, header.ImagePositionPatient)


def test_enhanced_multiframe_matches_its_single_frame_series():
    single = load_series(dicom_files(DCMQI_SEGS / "24x38x3" / "image"))
    multi = load_series([DCMQI_SEGS / "24x38x3" / "multiframe" / "mf.dcm"])

    assert multi.is_multiframe and multi.frames == (1, 2, 3)
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.origin, single.origin)
    np.testing.assert_allclose(multi.direction, single.direction)
    assert multi.spacing == pytest.approx(single.spacing)
    assert multi.frame_of_reference_uid == single.frame_of_reference_uid


def test_enhanced_ct_with_mirrored_rows_places_frames_in_the_patient_frame():
    path = DATA / "transfer-syntaxes" / "pydicom-data" / "eCT_Supplemental.dcm"
    volume = load_series([path], min_slices=2)

    # Rows run towards patient right (-x); slices step +10 mm along the normal (0, 0, -1).
    np.testing.assert_allclose(volume.direction[:, 0], [-1, 0, 0])
    np.testing.assert_allclose(volume.direction[:, 2], [0, 0, -1])
    np.testing.assert_allclose(volume.kji_to_lps((0, 0, 0)), [99.5, -301.5, -149.0])
    np.testing.assert_allclose(volume.kji_to_lps((1, 0, 0)), [99.5, -301.5, -159.0])
    np.testing.assert_allclose(volume.kji_to_lps((0, 0, 1)), [99.5 - 0.388672, -301.5, -149.0])
    assert volume.frames == (2, 1)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("failing/gantrytilting/001", "gantry tilt: slices advance 14.0 degrees"),
        ("failing/notavolume/001", "not a volume: 4 slices share the position"),
        ("failing/slicecount/001", "too few slices: 2"),
        (
            "failing/sliceincrement/001",
            "missing slices: gap of 10.0 mm between slices 2 and 3 where spacing is 5.0 mm",
        ),
        ("failing/sliceincrement/002", "missing slices: gap of 1.5 mm .* spacing is 0.750 mm"),
        ("failing/sliceorientation/001", "mixed orientation"),
    ],
)
def test_malformed_geometry_is_refused_with_its_reason(case: str, reason: str):
    with pytest.raises(VolumeError, match=reason.replace("(", r"\(")):
        load_series(dicom_files(GEOMETRY / case))


def _edited_copy(tmp_path: Path, edit) -> list[Path]:
    """The 4-slice anatomical MR with one header attribute changed per file by ``edit``."""
    paths = []
    for index, source in enumerate(dicom_files(ANATOMICAL)):
        ds = pydicom.dcmread(source)
        edit(index, ds)
        target = tmp_path / source.name
        ds.save_as(target)
        paths.append(target)
    return paths


def test_multiple_frames_of_reference_are_refused(tmp_path: Path):
    def edit(index: int, ds: pydicom.Dataset) -> None:
        ds.FrameOfReferenceUID = f"1.2.3.{index % 2}"

    with pytest.raises(VolumeError, match="multiple frames of reference: 2"):
        load_series(_edited_copy(tmp_path, edit))


def test_varying_rows_and_columns_are_refused(tmp_path: Path):
    def edit(index: int, ds: pydicom.Dataset) -> None:
        if index == 2:
            ds.Rows = 128

    with pytest.raises(VolumeError, match="varying rows/columns: 256x256 in 3 slices, 128x256"):
        load_series(_edited_copy(tmp_path, edit))


def test_uneven_spacing_is_refused(tmp_path: Path):
    def edit(index: int, ds: pydicom.Dataset) -> None:
        if index == 0:  # the last slice: the normal of this sagittal series points to -x
            ds.ImagePositionPatient[0] = float(ds.ImagePositionPatient[0]) + 0.4

    with pytest.raises(VolumeError, match="uneven slice spacing: 0.600 mm between slices 2 and 3"):
        load_series(_edited_copy(tmp_path, edit))


def test_two_series_are_refused(tmp_path: Path):
    files = dicom_files(ANATOMICAL) + dicom_files(ANATOMICAL.parent / "001_implicit")
    with pytest.raises(VolumeError, match="files from 2 series"):
        load_series(files)


def test_non_dicom_file_is_named(tmp_path: Path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    shutil.copy(dicom_files(ANATOMICAL)[0], tmp_path / "a.dcm")
    with pytest.raises(VolumeError, match="notes.txt is not a readable DICOM file"):
        load_series([tmp_path / "a.dcm", junk])
