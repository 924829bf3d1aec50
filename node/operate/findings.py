"""What a TID 1500 report says, one line per finding, for a person at a terminal (``radnode run``),
and one record per finding for the validation export (``node.operate.validation_export``).

The lines are read from the SR the pipeline wrote, not from its job summary, so they show what the
PACS will show a radiologist, worded the same way for every pipeline, a site's own included.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset

#: (code value, coding scheme) of the TID 1500 concepts a finding's line is made of.
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")
FINDING = ("121071", "DCM")
FINDING_SITE = ("363698007", "SCT")
FINDING_CATEGORY = ("276214006", "SCT")
LATERALITY = ("272741003", "SCT")
#: How a group's Tracking Identifier names the viewer tool that draws it, before the finding's own
#: identifier ("Cornerstone3DTools@^0.1.0:Length:nodule-1", pipelines/writers/sr.py).
VIEWER_TOOL_PREFIX = "Cornerstone3DTools@"


@dataclass(frozen=True)
class Measurement:
    label: str
    #: None: the report gives the measurement without a value (TID 1501 allows it)
    value: float | None
    #: UCUM code; "" for a ratio or score
    unit: str

    def text(self) -> str:
        """ "Volume 4.48 mL"; a measurement without a value says so."""
        if self.value is None:
            return f"{self.label} (no value)"
        return f"{self.label} {self.value:g}{f' {self.unit}' if self.unit else ''}"


@dataclass(frozen=True)
class FindingRecord:
    """One measurement group of a report: what it is, where, and its measurements."""

    name: str
    finding: str
    #: "Upper lobe of left lung (left)": the finding site with its laterality
    site: str
    measurements: tuple[Measurement, ...]
    #: every value of the group as people read it, coded ones included, in the report's order
    values: tuple[str, ...]

    def line(self) -> str:
        site = f" in {self.site}" if self.site else ""
        return ", ".join([f"{self.name}: {self.finding}{site}", *self.values])


def finding_lines(report: Dataset) -> list[str]:
    """One line per measurement group: "tracking id: finding in site, measurement value unit, ..."."""
    return [record.line() for record in finding_records(report)]


def finding_records(report: Dataset) -> list[FindingRecord]:
    """The report's findings, one per measurement group (the validation export's rows)."""
    return [_record(group) for group in _measurement_groups(report)]


def _measurement_groups(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        if _concept(child) == MEASUREMENT_GROUP:
            yield child
        else:
            yield from _measurement_groups(child)


def _concept(item: Dataset) -> tuple[str, str] | None:
    if "ConceptNameCodeSequence" not in item:
        return None
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _record(group: Dataset) -> FindingRecord:
    name, finding, site = "finding", "", ""
    measurements: list[Measurement] = []
    values: list[str] = []
    for item in group.get("ContentSequence", []):
        concept = _concept(item)
        if concept == TRACKING_IDENTIFIER:
            name = _identifier(str(item.TextValue))
        elif concept == FINDING:
            finding = _meaning(item)
        elif concept == FINDING_SITE:
            site = f"{_meaning(item)}{_laterality(item)}"
        elif item.ValueType == "NUM" and item.RelationshipType == "CONTAINS":
            measurements.append(_measurement(item))
            values.append(measurements[-1].text())
            # a group without a segment carries its site on its measurements
            site = site or next((f"{_meaning(m)}{_laterality(m)}" for m in item.get("ContentSequence", [])
                                 if _concept(m) == FINDING_SITE), "")
        elif item.ValueType == "CODE" and item.RelationshipType == "CONTAINS" and concept != FINDING_CATEGORY:
            values.append(f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {_meaning(item)}")
    return FindingRecord(name, finding, site, tuple(measurements), tuple(values))


def _identifier(text: str) -> str:
    """The finding's own identifier: "nodule-1" of "Cornerstone3DTools@^0.1.0:Length:nodule-1"."""
    return text.rsplit(":", 1)[-1] if text.startswith(VIEWER_TOOL_PREFIX) else text


def _laterality(site: Dataset) -> str:
    """" (right)" when the finding site has a laterality modifier, else nothing."""
    for modifier in site.get("ContentSequence", []):
        if _concept(modifier) == LATERALITY:
            return f" ({_meaning(modifier).lower()})"
    return ""


def _meaning(item: Dataset) -> str:
    return str(item.ConceptCodeSequence[0].CodeMeaning)


def _measurement(item: Dataset) -> Measurement:
    label = str(item.ConceptNameCodeSequence[0].CodeMeaning)
    if not item.get("MeasuredValueSequence"):
        return Measurement(label, None, "")
    measured = item.MeasuredValueSequence[0]
    unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
    return Measurement(label, float(measured.NumericValue), "" if unit in ("1", "{ratio}") else unit)
