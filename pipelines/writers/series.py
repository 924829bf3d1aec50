"""Series numbers of result objects: after their source series, one per kind, none shared.

Viewers order a study's series by Series Number (OHIF opens the first), so a result must sort
after the series it was computed from, and two results must never share a number. A result's
number is the source's number times ``PER_SOURCE`` plus its kind: source series 3 gives SEG 301,
SR 302 ... KOS 306; series 3000566 gives 300056601 ... Results of different source series or of
different kinds (of any pipeline) never collide; only a source series that is itself numbered
like a result (301 beside a series 3) could.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.dataset import Dataset

#: Result kinds per source series; a kind's number is its offset.
PER_SOURCE = 100
#: Series Number is IS: a signed 32-bit integer.
MAX_SERIES_NUMBER = 2**31 - 1
#: A source without a usable number gives its results 9101, 9102, ...: after any scanner series.
UNNUMBERED_BASE = 9100


class ResultKind(IntEnum):
    """Each kind of object radnode writes, by its place after the source series."""

    SEGMENTATION = 1
    REPORT = 2
    KEY_IMAGES = 3
    PRESENTATION_STATE = 4
    DERIVED_IMAGES = 5
    KEY_OBJECTS = 6


def result_series_number(source: Dataset, kind: ResultKind) -> int:
    """The Series Number of a ``kind`` result computed from the series of ``source``."""
    try:
        number = int(source.get("SeriesNumber"))
    except (TypeError, ValueError):
        return UNNUMBERED_BASE + kind
    if number < 0:
        return UNNUMBERED_BASE + kind
    if number * PER_SOURCE + kind <= MAX_SERIES_NUMBER:
        return number * PER_SOURCE + kind
    # Too large to scale: still after the source, unique between kinds.
    return min(number + kind, MAX_SERIES_NUMBER)
