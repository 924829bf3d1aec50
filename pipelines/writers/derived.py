"""A derived image series (for example a denoised CT) in the source's geometry and study.

highdicom has no CT or MR image constructor, so each derived image is the source slice's header
with everything that described the source's pixels or identity replaced: the header already
carries the exact geometry, rescale and windowing the PACS and viewers expect, and copying it is
the only way to keep a model's output on the same grid as the images it was computed from.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.processes import MIN_CORES, default_processes, discard, maps_shared_arrays, pool
from pipelines.shared_array import SharedArray, shared_copy
from pipelines.volume import Volume
from pipelines.writers.codes import IMAGE_PROCESSING
from pipelines.writers.identity import Algorithm, Identity, content_date_time
from pipelines.writers.output import WrittenObject, write_dataset, write_datasets
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


@dataclass(frozen=True)
class Derivation:
    """What made a derived series and how it names itself in the viewer's series list."""

    algorithm: Algorithm
    series_description: str
    #: DerivationDescription: the transform in words, for the radiologist who opens the header
    description: str
    code: Code = IMAGE_PROCESSING
    #: None: numbered after the source series (``writers.series``)
    series_number: int | None = None


@dataclass(frozen=True)
class SeriesHeader:
    """What every slice of one derived series shares. Picklable, so writer processes make slices."""

    identity: Identity
    derivation: Derivation
    series_uid: str
    series_number: int
    date: str
    time: str
    equipment: Dataset

    def slice(self, source: Dataset, stored: np.ndarray, instance_number: int) -> Dataset:
        """The derived instance of ``source`` holding ``stored`` (its stored integers)."""
        # Top-level private tags carry vendor pixel calibrations that no longer hold; private tags
        # nested in reference sequences are left alone (walking every sequence doubles the cost).
        ds = header_copy(source, _STALE_TAGS)
        drop_invalid_items(ds)
        if not ds.get("SpecificCharacterSet"):
            ds.pop("SpecificCharacterSet", None)
        if not any(k in ds for k in ("BodyPartExamined", "Laterality", "ImageLaterality")):
            # Laterality is required (2C) when the body part may be paired; unknown part, unknown side.
            ds.Laterality = ""

        ds.SOPInstanceUID = self.identity.new_uid()
        ds.SeriesInstanceUID = self.series_uid
        ds.SeriesNumber = self.series_number
        ds.InstanceNumber = instance_number
        ds.SeriesDescription = self.derivation.series_description[:64]
        ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = self.date
        ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = self.time
        ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", []))[2:3]]
        ds.DerivationDescription = self.derivation.description[:1024]
        ds.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(self.derivation.code)]
        ds.SourceImageSequence = [_source_reference(source)]
        ds.ContributingEquipmentSequence = [_acquisition_equipment(source), header_copy(self.equipment)]
        ds.Manufacturer = self.identity.manufacturer
        ds.ManufacturerModelName = self.identity.model_name
        ds.SoftwareVersions = self.identity.software_versions
        ds.DeviceSerialNumber = self.identity.station_name

        pixel_vr = "OW" if int(source.BitsAllocated) > 8 else "OB"
        ds.add_new("PixelData", pixel_vr, stored.tobytes())
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationVersionName = f"radnode {self.identity.software_versions}"[:16]
        return ds


def make_derived_series(volume: Volume, values: np.ndarray, identity: Identity,
                        derivation: Derivation) -> Iterator[Dataset]:
    """One new instance per slice of ``values`` (modality units, e.g. HU, shaped like the volume),
    made as they are taken (checked at once): ``write_datasets`` writes each while the next is made.

    Each image keeps its source's Instance Number, so a viewer scrolls both alike. Stored values
    use each source slice's rescale and are clipped to its pixel representation, so an
    out-of-range output saturates instead of wrapping (a wrapped -3000 HU shows as bright bone).
    """
    header = _series_header(volume, values, identity, derivation)
    return (header.slice(*item) for item in _slices(volume, values))


def write_derived_series(volume: Volume, values: np.ndarray, identity: Identity, derivation: Derivation,
                         directory: Path, processes: int | None = None) -> list[WrittenObject]:
    """``make_derived_series`` written to ``directory`` (``write_datasets``' guarantees), by
    ``processes`` writer processes (default ``processes.default_processes()``; 0: threads), which
    read ``values`` from one shared copy (``shared_array``)."""
    workers = default_processes() if processes is None else processes
    if workers == 0 or len(volume.sources) < 2 * workers or not _processes_ready(workers):
        return write_datasets(make_derived_series(volume, values, identity, derivation), directory)
    header = _series_header(volume, values, identity, derivation)
    items = list(enumerate(zip(volume.sources, _instance_numbers(volume.sources))))
    directory.mkdir(parents=True, exist_ok=True)
    chunks = [items[i::2 * workers] for i in range(2 * workers)]
    with shared_copy(values) as shared, _pool_errors():
        written = list(pool(workers).map(_write_slices, repeat(header), repeat(directory), repeat(shared), chunks))
    # chunk i holds slices i, i + n, i + 2n, ...: put the records back in slice order
    return [written[k % len(chunks)][k // len(chunks)] for k in range(len(items))]


def _processes_ready(workers: int) -> bool:
    """Whether the writer processes can read the job's shared arrays (asked once per pool)."""
    with _pool_errors():
        return maps_shared_arrays(workers)


@contextmanager
def _pool_errors() -> Iterator[None]:
    """A writer process that died becomes an error saying what to do; the next job gets a new pool."""
    try:
        yield
    except BrokenProcessPool as exc:
        discard()
        raise RuntimeError(
            "a process writing the derived series died (out of memory?); retry the job, and if it "
            f"dies again give the worker fewer than {MIN_CORES} cores, which writes with threads"
        ) from exc


def _slices(volume: Volume, values: np.ndarray) -> Iterator[tuple[Dataset, np.ndarray, int]]:
    """Each slice's source header, stored integers and Instance Number, in the volume's order."""
    for k, (source, number) in enumerate(zip(volume.sources, _instance_numbers(volume.sources))):
        yield source, stored_values(values[k], source), number


def _write_slices(header: SeriesHeader, directory: Path, shared: SharedArray,
                  items: list[tuple[int, tuple[Dataset, int]]]) -> list[WrittenObject]:
    """One writer process's share of a derived series: slice ``k`` of the shared values for each item."""
    values = shared.open()
    return [write_dataset(header.slice(source, stored_values(values[k], source), number), directory)
            for k, (source, number) in items]


def _series_header(volume: Volume, values: np.ndarray, identity: Identity, derivation: Derivation) -> SeriesHeader:
    """The shared header of a derived series, once ``values`` is checked against ``volume``."""
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
    date, time = content_date_time()
    return SeriesHeader(
        identity=identity,
        derivation=derivation,
        series_uid=identity.new_uid(),
        series_number=derivation.series_number or result_series_number(volume.sources[0], ResultKind.DERIVED_IMAGES),
        date=date,
        time=time,
        equipment=identity.processing_equipment(derivation.algorithm),
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
    # float32 in place: exact for every stored integer up to 2**24, and a third of float64's passes.
    raw: np.ndarray = np.subtract(values, intercept, dtype=np.float32)
    if slope != 1:
        raw /= slope
    np.rint(raw, out=raw)
    np.clip(raw, low, high, out=raw)
    return raw.astype(dtype)


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
