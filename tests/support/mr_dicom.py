"""Brain MR NIfTI volumes written as DICOM MR series, so the tumor tests go through DICOM (and SEGs read back).

Geometry comes from the image (SimpleITK reads NIfTI into LPS, the DICOM patient frame): slice
positions from the voxel grid, orientation from its direction cosines. Headers carry what a
scanner writes and what routes select on: SeriesDescription, ScanningSequence, SequenceVariant,
echo and repetition times, and ContrastBolusAgent on the post-contrast T1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pipelines.tumor.preprocess import dice
from pipelines.volume import load_series
from training.tumor.clinical_t1c import heldout_scans, load_scan

#: Scanner-like acquisition attributes per contrast role.
PROTOCOLS: dict[str, dict[str, object]] = {
    "t1c": {"SeriesDescription": "T1 MPRAGE AX POST GD", "ScanningSequence": ["GR", "IR"],
            "SequenceVariant": ["SP", "MP"], "MRAcquisitionType": "3D", "RepetitionTime": 2300.0,
            "EchoTime": 2.3, "InversionTime": 900.0, "FlipAngle": 8.0, "ContrastBolusAgent": "Gadobutrol"},
    "t1": {"SeriesDescription": "T1 SE AX", "ScanningSequence": ["SE"], "SequenceVariant": ["SK", "SP"],
           "MRAcquisitionType": "2D", "RepetitionTime": 550.0, "EchoTime": 11.0, "FlipAngle": 90.0},
    "t2": {"SeriesDescription": "T2 TSE AX", "ScanningSequence": ["SE"], "SequenceVariant": ["SK", "SP", "OSP"],
           "MRAcquisitionType": "2D", "RepetitionTime": 4500.0, "EchoTime": 95.0, "FlipAngle": 150.0},
    "flair": {"SeriesDescription": "AX T2 FLAIR", "ScanningSequence": ["SE", "IR"],
              "SequenceVariant": ["SK", "SP", "MP"], "MRAcquisitionType": "2D", "RepetitionTime": 9000.0,
              "EchoTime": 120.0, "InversionTime": 2500.0, "FlipAngle": 150.0},
}

#: Route inputs that select the four contrasts from these headers (and from typical scanners'):
#: T1c first so that the post-contrast T1 is never taken as the native T1.
ROUTE_INPUTS = {
    "t1c": {"required": True, "match": {"SeriesDescription": {"regex": "(?i)t1"},
                                        "ContrastBolusAgent": {"present": True}}},
    "flair": {"required": False, "match": {"SeriesDescription": {"regex": "(?i)flair"}}},
    "t2": {"required": False, "match": {"SeriesDescription": {"regex": "(?i)t2"},
                                        "ScanningSequence": {"regex": "^(?!.*IR)"}}},
    "t1": {"required": False, "match": {"SeriesDescription": {"regex": "(?i)t1"},
                                        "ContrastBolusAgent": {"present": False}}},
}

#: The study route of tumor-segmentation as a site configures it (the shipped config's inputs);
#: a short study timeout, since these studies are sent whole.
TUMOR_ROUTE = {
    "name": "brain-tumor", "pipeline": "tumor-segmentation", "destinations": ["pacs"], "level": "study",
    "study_timeout_seconds": 8.0, "match": {"Modality": "MR"}, "inputs": ROUTE_INPUTS,
}


@dataclass
class Study:
    """Identifiers shared by the series of one synthetic study."""

    patient_id: str = "RADNODE-TEST-BRAIN"
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    next_series_number: int = 1


def moved(image: sitk.Image, rotation_deg: tuple[float, float, float], shift_mm: tuple[float, float, float],
          center: tuple[float, float, float] | None = None) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """The same voxels placed rigidly elsewhere in the patient frame (no resampling, no loss).

    Returns the moved image and the transform T with moved(T(p)) = image(p): registering the
    moved image onto the original must find T.
    """
    size = np.array(image.GetSize()) - 1
    transform = sitk.Euler3DTransform()
    transform.SetCenter(center or image.TransformContinuousIndexToPhysicalPoint((size / 2.0).tolist()))
    transform.SetRotation(*(math.radians(a) for a in rotation_deg))
    transform.SetTranslation(shift_mm)
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    result = sitk.Image(image)
    result.SetOrigin(transform.TransformPoint(image.GetOrigin()))
    result.SetDirection(tuple((matrix @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    return result, transform


def resliced(image: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    """The image on a coarser grid of the same orientation (e.g. a 2D protocol's thick slices)."""
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def write_series(image: sitk.Image, role: str, folder: Path, study: Study) -> list[Path]:
    """One MR Image Storage file per slice of ``image`` in ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    array = np.clip(np.rint(sitk.GetArrayFromImage(image)), -32768, 32767).astype(np.int16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    series_uid = generate_uid()
    series_number = study.next_series_number
    study.next_series_number += 1
    paths = []
    for k in range(array.shape[0]):
        ds = _header(role, study, series_uid, series_number, k)
        ds.ImagePositionPatient = [round(v, 4) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [round(v, 6) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [round(spacing[1], 6), round(spacing[0], 6)]
        ds.SliceThickness = round(spacing[2], 6)
        ds.SpacingBetweenSlices = round(spacing[2], 6)
        ds.Rows, ds.Columns = array.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = array[k].tobytes()
        path = folder / f"{role}_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _header(role: str, study: Study, series_uid: str, series_number: int, k: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.Modality = "MR"
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "Prisma"
    ds.MagneticFieldStrength = 3.0
    ds.PatientName, ds.PatientID = "Test^Brain", study.patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series_uid
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "120000", f"12{series_number:02d}00", f"12{series_number:02d}00"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC-BRAIN-1", ""
    ds.StudyDescription = "MR BRAIN W/WO CONTRAST"
    ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.ScanOptions = ""
    ds.EchoTrainLength = 1
    for keyword, value in PROTOCOLS[role].items():
        setattr(ds, keyword, value)
    return ds


#: A clinical-style protocol built from a co-registered 1 mm study: T1c as an isotropic 3D
#: series, the others as thick-slice 2D series, each with its own small patient motion
#: (rotation in degrees, shift in mm), so the pipeline must register them.
CLINICAL = {
    "t1c": ((1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "flair": ((1.5, 1.5, 4.0), (2.0, -1.5, 3.0), (3.0, -2.0, 2.5)),
    "t2": ((1.5, 1.5, 4.0), (-2.5, 1.0, -2.0), (-2.0, 3.0, 1.0)),
    "t1": ((1.5, 1.5, 4.0), (1.0, 2.0, -1.0), (1.5, 1.5, -3.0)),
}


def write_clinical_study(images: dict[str, sitk.Image], folder: Path, roles: tuple[str, ...] = tuple(CLINICAL),
                         study: Study | None = None) -> tuple[Study, dict[str, list[Path]]]:
    """Each role of ``images`` as a DICOM series of the ``CLINICAL`` protocol; returns the files per role."""
    study = study or Study()
    series = {}
    for role in roles:
        spacing, rotation, shift = CLINICAL[role]
        image, _ = moved(resliced(images[role], spacing), rotation, shift)
        series[role] = write_series(image, role, folder / role, study)
    return study, series


def seg_labels(seg: pydicom.Dataset, source: list[Path]) -> np.ndarray:
    """Segment numbers (0 = none) on the source series' grid, from the SEG's frames and their source references."""
    volume = load_series(source)
    slice_of = {uid: k for k, uid in enumerate(volume.sop_instance_uids)}
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    pixels = seg.pixel_array.reshape(-1, *labels.shape[1:])
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        k = slice_of[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        labels[k][frame > 0] = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    return labels


#: SEG segment numbers of the tumor core: necrosis (1) and enhancing tumor (3); edema (2) is not TC.
CORE_SEGMENTS = (1, 3)


def heldout_case(data_dir: Path, name: str, folder: Path) -> tuple[list[Path], np.ndarray]:
    """A held-out clinical T1c (``clinical_t1c.HELDOUT_CASES``) as a DICOM series in ``folder`` on
    its recovered geometry, and its tumor-core mask on that series' grid."""
    scan = next(s for s in heldout_scans(data_dir) if s.name == name)
    image, mask = load_scan(scan)
    paths = write_series(image, "t1c", folder, Study())
    grid = load_series(paths).to_sitk()
    reference = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor)
    return paths, sitk.GetArrayFromImage(reference) > 0


def tc_dice(seg: pydicom.Dataset, source: list[Path], reference: np.ndarray) -> float:
    """Tumor-core Dice of a SEG on its source series against a reference core."""
    return dice(np.isin(seg_labels(seg, source), CORE_SEGMENTS), reference)
