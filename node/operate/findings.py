"""What a TID 1500 report says, one line per finding, for a person at a terminal (``radnode run``).

The lines are read from the SR the pipeline wrote, not from its job summary, so they show what the
PACS will show a radiologist, worded the same way for every pipeline, a site's own included.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def finding_lines(report: Dataset) -> list[str]:
    """One line per measurement group: "tracking id: finding in site, measurement value unit, ..."."""
    return [_line(group) for group in _measurement_groups(report)]


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


def _line(group: Dataset) -> str:
    name, finding, site, values = "finding", "", "", []
    for item in group.get("ContentSequence", []):
        concept = _concept(item)
        if concept == TRACKING_IDENTIFIER:
            name = _identifier(str(item.TextValue))
        elif concept == FINDING:
            finding = _meaning(item)
        elif concept == FINDING_SITE:
            site = f" in {_meaning(item)}{_laterality(item)}"
        elif item.ValueType == "NUM" and item.RelationshipType == "CONTAINS":
            values.append(_measurement(item))
            # a group without a segment carries its site on its measurements
            site = site or next((f" in {_meaning(m)}{_laterality(m)}" for m in item.get("ContentSequence", [])
                                 if _concept(m) == FINDING_SITE), "")
        elif item.ValueType == "CODE" and item.RelationshipType == "CONTAINS" and concept != FINDING_CATEGORY:
            values.append(f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {_meaning(item)}")
    return ", ".join([f"{name}: {finding}{site}", *values])


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


def _measurement(item: Dataset) -> str:
    """ "Volume 4.48 mL"; a measurement without a value (TID 1501 allows it) says so."""
    label = str(item.ConceptNameCodeSequence[0].CodeMeaning)
    if not item.get("MeasuredValueSequence"):
        return f"{label} (no value)"
    measured = item.MeasuredValueSequence[0]
    unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
    unit = "" if unit in ("1", "{ratio}") else f" {unit}"
    return f"{label} {float(measured.NumericValue):g}{unit}"
