"""SEG, TID 1500 SR and derived series written for real series, read back, validated, stored.

Every object the writers produce here is built once (``products``) and then checked four ways:
read back with highdicom/pydicom, compared with the dcmqi and highdicom reference objects,
validated with dciodvfy, and stored into a real Orthanc over C-STORE.
"""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.tag import Tag

from node.operate.findings import finding_lines
from pipelines.volume import Volume, load_series
from pipelines.writers import codes
from pipelines.writers.derived import Derivation, make_derived_series, stored_values, write_derived_series
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import largest_outline
from pipelines.writers.seg import FrameCompression, Segment, make_segmentation
from pipelines.writers.sr import CaseQuality, Finding, make_measurement_report
from tests.conftest import DATA
from tests.support.peers import conformance, dciodvfy, storescu

pytestmark = [pytest.mark.data]

CHEST = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f"
DCMQI = DATA / "reference-seg-sr" / "dcmqi"
CT3 = DCMQI / "segmentations" / "ct-3slice"
MULTIFRAME = DCMQI / "segmentations" / "24x38x3" / "multiframe" / "mf.dcm"
HIGHDICOM = DATA / "reference-seg-sr" / "highdicom"

UID_ROOT = "1.2.826.0.1.3680043.8.498.777"
IDENTITY = Identity(uid_root=UID_ROOT)
ALGORITHM = Algorithm("radnode-test-model", "1.2.3")
#: what a derived image states anew; every other attribute it keeps is its source's
DERIVED_REWRITES = (
    "SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "SeriesDescription", "SeriesDate",
    "ContentDate", "InstanceCreationDate", "SeriesTime", "ContentTime", "InstanceCreationTime", "ImageType",
    "DerivationDescription", "DerivationCodeSequence", "SourceImageSequence", "ContributingEquipmentSequence",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber", "PixelData",
)
#: One voxel that is asymmetric in all three axes, so a flip or transpose cannot go unnoticed.
ASYMMETRIC_VOXEL = (7, 100, 400)
NODULE_BLOCK = (slice(10, 14), slice(200, 230), slice(100, 120))
RIGHT_UPPER = codes.AnatomicLocation("right lung, upper zone", dicom_codes.SCT.UpperLobeOfLung, dicom_codes.SCT.Right)
OUT_OF_RANGE_HU = {(3, 0, 0): -3000.0, (3, 0, 1): 5000.0}
PARTIAL_OVERLAP_STRUCTURES = (
    codes.NEOPLASM, codes.EDEMA, codes.NECROSIS, codes.ENHANCING_TUMOR, codes.LUNG_NODULE
)


#: dcmtk storescu options that propose a compressed transfer syntax as it is.
STORESCU_PROPOSE = {
    pydicom.uid.JPEG2000Lossless: ("--propose-j2k-lossless",),
    pydicom.uid.RLELossless: ("--propose-rle",),
    pydicom.uid.JPEGLSLossless: ("--propose-jls-lossless",),
}


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(dicom_files(CHEST))


@pytest.fixture(scope="module")
def ct3() -> Volume:
    return load_series(dicom_files(CT3))


@pytest.fixture(scope="module")
def multiframe() -> Volume:
    return load_series([MULTIFRAME])


@pytest.fixture(scope="module")
def chest_mask(chest: Volume) -> np.ndarray:
    mask = np.zeros(chest.array.shape, dtype=np.uint8)
    mask[NODULE_BLOCK] = 1
    mask[ASYMMETRIC_VOXEL] = 2
    return mask


@pytest.fixture(scope="module")
def dcmqi_overlaps(ct3: Volume) -> np.ndarray:
    """dcmqi's 5 overlapping segments over ct-3slice, as stacked masks in our slice order."""
    reference = hd.seg.segread(DCMQI / "segmentations" / "partial_overlaps.dcm")
    # dcmqi does not record SpatialLocationsPreserved; its frames do sit on the source slices.
    return reference.get_pixels_by_source_instance(
        ct3.sop_instance_uids, assert_missing_frames_are_empty=True, ignore_spatial_locations=True
    )


@pytest.fixture(scope="module")
def derived_values(chest: Volume) -> np.ndarray:
    values = chest.array * 0.5 - 100.0
    for index, hu in OUT_OF_RANGE_HU.items():
        values[index] = hu
    return values


@pytest.fixture(scope="module")
def products(tmp_path_factory, chest, ct3, multiframe, chest_mask, dcmqi_overlaps, derived_values):
    """Every object written in these tests, by name -> files."""
    out = tmp_path_factory.mktemp("results")
    segments = [
        Segment(codes.LUNG_NODULE, "nodule-1"),
        Segment(codes.NEOPLASM, "marker-voxel"),
    ]
    made: dict[str, list[Path]] = {}

    def write(name: str, *datasets: pydicom.Dataset) -> None:
        made[name] = [written.path for written in write_datasets(datasets, out / name)]

    chest_seg = make_segmentation(chest, chest_mask, segments, ALGORITHM, IDENTITY)
    write("seg_chest", chest_seg)
    write("seg_chest_keep_empty", make_segmentation(
        chest, chest_mask, segments, ALGORITHM, IDENTITY, keep_empty_frames=True
    ))
    for compression in (FrameCompression.JPEG2000, FrameCompression.RLE, FrameCompression.JPEGLS):
        write(f"seg_chest_{compression.value}", make_segmentation(
            chest, chest_mask, segments, ALGORITHM, IDENTITY, compression=compression
        ))
    write("seg_chest_empty", make_segmentation(
        chest, np.zeros_like(chest_mask), segments, ALGORITHM, IDENTITY
    ))
    findings = [
        Finding("nodule-1", codes.LUNG_NODULE, diameter_mm=19.4, volume_mm3=3507.1,
                mean_hu=-35.5, score=0.91, segment_number=1),
        Finding("nodule-2", codes.LUNG_NODULE, center_lps=(-20.0, 10.0, 150.0),
                diameter_mm=6.0, score=0.42),
    ]
    write("sr_chest", make_measurement_report(
        chest, findings, ALGORITHM, IDENTITY, looked_for=codes.LUNG_NODULE, segmentation=chest_seg
    ))
    # what a viewer draws: a nodule's diameter on its image, and arrows to lesions on one image
    on_image = [
        Finding("nodule-1", codes.LUNG_NODULE, diameter_mm=19.4, volume_mm3=3507.1, score=0.91, segment_number=1,
                location=RIGHT_UPPER, point_kji=(12, 215, 110)),
        Finding("lesion-1", codes.NEOPLASM, center_lps=(0.0, 0.0, 0.0), volume_ml=3.2, point_kji=(5, 100, 200)),
        Finding("lesion-2", codes.NEOPLASM, center_lps=(0.0, 0.0, 0.0), volume_ml=0.4, point_kji=(5, 104, 203),
                location=RIGHT_UPPER),
        Finding("marker", codes.NEOPLASM, volume_ml=0.001, segment_number=2, point_kji=(5, 101, 199)),
    ]
    write("sr_viewer", make_measurement_report(
        chest, on_image, ALGORITHM, IDENTITY, looked_for=codes.LUNG_NODULE, segmentation=chest_seg
    ))
    write("sr_chest_none", make_measurement_report(
        chest, [], ALGORITHM, IDENTITY, looked_for=codes.LUNG_NODULE
    ))
    write("derived_chest", *make_derived_series(chest, derived_values, IDENTITY, Derivation(
        ALGORITHM, "radnode test: HU x 0.5 - 100", "test transform of the source HU (x 0.5 - 100)")))

    overlap_segments = [Segment(s, f"region-{n}") for n, s in enumerate(PARTIAL_OVERLAP_STRUCTURES)]
    ct3_seg = make_segmentation(ct3, dcmqi_overlaps, overlap_segments, ALGORITHM, IDENTITY)
    write("seg_ct3", ct3_seg)
    write("sr_ct3", make_measurement_report(
        ct3,
        [Finding("region-0", codes.NEOPLASM, volume_mm3=120.0, mean_hu=12.0, segment_number=1)],
        ALGORITHM, IDENTITY, looked_for=codes.NEOPLASM, segmentation=ct3_seg,
    ))
    # a tumor report: a segment's group, connected lesions placed by their point and outline, the case's quality
    lesion = np.zeros(ct3.array.shape[1:], dtype=bool)
    lesion[8:14, 9:15] = True
    for count in (1, 2):
        lesions = [Finding(f"lesion-{n}", codes.NEOPLASM, volume_ml=0.1, point_kji=(1, 10, 10 + n),
                           outline=largest_outline(lesion)) for n in range(1, count + 1)]
        write(f"sr_ct3_lesions_{count}", make_measurement_report(
            ct3, [Finding("region-0", codes.NEOPLASM, volume_ml=0.3, segment_number=1), *lesions],
            ALGORITHM, IDENTITY, looked_for=codes.NEOPLASM, segmentation=ct3_seg,
            case_quality=CaseQuality(0.91, False, "self-consistency 0.91, at or above 0.71"),
        ))
    write("derived_ct3", *make_derived_series(ct3, ct3.array, IDENTITY,
                                              Derivation(ALGORITHM, "radnode test: copy", "identity transform")))
    mf_mask = (multiframe.array > 0).astype(np.uint8)
    mf_seg = make_segmentation(
        multiframe, mf_mask, [Segment(codes.NEOPLASM, "mf")], ALGORITHM, IDENTITY
    )
    write("seg_multiframe", mf_seg)
    write("sr_multiframe", make_measurement_report(
        multiframe, [Finding("mf", codes.NEOPLASM, volume_mm3=4.9, segment_number=1)],
        ALGORITHM, IDENTITY, looked_for=codes.NEOPLASM, segmentation=mf_seg,
    ))
    return made


def read_seg(products: dict[str, list[Path]], name: str) -> hd.seg.Segmentation:
    return hd.seg.segread(products[name][0])


def frame_world_point(seg: pydicom.Dataset, frame_index: int, row: int, column: int) -> np.ndarray:
    """LPS of a SEG pixel from the SEG's own functional groups (independent of Volume)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    frame = seg.PerFrameFunctionalGroupsSequence[frame_index]
    cosines = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = map(float, shared.PixelMeasuresSequence[0].PixelSpacing)
    origin = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
    return origin + column * column_spacing * cosines[:3] + row * row_spacing * cosines[3:]


@pytest.mark.slow
def test_seg_round_trip_gives_back_the_mask_on_the_source_slices(products, chest, chest_mask):
    seg = read_seg(products, "seg_chest")
    source = chest.sources[0]

    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert (seg.PatientID, seg.PatientName) == (source.PatientID, source.PatientName)
    assert seg.FrameOfReferenceUID == chest.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    for uid in (seg.SOPInstanceUID, seg.SeriesInstanceUID):
        assert uid.startswith(UID_ROOT + ".")
    assert seg.Manufacturer == "radnode" and seg.SoftwareVersions and seg.ContentDate
    labels = seg.get_pixels_by_source_instance(
        chest.sop_instance_uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(labels, chest_mask)

    nodule = seg.SegmentSequence[0]
    assert nodule.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert nodule.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert nodule.AnatomicRegionSequence[0].CodeValue == "39607008"
    assert nodule.SegmentAlgorithmType == "AUTOMATIC" and nodule.TrackingID == "nodule-1"
    algorithm = nodule.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("radnode-test-model", "1.2.3")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


def test_seg_marker_voxel_is_at_its_world_position_on_its_source_slice(products, chest):
    seg = pydicom.dcmread(products["seg_chest"][0])
    pixels = seg.pixel_array
    marker_frames = [
        index for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence)
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2
    ]
    assert len(marker_frames) == 1
    (row,), (column,) = np.nonzero(pixels[marker_frames[0]])
    world = frame_world_point(seg, marker_frames[0], row, column)

    np.testing.assert_allclose(world, chest.kji_to_lps(ASYMMETRIC_VOXEL), atol=1e-3)
    derivation = seg.PerFrameFunctionalGroupsSequence[marker_frames[0]].DerivationImageSequence[0]
    referenced_uid = derivation.SourceImageSequence[0].ReferencedSOPInstanceUID
    source = next(
        pydicom.dcmread(path, stop_before_pixels=True) for path in dicom_files(CHEST)
        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == referenced_uid
    )
    assert float(source.ImagePositionPatient[2]) == pytest.approx(world[2])
    assert (row, column) == ASYMMETRIC_VOXEL[1:]


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("seg_chest_jpeg2000", pydicom.uid.JPEG2000Lossless),
        ("seg_chest_rle", pydicom.uid.RLELossless),
        ("seg_chest_jpegls", pydicom.uid.JPEGLSLossless),
    ],
)
def test_compressed_seg_keeps_the_mask_losslessly(products, chest, chest_mask, name, syntax):
    seg = read_seg(products, name)
    assert seg.file_meta.TransferSyntaxUID == syntax
    stacked = seg.get_pixels_by_source_instance(
        chest.sop_instance_uids, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(stacked[..., 0] > 0, chest_mask == 1)
    np.testing.assert_array_equal(stacked[..., 1] > 0, chest_mask == 2)


def test_seg_options_for_empty_frames_and_empty_results(products, chest):
    slices, segments = chest.array.shape[0], 2
    assert read_seg(products, "seg_chest_keep_empty").NumberOfFrames == slices * segments
    empty = read_seg(products, "seg_chest_empty")
    assert empty.NumberOfFrames == slices * segments
    assert not empty.pixel_array.any()


def test_seg_equals_the_dcmqi_reference_on_the_same_source(products, ct3, dcmqi_overlaps):
    ours = read_seg(products, "seg_ct3")
    reference = hd.seg.segread(DCMQI / "segmentations" / "partial_overlaps.dcm")

    np.testing.assert_array_equal(
        ours.get_pixels_by_source_instance(
            ct3.sop_instance_uids, assert_missing_frames_are_empty=True
        ),
        dcmqi_overlaps,
    )
    assert ours.SOPClassUID == reference.SOPClassUID
    assert ours.SegmentationType == reference.SegmentationType
    assert ours.SegmentsOverlap == "YES" and reference.SegmentsOverlap in ("YES", "UNDEFINED")
    assert ours.FrameOfReferenceUID == reference.FrameOfReferenceUID
    assert (ours.ReferencedSeriesSequence[0].SeriesInstanceUID
            == reference.ReferencedSeriesSequence[0].SeriesInstanceUID)
    assert keywords(ours.PerFrameFunctionalGroupsSequence[0]) == keywords(
        reference.PerFrameFunctionalGroupsSequence[0]
    )
    assert keywords(reference.SharedFunctionalGroupsSequence[0]) <= keywords(
        ours.SharedFunctionalGroupsSequence[0]
    )
    highdicom_reference = pydicom.dcmread(HIGHDICOM / "seg_image_ct_binary.dcm")
    assert keywords(highdicom_reference.SegmentSequence[0]) <= keywords(ours.SegmentSequence[0])
    # Left out: attributes copied from that reference's own source, and the human creator's
    # name that an automatic segmentation does not have.
    assert keywords(highdicom_reference) - {"StudyDescription", "SourceImageSequence",
                                            "PatientIdentityRemoved", "DeidentificationMethod",
                                            "RequestingService", "PatientAge",
                                            "ContentCreatorName"} <= keywords(ours)


@pytest.mark.parametrize(
    ("make_mask", "reason"),
    [
        (lambda shape: np.zeros(shape[1:], np.uint8), "does not match the volume"),
        (lambda shape: np.zeros(shape, np.float32), "threshold probabilities"),
        (lambda shape: np.full(shape, 3, np.int64), "label 3 in the mask but only 2 segments"),
    ],
)
def test_seg_refuses_masks_it_cannot_place(chest, make_mask, reason):
    segments = [Segment(codes.LUNG_NODULE, "a"), Segment(codes.NEOPLASM, "b")]
    with pytest.raises(ValueError, match=reason):
        make_segmentation(chest, make_mask(chest.array.shape), segments, ALGORITHM, IDENTITY)


def test_sr_refuses_a_finding_without_a_region(chest):
    with pytest.raises(ValueError, match="neither a segment in a SEG nor a center"):
        make_measurement_report(chest, [Finding("lost", codes.LUNG_NODULE, diameter_mm=4.0)],
                                ALGORITHM, IDENTITY, looked_for=codes.LUNG_NODULE)


def test_seg_over_a_multiframe_source_references_its_frames(products, multiframe):
    seg = pydicom.dcmread(products["seg_multiframe"][0])
    source = pydicom.dcmread(MULTIFRAME)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == np.count_nonzero(multiframe.array.reshape(3, -1).any(axis=1))
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(reference.ReferencedFrameNumber)
        source_frame = source.PerFrameFunctionalGroupsSequence[number - 1]
        assert (frame.PlanePositionSequence[0].ImagePositionPatient
                == source_frame.PlanePositionSequence[0].ImagePositionPatient)
        np.testing.assert_array_equal(frames[index], source.pixel_array[number - 1] > 0)


def test_sr_over_a_multiframe_source_references_it_as_evidence(products):
    sr = pydicom.dcmread(products["sr_multiframe"][0])
    source = pydicom.dcmread(MULTIFRAME, stop_before_pixels=True)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence}
    assert source.SOPInstanceUID in referenced
    report = hd.sr.srread(products["sr_multiframe"][0]).content
    group, = report.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_segment_numbers == [1]


def keywords(dataset: pydicom.Dataset) -> set[str]:
    return {element.keyword for element in dataset if element.keyword}


def test_sr_round_trip_gives_back_every_finding(products, chest):
    sr = hd.sr.srread(products["sr_chest"][0])
    seg = pydicom.dcmread(products["seg_chest"][0], stop_before_pixels=True)
    report = sr.content

    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == chest.sources[0].StudyInstanceUID
    assert sr.SOPInstanceUID.startswith(UID_ROOT + ".")
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == set(chest.sop_instance_uids) | {seg.SOPInstanceUID}

    library, = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    entries = [i for i in library.ContentSequence[0].ContentSequence if i.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == (
        chest.sop_instance_uids
    )
    assert [float(e.ContentSequence[2].MeasuredValueSequence[0].NumericValue) for e in entries] == [
        float(ds.ImagePositionPatient[2]) for ds in chest.sources
    ]

    segmented, = report.get_volumetric_roi_measurement_groups(
        reference_type=dicom_codes.DCM.ReferencedSegment
    )
    assert segmented.tracking_identifier == "nodule-1"
    assert segmented.tracking_uid == seg.SegmentSequence[0].TrackingUID
    assert segmented.finding_type.value == "27925004"
    assert segmented.finding_sites[0].value.value == "39607008"
    assert segmented.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert segmented.referenced_segment.referenced_segment_numbers == [1]
    measured = {(m.name.value, m.unit.value): m.value for m in segmented.get_measurements()}
    assert measured == {
        ("103339001", "mm"): pytest.approx(19.4),
        ("118565006", "mm3"): pytest.approx(3507.1),
        ("112031", "[hnsf'U]"): pytest.approx(-35.5),
        ("246262008", "%"): pytest.approx(91.0),  # a score of 0.91, in percent
    }

    located, = report.get_volumetric_roi_measurement_groups(
        reference_type=dicom_codes.DCM.VolumeSurface
    )
    assert located.tracking_identifier == "nodule-2"
    assert located.roi.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
    assert located.roi.frame_of_reference_uid == chest.frame_of_reference_uid
    np.testing.assert_allclose(located.roi.graphic_data.mean(axis=0), (-20.0, 10.0, 150.0))
    np.testing.assert_allclose(np.ptp(located.roi.graphic_data, axis=0), (6.0, 6.0, 6.0))


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("count", [1, 2])
def test_a_tumor_sr_with_one_or_more_lesions_beside_segments_passes_dciodvfy_and_pixelmed(products, count):
    """Pixelmed picks the template of all groups from the whole report: one image region alone
    made it check the segments' groups against TID 1410, and a group without a region failed
    TID 1411 (the case's quality, now a qualitative evaluation of the report)."""
    path = products[f"sr_ct3_lesions_{count}"][0]
    assert not (report := conformance(path)).errors, report.errors
    root = pydicom.dcmread(path).ContentSequence
    evaluations, = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert evaluations.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning == (
        "Usable - Meets the quality control standard")


def test_sr_without_findings_states_that_none_were_detected(products):
    report = hd.sr.srread(products["sr_chest_none"][0]).content
    group, = report.get_image_measurement_groups()
    assert group.finding_type.value == "27925004"
    evaluation, = group.get_qualitative_evaluations(name=dicom_codes.DCM.PresenceOfProperty)
    assert evaluation.value == dicom_codes.SCT.Absent
    assert group.tracking_identifier == "no lung nodule detected"


def _groups(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """The measurement groups by the finding's own identifier (after the viewer tool's name)."""
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    out = {}
    for group in measurements.ContentSequence:
        tracking = next(i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        out[str(tracking.TextValue).rsplit(":", 1)[-1]] = group
    return out


def _first(group: pydicom.Dataset, value_type: str, code: str | None = None) -> pydicom.Dataset:
    return next(i for i in group.ContentSequence if i.ValueType == value_type
                and (code is None or i.ConceptNameCodeSequence[0].CodeValue == code))


def test_findings_on_an_image_name_the_tool_a_viewer_draws_them_with_and_read_in_words(products, chest):
    sr = pydicom.dcmread(products["sr_viewer"][0])
    groups = _groups(sr)
    tools = {name: str(_first(g, "TEXT", "112039").TextValue) for name, g in groups.items()}
    assert tools == {"nodule-1": "Cornerstone3DTools@^0.1.0:Length:nodule-1",
                     "lesion-1": "Cornerstone3DTools@^0.1.0:ArrowAnnotate:lesion-1",
                     "lesion-2": "Cornerstone3DTools@^0.1.0:ArrowAnnotate:lesion-2",
                     "marker": "Cornerstone3DTools@^0.1.0:ArrowAnnotate:marker"}
    # OHIF labels a group with top-level coordinates by its finding site's code ("363698007: ...")
    for name, group in groups.items():
        top = {i.ValueType for i in group.ContentSequence}
        sites = [i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
        assert not (top & {"SCOORD", "SCOORD3D"} and sites), name
    assert str(_first(groups["nodule-1"], "TEXT", "121106").TextValue) == (
        "nodule-1: Lung nodule, right lung, upper zone")
    assert str(_first(groups["lesion-1"], "TEXT", "121106").TextValue) == "lesion-1: Neoplasm 3.2 mL"
    diameter = _first(groups["nodule-1"], "NUM")
    line = _first(diameter, "SCOORD")
    assert line.RelationshipType == "INFERRED FROM" and line.GraphicType == "POLYLINE"
    (x0, y0, x1, y1) = (float(v) for v in line.GraphicData)
    assert (x1 - x0) * chest.spacing[0] == pytest.approx(19.4) and y0 == y1 == 215.5
    assert (x0 + x1) / 2 == 110.5
    image = line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert image == chest.sources[12].SOPInstanceUID
    volume = [i for i in groups["nodule-1"].ContentSequence if i.ValueType == "NUM"][1]
    center = _first(volume, "SCOORD3D")
    np.testing.assert_allclose([float(v) for v in center.GraphicData], chest.kji_to_lps((12, 215, 110)))
    # radnode run's lines name each finding by its own identifier and site, on the group or its measurement
    lines = finding_lines(sr)
    assert [line.split(":")[0] for line in lines] == ["nodule-1", "lesion-1", "lesion-2", "marker"], lines
    assert " in Upper lobe of lung (right)" in lines[2], lines
    score = [i for i in groups["nodule-1"].ContentSequence if i.ValueType == "NUM"][-1]
    assert score.ConceptNameCodeSequence[0].CodeMeaning == "Score"
    assert score.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"


def test_arrow_labels_on_one_image_are_a_twelfth_of_its_rows_apart(products, chest):
    groups = _groups(pydicom.dcmread(products["sr_viewer"][0]))
    middles = []
    for name in ("lesion-1", "lesion-2", "marker"):
        arrow = _first(_first(groups[name], "NUM"), "SCOORD")
        head_x, head_y, tail_x, tail_y = (float(v) for v in arrow.GraphicData)
        assert tail_x > head_x  # the label is right of the arrow
        middles.append((head_y + tail_y) / 2)  # where a viewer writes it
    middles.sort()
    # heads 4 rows apart; labels 512 / 12 = 42.7 rows apart
    assert min(np.diff(middles)) >= chest.array.shape[1] / 12 - 1e-3, middles  # float32 coordinates


def tid1500_rows(sr: pydicom.Dataset) -> list[str]:
    """The TID 1500 rows a report's root children belong to, in order."""
    rows: list[str] = []
    for item in sr.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        row = {"121049": "language", "121058": "procedure", "111028": "image library",
               "126010": "imaging measurements"}.get(code)
        if item.RelationshipType == "HAS OBS CONTEXT":
            row = "observation context"
        if row and (not rows or rows[-1] != row):
            rows.append(row)
    return rows


def group_items(sr: pydicom.Dataset) -> dict[tuple[str, str], tuple[str, str]]:
    """(scheme, code) -> (relationship, value type) of the first measurement group's items."""
    measurements = next(i for i in sr.ContentSequence
                        if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    group = measurements.ContentSequence[0]
    return {
        (i.ConceptNameCodeSequence[0].CodingSchemeDesignator,
         i.ConceptNameCodeSequence[0].CodeValue): (i.RelationshipType, i.ValueType)
        for i in group.ContentSequence
    }


def test_sr_has_the_tid1500_layout_of_the_reference_reports(products):
    ours = pydicom.dcmread(products["sr_chest"][0])
    dcmqi = pydicom.dcmread(DCMQI / "sr-example" / "sr.dcm")
    highdicom_reference = pydicom.dcmread(HIGHDICOM / "sr_document_with_multiple_groups.dcm")

    assert ours.SOPClassUID == highdicom_reference.SOPClassUID
    for reference in (dcmqi, highdicom_reference):
        assert ours.ConceptNameCodeSequence[0].CodeValue == "126000"
        assert (ours.ContentTemplateSequence[0].TemplateIdentifier
                == reference.ContentTemplateSequence[0].TemplateIdentifier == "1500")
    assert tid1500_rows(ours) == tid1500_rows(dcmqi)
    assert [r for r in tid1500_rows(ours) if r != "image library"] == tid1500_rows(
        highdicom_reference
    )
    # The rows of a segment-based TID 1411 group that dcmqi writes, with the same relationships.
    ours_group = group_items(ours)
    for key in [("DCM", "112039"), ("DCM", "112040"), ("DCM", "121071"), ("DCM", "121191"),
                ("DCM", "121232")]:
        assert ours_group[key] == group_items(dcmqi)[key]
    assert ours_group[("SCT", "363698007")] == ("HAS CONCEPT MOD", "CODE")


def test_derived_series_keeps_geometry_and_saturates_out_of_range_values(
    products, chest, derived_values
):
    derived = load_series(products["derived_chest"])

    np.testing.assert_allclose(derived.origin, chest.origin)
    np.testing.assert_allclose(derived.direction, chest.direction)
    assert derived.spacing == pytest.approx(chest.spacing)
    # 12-bit unsigned with intercept -1024 holds -1024..3071 HU; beyond that it saturates.
    expected = np.clip(np.rint(derived_values + 1024), 0, 4095) - 1024
    np.testing.assert_array_equal(derived.array, expected)
    assert derived.array[3, 0, 0] == -1024 and derived.array[3, 0, 1] == 3071

    series_uids = {ds.SeriesInstanceUID for ds in derived.sources}
    assert len(series_uids) == 1 and series_uids.pop().startswith(UID_ROOT + ".")
    for k, ds in enumerate(derived.sources):
        source = chest.sources[k]
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert ds.DerivationCodeSequence[0].CodeValue == "110001"
        assert ds.DerivationDescription.startswith("test transform")
        assert ds.SeriesDescription == "radnode test: HU x 0.5 - 100"
        assert ds.Manufacturer == "radnode" and ds.ContentDate
        assert ds.ContributingEquipmentSequence[0].Manufacturer == "SIEMENS"
        for keyword in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
                        "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            assert ds[keyword].value == source[keyword].value
        assert not any(element.tag.is_private for element in ds)


def test_derived_series_copies_the_source_headers_and_leaves_them_as_they_were(chest):
    before = [copy.deepcopy(source) for source in chest.sources]
    derived = list(make_derived_series(chest, chest.array, IDENTITY, Derivation(ALGORITHM, "copy check", "copy check")))
    derived[0].ReferencedImageSequence = []  # an edit of a result must not reach its source
    derived[1].ImagePositionPatient = [0, 0, 0]
    assert list(chest.sources) == before
    rewritten = {Tag(keyword) for keyword in DERIVED_REWRITES}
    for ds, source in zip(derived[2:], before[2:]):
        kept = [t for t in source.keys() if t in ds and t not in rewritten]
        assert len(kept) > 50 and all(ds[t] == source[t] for t in kept)
        assert not any(tag.is_private for tag in ds.keys()) and "PixelData" not in source


#: What two writings of one series state differently: new UIDs, and the time they were made.
WRITTEN_ANEW = {"SOPInstanceUID", "SeriesInstanceUID", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime",
                "InstanceCreationDate", "InstanceCreationTime"}


def test_writer_processes_write_each_slice_as_the_threads_do_and_keep_slice_order(chest, derived_values, tmp_path):
    """A GPU server writes a derived series with processes (``pipelines.processes``): every file
    must be what the threads write, and the records must come back in slice order."""
    derivation = Derivation(ALGORITHM, "writer check", "writer check")
    by_threads = write_derived_series(chest, derived_values, IDENTITY, derivation, tmp_path / "threads", processes=0)
    by_processes = write_derived_series(chest, derived_values, IDENTITY, derivation, tmp_path / "processes",
                                        processes=2)

    assert len(by_processes) == len(by_threads) == len(chest.sources) >= 4
    assert len({record.series_uid for record in by_processes}) == 1
    for thread_record, record, source in zip(by_threads, by_processes, chest.sources):
        ours, reference = pydicom.dcmread(record.path), pydicom.dcmread(thread_record.path)
        assert record.path.name == f"{ours.SOPInstanceUID}.dcm" == f"{record.sop_uid}.dcm"
        assert ours.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        differing = {element.keyword for element in reference if ours.get(element.tag) != element}
        assert differing <= WRITTEN_ANEW and ours.PixelData == reference.PixelData


def test_stored_values_saturate_instead_of_wrapping():
    header = pydicom.Dataset()
    header.update({"BitsAllocated": 16, "BitsStored": 12, "PixelRepresentation": 0,
                   "RescaleSlope": 2, "RescaleIntercept": -1000})
    values = np.array([-5000.0, -1000.0, -999.0, 7190.0, 9000.0])
    np.testing.assert_array_equal(stored_values(values, header), [0, 0, 0, 4095, 4095])
    header.PixelRepresentation = 1
    np.testing.assert_array_equal(stored_values(values, header), [-2000, 0, 0, 2047, 2047])
    assert stored_values(values, header).dtype == np.int16


@pytest.mark.peers
def test_dciodvfy_reports_no_errors_on_any_written_object(products):
    problems = {}
    for name, paths in products.items():
        for path in paths:
            report = dciodvfy(path)
            if report.errors:
                problems[f"{name}/{path.name}"] = report.errors
    assert not problems


def test_orthanc_stores_every_object_in_its_source_study(products, orthanc):
    expected: dict[str, set[str]] = {}
    by_syntax: dict[str, list[Path]] = {}
    for path in (path for files in products.values() for path in files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPInstanceUID)
        by_syntax.setdefault(ds.file_meta.TransferSyntaxUID, []).append(path)
    # One association per transfer syntax, proposing that syntax, so that each object travels
    # in its own encoding (storescu otherwise decompresses RLE/JPEG-LS and fails on JPEG 2000).
    for syntax, paths in by_syntax.items():
        propose = STORESCU_PROPOSE.get(syntax, ())
        sent = storescu(orthanc.dicom_port, paths, called_aet=orthanc.aet, extra=propose)
        assert sent.returncode == 0 and "Failed" not in sent.stderr, (syntax, sent.stderr)

    for study, uids in expected.items():
        stored = orthanc.wait_for(
            lambda pacs, study=study, uids=uids: (
                found if uids <= (found := {i["MainDicomTags"]["SOPInstanceUID"]
                                            for i in pacs.instances_of_study(study)})
                else None
            ),
            timeout=30,
        )
        assert uids <= stored
