"""Turn the files of one DICOM series into a volume whose geometry every pipeline can trust.

The one place radnode decides geometry. The loader keeps each array slice's source instance (and
frame), so findings go back on the right slice, and refuses a series that is not one regular grid
instead of guessing. Conventions (DICOM patient frame, LPS, mm): ``array[k, j, i]`` is slice, row,
column; ``direction`` columns are the row, column and slice directions (slices sorted along the
image normal, so a proper rotation); ``spacing`` is (column, row, slice), SimpleITK's order.
Gantry tilt is refused, not resampled: a resampled grid has no source instances to reference.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array

if TYPE_CHECKING:
    import SimpleITK as sitk

#: Direction cosines of two slices that differ by less than this count as the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Pixel spacings (mm) that differ by less than this count as equal.
PIXEL_SPACING_TOLERANCE = 1e-3
#: A slice step may differ from the series' typical step by this fraction before it is uneven.
SLICE_SPACING_TOLERANCE = 0.05
#: Slices whose stack direction leans more than this off the image normal are a tilted gantry.
TILT_TOLERANCE_DEG = 0.25
#: Positions, spacings (mm) and direction cosines closer than this are the same grid: DICOM
#: writes positions as decimal strings of at most 16 characters.
SAME_GRID_TOLERANCE = 1e-3
#: Fewer slices than this are localizers or single images, not a volume.
MIN_SLICES = 3
#: Values longer than this (pixel data) are read from the file only when decoded, so each file is
#: parsed once and a series' pixel data is never all in memory as bytes beside its volume.
DEFER_BYTES = 4096
#: Files decoded at once: one per core (a 16-core GPU server), at most 16.
DECODE_THREADS = min(16, len(os.sched_getaffinity(0)))


class VolumeError(ValueError):
    """The files do not form one regular volume; the message says why and what to do."""


@dataclass(frozen=True)
class Volume:
    """A series as a regular grid in the patient frame, linked slice by slice to its sources.

    ``array`` holds modality units (HU for CT) as float32, shape (slices, rows, columns).
    ``sources[k]`` is the header (no pixel data) of the instance slice ``k`` came from and
    ``frames[k]`` its 1-based frame number there (1 for single-frame instances).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    sources: tuple[Dataset, ...]
    frames: tuple[int, ...]
    frame_of_reference_uid: str | None
    modality: str

    @property
    def sop_instance_uids(self) -> list[str]:
        """Source instance of each slice, in slice order (repeats for a multi-frame source)."""
        return [str(ds.SOPInstanceUID) for ds in self.sources]

    @property
    def slice_mm(self) -> float:
        """How much of the patient one slice stands for: the larger of the slice spacing and the
        nominal SliceThickness (overlapping slices are as thick as their thickness, gapped ones as
        their spacing)."""
        nominal = self.sources[0].get("SliceThickness") if self.sources else None
        return max(float(self.spacing[2]), float(nominal) if nominal not in (None, "") else 0.0)

    @property
    def is_multiframe(self) -> bool:
        """True when the slices are frames of enhanced (multi-frame) instances."""
        return "PerFrameFunctionalGroupsSequence" in self.sources[0]

    def kji_to_lps(self, index: np.ndarray | Sequence[float]) -> np.ndarray:
        """LPS (mm) of array indices given as (k, j, i), the order used to index ``array``."""
        kji = np.asarray(index, dtype=np.float64)
        ijk = kji[..., ::-1]
        lps: np.ndarray = ijk @ (self.direction * np.asarray(self.spacing)).T + self.origin
        return lps

    def lps_to_kji(self, points: np.ndarray | Sequence[float]) -> np.ndarray:
        """Continuous array indices (k, j, i) of LPS points; round them to pick a voxel."""
        lps = np.asarray(points, dtype=np.float64)
        ijk = (lps - self.origin) @ self.direction / np.asarray(self.spacing)
        kji: np.ndarray = ijk[..., ::-1]
        return kji

    def slice_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k`` as its source stored it."""
        return _plane_position(self.sources[k], self.frames[k])

    def shares_grid(self, other: Volume) -> bool:
        """True when ``other`` lies on this volume's voxel grid in the same frame of reference: one
        session, one prescription, so its voxels need no registration nor resampling."""
        return (self.frame_of_reference_uid is not None
                and self.frame_of_reference_uid == other.frame_of_reference_uid
                and self.array.shape == other.array.shape
                and bool(np.allclose(self.spacing, other.spacing, atol=SAME_GRID_TOLERANCE))
                and bool(np.allclose(self.origin, other.origin, atol=SAME_GRID_TOLERANCE))
                and bool(np.allclose(self.direction, other.direction, atol=SAME_GRID_TOLERANCE)))

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image with the same LPS geometry (ITK is LPS too)."""
        import SimpleITK as sitk  # noqa: F811 (lazy: most pipelines never need ITK)

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction.ravel()))
        return image


@dataclass(frozen=True)
class _Slice:
    """One image plane of the series, from a single-frame instance or one frame of many."""

    path: Path
    header: Dataset
    frame: int
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    rows: int
    columns: int
    slope: float
    intercept: float


def load_series(
    paths: Sequence[Path],
    *,
    min_slices: int = MIN_SLICES,
    spacing_tolerance: float = SLICE_SPACING_TOLERANCE,
) -> Volume:
    """Load one series (single-frame files or enhanced multi-frame instances) as a Volume.

    Headers are read and the geometry checked before any pixel data is decoded, so a malformed
    series fails fast and a large one is decoded straight into its final place.
    """
    if not paths:
        raise VolumeError("no files: a volume needs the files of one series")
    headers = [(Path(p), _read_header(Path(p))) for p in paths]
    _check_one_series(headers)
    slices = [s for path, header in headers for s in _slices_of(path, header)]
    _check_image_planes(slices)
    frame_of_reference = _check_frame_of_reference(slices)
    if len(slices) < min_slices:
        raise VolumeError(
            f"too few slices: {len(slices)}, a volume needs at least {min_slices}; "
            "series this small are usually localizers or single images"
        )
    normal = _normal(slices[0].orientation)
    slices.sort(key=lambda s: float(s.position @ normal))
    if len(slices) == 1:
        spacing_z = _nominal_thickness(slices[0])
    else:
        spacing_z = _check_slice_steps(slices, normal, spacing_tolerance)
        _check_tilt(slices, normal)

    array = _decode_in_order(slices)
    row_dir, col_dir = slices[0].orientation[:3], slices[0].orientation[3:]
    direction = np.column_stack([row_dir, col_dir, normal])
    first = slices[0]
    return Volume(
        array=array,
        # PixelSpacing is (row spacing, column spacing): the x step is the column spacing.
        spacing=(float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), spacing_z),
        origin=first.position.copy(),
        direction=direction,
        sources=tuple(s.header for s in slices),
        frames=tuple(s.frame for s in slices),
        frame_of_reference_uid=frame_of_reference,
        modality=str(first.header.get("Modality", "")),
    )


def decode_pixels(source: Path | Dataset) -> np.ndarray:
    """Stored pixel values of a file (or a dataset read with its pixel data, deferred or not) with
    a leading frame axis, for any installed decoder.

    A transfer syntax that no installed plugin can decode (12-bit lossy JPEG is the common one)
    is reported by name, because the fix is on the sending side: send it uncompressed or lossless.
    """
    dataset = pydicom.dcmread(source) if isinstance(source, Path) else source
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        pixels = pixel_array(dataset)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise VolumeError(
            f"cannot decode pixel data of {_name_of(dataset)}: transfer syntax {syntax.name} ({syntax}) "
            f"is not decodable with the installed pydicom plugins ({_first_line(exc)}); "
            "ask the sender to transmit this series uncompressed or losslessly compressed"
        ) from exc
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1))
    image_ndim = 3 if samples > 1 else 2
    return pixels if frames > 1 or pixels.ndim > image_ndim else pixels[np.newaxis]


def _name_of(dataset: Dataset) -> str:
    return Path(str(dataset.filename)).name if getattr(dataset, "filename", None) else "the dataset"


def _read_header(path: Path) -> Dataset:
    """The file parsed once: its pixel data stays on disk until it is decoded (deferred)."""
    try:
        header = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, OSError) as exc:
        raise VolumeError(f"{path.name} is not a readable DICOM file: {exc}") from exc
    missing = [k for k in ("Rows", "Columns") if k not in header]
    if missing:
        raise VolumeError(f"{path.name} has no image ({', '.join(missing)} missing)")
    if int(header.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(
            f"{path.name} is a colour image ({header.get('PhotometricInterpretation')}); "
            "volumes are grayscale CT, MR or PET"
        )
    return header


def _check_one_series(headers: Sequence[tuple[Path, Dataset]]) -> None:
    series = Counter(str(h.get("SeriesInstanceUID", "")) for _, h in headers)
    if len(series) > 1:
        raise VolumeError(
            f"files from {len(series)} series: a volume is one series; route each series "
            "separately"
        )


def _slices_of(path: Path, header: Dataset) -> list[_Slice]:
    if "PerFrameFunctionalGroupsSequence" in header:
        return [_slice(path, header, n) for n in range(1, int(header.NumberOfFrames) + 1)]
    return [_slice(path, header, 1)]


def _slice(path: Path, header: Dataset, frame: int) -> _Slice:
    position = _plane_position(header, frame)
    orientation = _frame_value(header, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _frame_value(header, frame, "PixelMeasuresSequence", "PixelSpacing")
    if orientation is None or spacing is None:
        missing = "ImageOrientationPatient" if orientation is None else "PixelSpacing"
        raise VolumeError(
            f"{path.name} has no {missing}: it is not a cross-sectional image "
            "(projection radiographs and secondary captures cannot form a volume)"
        )
    if "ModalityLUTSequence" in header:
        raise VolumeError(
            f"{path.name} maps stored values with a Modality LUT Sequence, which radnode does not "
            "apply; volumes need RescaleSlope/RescaleIntercept (CT, MR, PET)"
        )
    slope = _frame_value(header, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _frame_value(
        header, frame, "PixelValueTransformationSequence", "RescaleIntercept"
    )
    return _Slice(
        path=path,
        header=header,
        frame=frame,
        position=position,
        orientation=np.asarray(orientation, dtype=np.float64),
        pixel_spacing=np.asarray(spacing, dtype=np.float64),
        rows=int(header.Rows),
        columns=int(header.Columns),
        slope=1.0 if slope is None else float(slope),
        intercept=0.0 if intercept is None else float(intercept),
    )


def _plane_position(header: Dataset, frame: int) -> np.ndarray:
    position = _frame_value(header, frame, "PlanePositionSequence", "ImagePositionPatient")
    if position is None:
        raise VolumeError(
            f"instance {header.get('SOPInstanceUID', '?')} has no ImagePositionPatient: it is "
            "not a cross-sectional image"
        )
    return np.asarray(position, dtype=np.float64)


def _frame_value(header: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from the frame's functional groups, the shared groups, or the top level."""
    if "PerFrameFunctionalGroupsSequence" in header:
        per_frame = header.PerFrameFunctionalGroupsSequence[frame - 1]
        shared = header.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
        for group in (per_frame, shared):
            if sequence in group and keyword in group[sequence][0]:
                return group[sequence][0][keyword].value
    value = header.get(keyword)
    return None if value is None or value == "" else value


def _check_image_planes(slices: Sequence[_Slice]) -> None:
    sizes = Counter((s.rows, s.columns) for s in slices)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} in {n} slices" for (r, c), n in sizes.most_common())
        raise VolumeError(f"varying rows/columns: {listed}; a volume has one image size")
    reference = slices[0]
    for index, s in enumerate(slices[1:], start=1):
        if np.max(np.abs(s.orientation - reference.orientation)) > ORIENTATION_TOLERANCE:
            raise VolumeError(
                "mixed orientation: slice "
                f"{index} has ImageOrientationPatient {_fmt(s.orientation)} but slice 0 has "
                f"{_fmt(reference.orientation)}; the series mixes planes (a localizer or a "
                "second stack?), split it into one series per orientation"
            )
        if np.max(np.abs(s.pixel_spacing - reference.pixel_spacing)) > PIXEL_SPACING_TOLERANCE:
            raise VolumeError(
                f"varying pixel spacing: slice {index} has {_fmt(s.pixel_spacing)} mm but "
                f"slice 0 has {_fmt(reference.pixel_spacing)} mm"
            )


def _check_frame_of_reference(slices: Sequence[_Slice]) -> str | None:
    uids = Counter(str(s.header.get("FrameOfReferenceUID", "")) for s in slices)
    if len(uids) > 1:
        raise VolumeError(
            f"multiple frames of reference: {len(uids)} FrameOfReferenceUIDs in one series; "
            "positions from different frames of reference cannot be combined into one volume"
        )
    uid = next(iter(uids))
    return uid or None


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    unit: np.ndarray = normal / np.linalg.norm(normal)
    return unit


def _check_slice_steps(slices: Sequence[_Slice], normal: np.ndarray, tolerance: float) -> float:
    """Slice spacing along the normal; raises on repeated, missing or unevenly spaced slices."""
    along = np.array([float(s.position @ normal) for s in slices])
    steps = np.diff(along)
    shared = Counter(np.round(along, 2).tolist()).most_common(1)[0]
    if shared[1] > 1:
        raise VolumeError(
            f"not a volume: {shared[1]} slices share the position {shared[0]:.2f} mm along the "
            "slice normal; multiple echoes, phases or repeated acquisitions must be split into "
            "one series each"
        )
    spacing = float(np.median(steps))
    for k, step in enumerate(steps):
        if abs(step - spacing) <= tolerance * spacing:
            continue
        ratio = step / spacing
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= tolerance:
            raise VolumeError(
                f"missing slices: gap of {_mm(step)} mm between slices {k} and {k + 1} where "
                f"spacing is {_mm(spacing)} mm (about {round(ratio) - 1} slice(s) missing); "
                "resend the complete series"
            )
        raise VolumeError(
            f"uneven slice spacing: {step:.3f} mm between slices {k} and {k + 1} where spacing "
            f"is {spacing:.3f} mm (tolerance {tolerance:.0%}); a volume needs one slice step"
        )
    return float((along[-1] - along[0]) / (len(along) - 1))


def _nominal_thickness(single: _Slice) -> float:
    """A single slice has no step; its nominal thickness keeps voxel volumes meaningful."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _frame_value(single.header, single.frame, "PixelMeasuresSequence", keyword)
        if value is not None and float(value) > 0:
            return float(value)
    return 1.0


def _check_tilt(slices: Sequence[_Slice], normal: np.ndarray) -> None:
    span = slices[-1].position - slices[0].position
    cosine = float(span @ normal) / float(np.linalg.norm(span))
    angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    if angle > TILT_TOLERANCE_DEG:
        stated = slices[0].header.get("GantryDetectorTilt")
        stated_text = f", GantryDetectorTilt {float(stated):g}" if stated not in (None, "") else ""
        raise VolumeError(
            f"gantry tilt: slices advance {angle:.1f} degrees off the image normal{stated_text}; "
            "radnode refuses tilted series rather than resampling them, because results must "
            "line up with the acquired slices; ask for a reconstruction without tilt"
        )
    half_pixel = 0.5 * float(np.min(slices[0].pixel_spacing))
    for k, s in enumerate(slices):
        offset = s.position - slices[0].position
        lateral = float(np.linalg.norm(offset - (offset @ normal) * normal))
        if lateral > half_pixel:
            raise VolumeError(
                f"not a volume: slice {k} is shifted {lateral:.2f} mm within its plane "
                "relative to slice 0, so the slices do not stack into one grid"
            )


def _decode_in_order(slices: Sequence[_Slice]) -> np.ndarray:
    """Decode each file once, in parallel, and place its frames at their sorted slice index, in
    modality units. The decoders (JPEG 2000: 60 ms a slice) and numpy release the GIL."""
    array = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=np.float32)
    by_path: dict[Path, list[tuple[int, _Slice]]] = {}
    for k, s in enumerate(slices):
        by_path.setdefault(s.path, []).append((k, s))

    def place(members: list[tuple[int, _Slice]]) -> None:
        header = members[0][1].header
        stored = decode_pixels(header)
        del header.PixelData  # the header goes on as the slice's source, without its pixels
        for k, s in members:
            np.multiply(stored[s.frame - 1], s.slope, out=array[k], casting="unsafe")
            array[k] += np.float32(s.intercept)

    with ThreadPoolExecutor(min(DECODE_THREADS, len(by_path))) as pool:
        list(pool.map(place, by_path.values()))
    return array


def _mm(value: float) -> str:
    """Millimetres as a radiologist reads them: 16.0 for slices, 0.778 for thin ones."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[1:3] or lines[:1])
