"""The CT series a CT pipeline will look at, or the reason it will not.

Routes match on header attributes that sites fill inconsistently, so a CT pipeline checks its
input again after loading: a scout, another modality, or radnode's own output routed back would
otherwise produce results nobody asked for. Each refusal is a ``NotApplicable`` with the reason,
recorded on the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipelines.base import SERIES_ROLE, NotApplicable
from pipelines.volume import Volume, VolumeError, load_series
from pipelines.writers.identity import MANUFACTURER


def scanner_ct_volume(paths: Sequence[Path], pipeline: str) -> Volume:
    """The series as a CT volume in HU, made by a scanner (not by radnode), not a localizer."""
    if not paths:
        raise NotApplicable(f"no files in the {SERIES_ROLE!r} input")
    try:
        volume = load_series(list(paths))
    except VolumeError as exc:
        raise NotApplicable(f"not a CT volume {pipeline} can analyse: {exc}") from exc
    first = volume.sources[0]
    if volume.modality != "CT":
        raise NotApplicable(f"modality {volume.modality or 'missing'}: {pipeline} takes CT only")
    if "LOCALIZER" in [str(v).upper() for v in first.get("ImageType", [])]:
        raise NotApplicable("a CT localizer (scout), not a cross-sectional series")
    if str(first.get("Manufacturer", "")) == MANUFACTURER:
        raise NotApplicable(f"the series was made by radnode, not by a scanner; {pipeline} does not "
                            "analyse its own kind's outputs")
    return volume
