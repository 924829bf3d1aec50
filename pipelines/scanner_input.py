"""The series a pipeline will look at, or the reason it will not.

Routes match on header attributes that sites fill inconsistently, so a pipeline checks its input
again after loading: a scout, another modality, or radnode's own output routed back would
otherwise produce results nobody asked for. Each refusal is a ``NotApplicable`` with the reason,
recorded on the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipelines.base import SERIES_ROLE, NotApplicable
from pipelines.volume import Volume, VolumeError, load_series
from pipelines.writers.identity import MANUFACTURER


def scanner_volume(paths: Sequence[Path], modality: str, pipeline: str, what: str = "the series") -> Volume:
    """The series as a volume of ``modality`` that a scanner made (not radnode).

    ``what`` names the series in the reasons, e.g. "the FLAIR series" for one input of a study.
    """
    try:
        volume = load_series(list(paths))
    except VolumeError as exc:
        raise NotApplicable(f"{what} is not a volume {pipeline} can analyse: {exc}") from exc
    if volume.modality != modality:
        raise NotApplicable(f"{what} has modality {volume.modality or 'missing'}: {pipeline} takes {modality} only")
    if str(volume.sources[0].get("Manufacturer", "")) == MANUFACTURER:
        raise NotApplicable(f"{what} was made by radnode, not by a scanner; {pipeline} does not analyse "
                            "its own kind's outputs")
    return volume


def scanner_ct_volume(paths: Sequence[Path], pipeline: str) -> Volume:
    """The series as a CT volume in HU, made by a scanner (not by radnode), not a localizer."""
    if not paths:
        raise NotApplicable(f"no files in the {SERIES_ROLE!r} input")
    volume = scanner_volume(paths, "CT", pipeline)
    if "LOCALIZER" in [str(v).upper() for v in volume.sources[0].get("ImageType", [])]:
        raise NotApplicable("a CT localizer (scout), not a cross-sectional series")
    return volume
