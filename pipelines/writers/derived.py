"""A derived image series (for example a denoised CT) in the source's geometry and study.

highdicom has no CT or MR image constructor, so each derived image is the source slice's header
with everything that described the source's pixels or identity replaced: the header already
carries the exact geometry, rescale and windowing the PACS and viewers expect, and copying it is
the only way to keep a model's output on the same grid as the images it was computed from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.volume import Volume
from pipelines.writers.codes import IMAGE_PROCESSING
from pipelines.writers.identity import Algorithm, Identity, content_date_time
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.source import drop_invalid_items, header_copy

#: Attributes that describe the source's pixel values or file, not the derived image's.
_STALE = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "IconImageSequence",
    "SourceImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
    "ContributingEquipmentSequence",
    "DataSetTrailingPadding",
)
_STALE_TAGS = frozenset(Tag(keyword) for keyword in _STALE)


def make_derived_series(
    volume: Volume,
    values: np.ndarray,
    identity: Identity,
    *,
    algorithm: Algorithm,
    series_description: str,
    derivation_description: str,
    derivation: Code = IMAGE_PROCESSING,
    series_number: int | None = None,
) -> Iterator[Dataset]:
    """One new instance per slice of ``values`` (modality units, e.g. HU, shaped like the volume),
    made as they are taken (checked at once): ``write_datasets`` writes each while the next is made.

    Each image keeps its source's Instance Number, so a viewer scrolls both alike. Stored values
    use each source slice's rescale and are clipped to its pixel representation, so an
    out-of-range output saturates instead of wrapping (a wrapped -3000 HU shows as bright bone).
    """
    if values.shape != volume.array.shape:
        raise ValueError(
            f"derived values {values.shape} do not match the volume {volume.array.shape}: a "
            "derived series keeps the source geometry, resample back before writing"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            "derived values contain NaN or infinity (a diverged model?); refusing to write "
            "images whose pixels would be undefined"
        )
    if volume.is_multiframe:
        raise ValueError(
            "the source is an enhanced multi-frame instance; derived series are written only "
            "for single-frame sources (write a SEG, or convert the source first)"
        )
    series_uid = identity.new_uid()
    date, time = content_date_time()
    equipment = identity.processing_equipment(algorithm)
    number = series_number or result_series_number(volume.sources[0], ResultKind.DERIVED_IMAGES)
    return (
        _derived_slice(
            source, values[k], identity, series_uid, instance_number, date, time,
            equipment=equipment,
            series_description=series_description,
            series_number=number,
            derivation=derivation,
            derivation_description=derivation_description,
        )
        for k, (source, instance_number) in enumerate(zip(volume.sources, _instance_numbers(volume.sources)))
    )


def _instance_numbers(sources: Sequence[Dataset]) -> list[int]:
    """The sources' own Instance Numbers when each has a distinct one, else 1, 2, ... in the
    volume's order (a derived series needs distinct numbers to be scrolled in order)."""
    numbers = []
    for source in sources:
        try:
            numbers.append(int(source.get("InstanceNumber")))
        except (TypeError, ValueError):
            return list(range(1, len(sources) + 1))
    return numbers if len(set(numbers)) == len(numbers) else list(range(1, len(sources) + 1))


def stored_values(values: np.ndarray, source: Dataset) -> np.ndarray:
    """Modality values back to the source's stored integers, saturated at the stored range."""
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    bits = int(source.BitsStored)
    signed = int(source.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = np.dtype(f"{'i' if signed else 'u'}{int(source.BitsAllocated) // 8}")
    raw = np.rint((values.astype(np.float64) - intercept) / slope)
    return np.clip(raw, low, high).astype(dtype)


def _derived_slice(
    source: Dataset,
    values: np.ndarray,
    identity: Identity,
    series_uid: str,
    instance_number: int,
    date: str,
    time: str,
    *,
    equipment: Dataset,
    series_description: str,
    series_number: int,
    derivation: Code,
    derivation_description: str,
) -> Dataset:
    # Top-level private tags carry vendor pixel calibrations that no longer hold; private tags
    # nested in reference sequences are left alone (walking every sequence doubles the cost).
    ds = header_copy(source, _STALE_TAGS)
    drop_invalid_items(ds)
    if not ds.get("SpecificCharacterSet"):
        ds.pop("SpecificCharacterSet", None)
    if not any(k in ds for k in ("BodyPartExamined", "Laterality", "ImageLaterality")):
        # Laterality is required (2C) when the body part may be paired; unknown part, unknown side.
        ds.Laterality = ""

    ds.SOPInstanceUID = identity.new_uid()
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
    ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", []))[2:3]]
    ds.DerivationDescription = derivation_description[:1024]
    ds.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(derivation)]
    ds.SourceImageSequence = [_source_reference(source)]
    ds.ContributingEquipmentSequence = [_acquisition_equipment(source), header_copy(equipment)]
    ds.Manufacturer = identity.manufacturer
    ds.ManufacturerModelName = identity.model_name
    ds.SoftwareVersions = identity.software_versions
    ds.DeviceSerialNumber = identity.station_name

    pixel_vr = "OW" if int(source.BitsAllocated) > 8 else "OB"
    ds.add_new("PixelData", pixel_vr, stored_values(values, source).tobytes())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = f"radnode {identity.software_versions}"[:16]
    return ds


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    return item


def _acquisition_equipment(source: Dataset) -> Dataset:
    """The scanner that acquired the source, which the derived header no longer names."""
    item = Dataset()
    item.Manufacturer = source.get("Manufacturer", "")
    for keyword in ("ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions"):
        if source.get(keyword):
            item[keyword] = copy.deepcopy(source[keyword])
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.AcquisitionEquipment)
    ]
    return item
