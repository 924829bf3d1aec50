"""DICOM Segmentation from masks in the geometry of a loaded series.

Each mask slice is tied to the source slice it was computed on: plane positions are copied from
that slice's header, never derived from array order (the mistake described at
https://github.com/ImagingDataCommons/highdicom/issues/117), so a mask can only ever land on the
slice the model looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from pipelines.volume import Volume
from pipelines.writers.codes import Structure
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.source import copyable


class FrameCompression(StrEnum):
    """Lossless frame compression for large masks.

    BINARY (1 bit) frames can only be JPEG 2000 (highdicom refuses RLE and JPEG-LS for 1-bit data;
    decoders disagree on 1-bit RLE), so RLE and JPEG-LS store 8-bit FRACTIONAL frames of 0 and 255,
    which every SEG reader takes as the same hard mask. JPEG-LS is the one for large masks
    (``bench/writers.py`` prints its speed and size); RLE is for PACS that take no JPEG-LS.
    """

    NONE = "none"
    JPEG2000 = "jpeg2000"
    RLE = "rle"
    JPEGLS = "jpegls"


_TRANSFER_SYNTAX = {
    FrameCompression.NONE: ExplicitVRLittleEndian,
    FrameCompression.JPEG2000: JPEG2000Lossless,
    FrameCompression.RLE: RLELossless,
    FrameCompression.JPEGLS: JPEGLSLossless,
}


@dataclass(frozen=True)
class Segment:
    """One structure of the result; numbered by its position in the list (1, 2, ...)."""

    structure: Structure
    tracking_id: str
    tracking_uid: str | None = None
    label: str | None = None


def make_segmentation(
    volume: Volume,
    mask: np.ndarray,
    segments: Sequence[Segment],
    algorithm: Algorithm,
    identity: Identity,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
    keep_empty_frames: bool = False,
    compression: FrameCompression = FrameCompression.NONE,
) -> hd.seg.Segmentation:
    """A SEG of ``mask`` over ``volume``'s source series.

    ``mask`` is either a label volume shaped like ``volume.array`` (0 = background, n = segment n)
    or stacked binary masks with one more axis, one per segment (segments may then overlap).
    An all-empty mask (nothing found) is written with all frames. ``keep_empty_frames`` keeps
    empty frames for viewers such as OHIF that expect one per source slice."""
    _check_mask(volume, mask, segments)
    fractional = compression in (FrameCompression.RLE, FrameCompression.JPEGLS)
    plane_positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, volume.slice_position(k).tolist())
        for k in range(volume.array.shape[0])
    ]
    return hd.seg.Segmentation(
        source_images=_source_images(volume),
        pixel_array=_as_unsigned(mask, len(segments)),
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        max_fractional_value=255,
        segment_descriptions=[
            _describe(number, segment, algorithm, identity)
            for number, segment in enumerate(segments, start=1)
        ],
        **identity.new_object(
            series_number or result_series_number(volume.sources[0], ResultKind.SEGMENTATION)
        ),
        series_description=series_description or f"{algorithm.name} segmentation",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        content_label="RADNODE_SEG",
        plane_positions=plane_positions,
        omit_empty_frames=not keep_empty_frames,
        transfer_syntax_uid=_TRANSFER_SYNTAX[compression],
        # An empty value in the source (seen in the wild) would be copied and is invalid.
        specific_character_set=volume.sources[0].get("SpecificCharacterSet") or None,
        contributing_equipment=[identity.processing_equipment(algorithm)],
    )


def _check_mask(volume: Volume, mask: np.ndarray, segments: Sequence[Segment]) -> None:
    if not segments:
        raise ValueError(
            "no segments described: pass one Segment per structure, even when nothing was "
            "found (an empty mask is a valid result)"
        )
    if mask.shape[:3] != volume.array.shape or mask.ndim not in (3, 4):
        raise ValueError(
            f"mask shape {mask.shape} does not match the volume {volume.array.shape}: masks must "
            "be computed in the source geometry (resample back before writing)"
        )
    if mask.ndim == 4 and mask.shape[3] != len(segments):
        raise ValueError(
            f"{mask.shape[3]} stacked masks but {len(segments)} segments described"
        )
    if mask.dtype.kind not in "biu":
        raise ValueError(
            f"mask has dtype {mask.dtype}: threshold probabilities into labels or binary masks "
            "before writing (a SEG here is BINARY)"
        )
    if mask.dtype != bool and mask.min(initial=0) < 0:
        raise ValueError("mask has negative labels: use 0 for background, n for segment n")
    if mask.ndim == 3 and mask.dtype != bool and int(mask.max(initial=0)) > len(segments):
        raise ValueError(
            f"label {int(mask.max())} in the mask but only {len(segments)} segments described"
        )


def _as_unsigned(mask: np.ndarray, segment_count: int) -> np.ndarray:
    """highdicom takes bool, uint8 or uint16 masks; model outputs are often int64."""
    dtype = np.uint8 if segment_count < 256 else np.uint16
    return mask if mask.dtype == dtype else mask.astype(dtype)


def _source_images(volume: Volume) -> list[Dataset]:
    """The distinct source instances in slice order (one instance for a multi-frame source)."""
    unique = {ds.SOPInstanceUID: ds for ds in volume.sources}
    if volume.is_multiframe and len(unique) > 1:
        raise ValueError(
            f"the volume spans {len(unique)} multi-frame instances; a SEG can reference only one "
            "multi-frame source, so write one SEG per instance"
        )
    return [copyable(ds) for ds in unique.values()]


def _describe(
    number: int, segment: Segment, algorithm: Algorithm, identity: Identity
) -> hd.seg.SegmentDescription:
    structure = segment.structure
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=(segment.label or structure.label)[:64],
        segmented_property_category=structure.category,
        segmented_property_type=structure.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.for_segmentation(),
        tracking_id=segment.tracking_id,
        tracking_uid=segment.tracking_uid or identity.new_uid(),
        anatomic_regions=[structure.site] if structure.site is not None else None,
    )
