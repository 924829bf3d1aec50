"""Patient data, for the few places a site asks for it (the studies page with ``[web]
show_patient_data``, a notification with ``include_patient``): read from one stored instance of
the study when asked, never kept in the index or written to a log."""

from __future__ import annotations

import pydicom
from pydicom.errors import InvalidDicomError

from node.index.store import SeriesIndex


def patient_of(index: SeriesIndex, study_uid: str, keywords: tuple[str, ...]) -> dict[str, str]:
    """{keyword: value} of a study's patient, as its first series' sample instance says; {} when
    the study or its files are gone."""
    rows = index.series_of_study(study_uid)
    try:
        header = pydicom.dcmread(rows[0].sample_path, stop_before_pixels=True, specific_tags=list(keywords))
    except (OSError, IndexError, InvalidDicomError):
        return {}
    return {k: str(header.get(k, "")) for k in keywords}
