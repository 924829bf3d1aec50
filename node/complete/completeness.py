"""What a series' own headers and arrival pattern say about whether more instances are coming.

A quiet time alone would complete half a series when a scanner pauses between two batches, and the
node would later analyse the whole again, leaving two contradictory answers. So announced counts
(ImagesInAcquisition, temporal positions, cardiac phases) and gaps in the slice positions hold a
series open, and the settle time adapts to how fast this series arrives (docs/complete.md).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

#: The settle time is at least this many times the median gap between the series' instances.
ARRIVAL_GAP_FACTOR = 5.0
#: A step this close (relative) to a whole multiple of the smallest step counts as missing slices.
GAP_TOLERANCE = 0.1
_TAGS = ["AcquisitionNumber", "ImagePositionPatient", "ImageOrientationPatient", "ImagesInAcquisition",
         "NumberOfTemporalPositions", "CardiacNumberOfImages"]


@dataclass(frozen=True)
class SliceHeader:
    """The few attributes of one instance that tell how many more to expect."""

    acquisition: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    images_in_acquisition: int | None
    temporal_positions: int | None
    cardiac_images: int | None


@dataclass(frozen=True)
class Expectation:
    """Why the node expects more instances of a series, for logs and ``radnode studies``."""

    reason: str
    missing: int


def read_slice_header(path: Path) -> SliceHeader:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_TAGS)
    return SliceHeader(
        acquisition=str(ds.get("AcquisitionNumber", "") or ""),
        position=_position(ds.get("ImagePositionPatient")),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        images_in_acquisition=_positive(ds.get("ImagesInAcquisition")),
        temporal_positions=_positive(ds.get("NumberOfTemporalPositions")),
        cardiac_images=_positive(ds.get("CardiacNumberOfImages")),
    )


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[attr-defined]  # not iterable: TypeError
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _position(value: object) -> tuple[float, float, float] | None:
    numbers = _floats(value, 3)
    return None if numbers is None else (numbers[0], numbers[1], numbers[2])


def _positive(value: object) -> int | None:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def expected_more(headers: Sequence[SliceHeader]) -> Expectation | None:
    """The first hint, in order of reliability, that instances of this series are still missing."""
    return _short_acquisition(headers) or _short_position(headers) or _slice_gap(headers)


def _short_acquisition(headers: Sequence[SliceHeader]) -> Expectation | None:
    announced: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for header in headers:
        counts[header.acquisition] += 1
        if header.images_in_acquisition is not None:
            announced[header.acquisition] = max(announced.get(header.acquisition, 0),
                                                header.images_in_acquisition)
    for acquisition, total in announced.items():
        if counts[acquisition] < total:
            return Expectation(f"ImagesInAcquisition is {total}, {counts[acquisition]} arrived",
                               total - counts[acquisition])
    return None


def _short_position(headers: Sequence[SliceHeader]) -> Expectation | None:
    """Dynamic and cine series: every slice position gets one image per time point or phase."""
    per_position: Counter[tuple[float, ...]] = Counter()
    announced: dict[tuple[float, ...], tuple[str, int]] = {}
    for header in headers:
        if header.position is None:
            continue
        key = tuple(round(v, 2) for v in header.position)
        per_position[key] += 1
        for keyword, value in (("NumberOfTemporalPositions", header.temporal_positions),
                               ("CardiacNumberOfImages", header.cardiac_images)):
            if value is not None and value > 1:
                announced[key] = (keyword, value)
    missing = sum(max(0, value - per_position[key]) for key, (_, value) in announced.items())
    if missing:
        keyword, value = next(iter(announced.values()))
        return Expectation(f"{keyword} is {value}, {missing} images of the slice positions missing", missing)
    return None


def _slice_gap(headers: Sequence[SliceHeader]) -> Expectation | None:
    """Slices missing inside the stack: steps that are 2x, 3x, ... the smallest step."""
    offsets = slice_offsets(headers)
    if len(offsets) < 3:
        return None
    steps = np.diff(offsets)
    smallest = float(steps.min())
    multiples = steps / smallest
    whole = np.rint(multiples)
    gaps = (whole >= 2) & (np.abs(multiples - whole) <= GAP_TOLERANCE * whole)
    if not gaps.any():
        return None
    missing = int((whole[gaps] - 1).sum())
    return Expectation(f"{missing} slices missing between slice positions ({smallest:.3g} mm apart)", missing)


def slice_offsets(headers: Sequence[SliceHeader]) -> np.ndarray:
    """Distinct positions along the slice normal of the series' main orientation, sorted (mm).

    Localizers and other orientations in the same series are left out, so that they do not
    look like gaps.
    """
    oriented = [(h.position, _rounded(h.orientation)) for h in headers
                if h.position is not None and h.orientation is not None]
    if not oriented:
        return np.zeros(0)
    main = Counter(orientation for _, orientation in oriented).most_common(1)[0][0]
    normal = np.cross(np.array(main[:3]), np.array(main[3:]))
    offsets = {round(float(np.dot(normal, position)), 2) for position, orientation in oriented
               if orientation == main}
    return np.array(sorted(offsets))


def _rounded(orientation: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(v, 3) for v in orientation)


def adapted_seconds(arrivals: Sequence[float], floor: float) -> float:
    """``floor``, or several times the median gap between arrivals when this series comes slowly."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    if not gaps:
        return floor
    return max(floor, ARRIVAL_GAP_FACTOR * statistics.median(gaps))


class HeaderCache:
    """Slice headers by file, so that each instance is read once however often a series is checked."""

    def __init__(self) -> None:
        self._by_series: dict[str, dict[Path, SliceHeader]] = defaultdict(dict)

    def headers(self, series_uid: str, paths: Sequence[Path]) -> list[SliceHeader]:
        known = self._by_series[series_uid]
        out = []
        for path in paths:
            if path not in known:
                try:
                    known[path] = read_slice_header(path)
                except (OSError, pydicom.errors.InvalidDicomError):
                    continue  # the receiver checked it; a file gone since says nothing about the rest
            out.append(known[path])
        return out

    def forget(self, series_uid: str) -> None:
        self._by_series.pop(series_uid, None)
