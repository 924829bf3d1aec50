"""A finding's history: the findings of radnode's own earlier report (read from its SR) and
which new finding continues which earlier one.

The node finds and retrieves the earlier SR (``node.retrieve.priors``) and hands its findings to
the job (``JobInput.priors``); a pipeline matches its findings to them by position (``match``) and
the SR writer says the comparison (``writers.prior``). The reader reads what
``writers.sr.make_measurement_report`` writes.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

#: a finding continues an earlier one when their centres lie this close (mm) or within the
#: earlier finding's radius, whichever is larger: scanner table coordinates, nothing registered
MATCH_DISTANCE_MM = 10.0


@dataclass(frozen=True)
class PriorFinding:
    """One measurement group of an earlier radnode SR."""

    tracking_uid: str
    tracking_id: str
    #: the SR's "Center" point in the patient (SCOORD3D)
    center_lps: tuple[float, float, float]
    diameter_mm: float | None = None
    volume_mm3: float | None = None


@dataclass(frozen=True)
class PriorReport:
    """The findings of the latest earlier report the PACS held for the patient."""

    study_date: datetime.date
    findings: tuple[PriorFinding, ...]


@dataclass(frozen=True)
class Priors:
    """What a job gets to compare with: the earlier report, or why there is none."""

    report: PriorReport | None = None
    #: why no prior was compared (no earlier report, the PACS did not answer...)
    reason: str = ""


@dataclass(frozen=True)
class PriorComparison:
    """What a finding's SR group says of its history: the earlier finding and the change, or
    (``prior`` None) why no prior was compared."""

    prior: PriorFinding | None = None
    prior_date: datetime.date | None = None
    interval_days: int | None = None
    diameter_change_pct: float | None = None
    volume_change_pct: float | None = None
    reason: str = ""


def match(centers: Sequence[tuple[float, float, float]], diameters: Sequence[float | None],
          volumes: Sequence[float | None], priors: Priors, study_date: datetime.date | None
          ) -> list[PriorComparison]:
    """For each new finding (its centre, diameter, volume), the earlier finding it continues:
    the nearest one within ``MATCH_DISTANCE_MM`` or the earlier finding's radius, each earlier
    finding taken once, best-placed pairs first."""
    report = priors.report
    if report is None:
        return [PriorComparison(reason=f"No prior compared: {priors.reason}")] * len(centers)
    pairs = []
    for n, center in enumerate(centers):
        for p, prior in enumerate(report.findings):
            distance = float(np.linalg.norm(np.subtract(center, prior.center_lps)))
            if distance <= max(MATCH_DISTANCE_MM, (prior.diameter_mm or 0.0) / 2):
                pairs.append((distance, n, p))
    taken: dict[int, int] = {}
    for _, n, p in sorted(pairs):
        if n not in taken and p not in taken.values():
            taken[n] = p
    interval = (study_date - report.study_date).days if study_date is not None else None
    out = []
    for n in range(len(centers)):
        if n not in taken:
            out.append(PriorComparison(prior_date=report.study_date, reason=(
                f"New since the report of {report.study_date.isoformat()}: none of its findings lies within "
                f"{MATCH_DISTANCE_MM:g} mm (or its radius) of this one, in scanner coordinates (not registered)")))
            continue
        prior = report.findings[taken[n]]
        out.append(PriorComparison(prior, report.study_date, interval, _change(diameters[n], prior.diameter_mm),
                                   _change(volumes[n], prior.volume_mm3)))
    return out


def tracking_ids(comparisons: Sequence[PriorComparison | None], prefix: str) -> list[str]:
    """Each finding's Tracking Identifier: the earlier finding's when it continues one, else
    ``<prefix>-<n>`` with a number no continued finding holds, so that no two findings share one."""
    kept = {c.prior.tracking_id for c in comparisons if c is not None and c.prior is not None}
    numbers = (f"{prefix}-{n}" for n in range(1, len(comparisons) + len(kept) + 1))
    free = (name for name in numbers if name not in kept)
    return [c.prior.tracking_id if c is not None and c.prior is not None else next(free) for c in comparisons]


def _change(now: float | None, before: float | None) -> float | None:
    return None if now is None or not before else round(100.0 * (now - before) / before, 1)


def read_report(sr: Dataset) -> PriorReport:
    """The findings of a radnode measurement report (groups without a Center point or tracking
    UID, such as "none detected", are not findings)."""
    groups = [item for item in _children(sr.ContentSequence, codes.DCM.ImagingMeasurements)
              if _code(item) == codes.DCM.MeasurementGroup]
    found = [_group_finding(group.get("ContentSequence", [])) for group in groups]
    return PriorReport(_date(str(sr.get("StudyDate", "") or sr.get("ContentDate", ""))),
                       tuple(f for f in found if f is not None))


#: a Tracking Identifier that names the viewer's drawing tool ("Cornerstone3DTools@^0.1.0:Length:nodule-1")
_VIEWER_TOOL_PREFIX = "Cornerstone3DTools@"


def _group_finding(items: Sequence[Dataset]) -> PriorFinding | None:
    uid = identifier = ""
    center: tuple[float, float, float] | None = None
    diameter = volume = None
    for item in items:
        name = _code(item)
        if name == codes.DCM.TrackingUniqueIdentifier:
            uid = str(item.UID)
        elif name == codes.DCM.TrackingIdentifier:
            identifier = _own_identifier(str(item.TextValue))
        elif name == codes.DCM.Center and item.ValueType == "SCOORD3D":
            center = _point(item)
        if item.ValueType == "NUM":  # the centre may sit under a measurement (TID 300 "inferred from")
            center = center or next((_point(c) for c in item.get("ContentSequence", [])
                                     if _code(c) == codes.DCM.Center and c.ValueType == "SCOORD3D"), None)
        if name == codes.SCT.LongAxis:
            diameter = _number(item)
        elif name == codes.SCT.Volume and _unit(item) == codes.UCUM.CubicMillimeter:
            volume = _number(item)
    if not uid or center is None:
        return None
    return PriorFinding(uid, identifier, center, diameter, volume)


def _point(item: Dataset) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in item.GraphicData[:3])
    return (x, y, z)


def _own_identifier(text: str) -> str:
    """The finding's own identifier ("nodule-1"), without the viewer tool's name before it."""
    return text.rsplit(":", 1)[-1] if text.startswith(_VIEWER_TOOL_PREFIX) else text


def _children(items: Sequence[Dataset], name: Code) -> list[Dataset]:
    """The content of the items named ``name``."""
    return [child for item in items if _code(item) == name for child in item.get("ContentSequence", [])]


def _code(item: Dataset) -> Code | None:
    if "ConceptNameCodeSequence" not in item:
        return None
    concept = item.ConceptNameCodeSequence[0]
    return Code(str(concept.CodeValue), str(concept.CodingSchemeDesignator), str(concept.CodeMeaning))


def _number(item: Dataset) -> float | None:
    measured = item.get("MeasuredValueSequence")
    return float(measured[0].NumericValue) if measured else None


def _unit(item: Dataset) -> Code | None:
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return None
    unit = measured[0].MeasurementUnitsCodeSequence[0]
    return Code(str(unit.CodeValue), str(unit.CodingSchemeDesignator), str(unit.CodeMeaning))


def _date(value: str) -> datetime.date:
    return datetime.datetime.strptime(value[:8], "%Y%m%d").date()


def study_date(header: Dataset) -> datetime.date | None:
    """The series' StudyDate, None when it has none or it is not a date."""
    try:
        return _date(str(header.get("StudyDate", "") or ""))
    except ValueError:
        return None
