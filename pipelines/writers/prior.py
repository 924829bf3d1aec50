"""A finding's history in its SR measurement group: the earlier finding's sizes, the change in
percent and the interval, as numbers and in words (``pipelines.priors`` finds them)."""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.priors import PriorComparison

#: radnode's own concepts for the comparison (no DICOM code says "change since prior")
_SCHEME = "99RADNODE"
PRIOR_LONG_AXIS = Code("prior-long-axis", _SCHEME, "Long axis at prior study")
PRIOR_VOLUME = Code("prior-volume", _SCHEME, "Volume at prior study")
LONG_AXIS_CHANGE = Code("long-axis-change", _SCHEME, "Long axis change since prior study")
VOLUME_CHANGE = Code("volume-change", _SCHEME, "Volume change since prior study")
INTERVAL = Code("interval", _SCHEME, "Interval since prior study")
PERCENT = Code("%", "UCUM", "percent")
DAYS = Code("d", "UCUM", "day")


def prior_items(comparison: PriorComparison) -> list[hd.sr.ContentItem]:
    """The comparison as content items of the finding's group: the earlier sizes, the changes in
    percent, the interval in days, and a sentence a reader of the plain text needs."""
    prior = comparison.prior
    if prior is None:
        return [_comment(comparison.reason)]
    values = [(PRIOR_LONG_AXIS, prior.diameter_mm, codes.UCUM.Millimeter),
              (PRIOR_VOLUME, prior.volume_mm3, codes.UCUM.CubicMillimeter),
              (LONG_AXIS_CHANGE, comparison.diameter_change_pct, PERCENT),
              (VOLUME_CHANGE, comparison.volume_change_pct, PERCENT),
              (INTERVAL, comparison.interval_days, DAYS)]
    items: list[hd.sr.ContentItem] = [
        hd.sr.NumContentItem(name=name, value=float(value), unit=unit,
                             relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for name, value, unit in values if value is not None
    ]
    return [*items, _comment(_sentence(comparison))]


def _sentence(comparison: PriorComparison) -> str:
    prior = comparison.prior
    assert prior is not None and comparison.prior_date is not None
    sizes = "; ".join(part for part in (
        _said("long axis", prior.diameter_mm, "mm", comparison.diameter_change_pct),
        _said("volume", prior.volume_mm3, "mm3", comparison.volume_change_pct)) if part)
    interval = f", {comparison.interval_days} days earlier" if comparison.interval_days is not None else ""
    return (f"Prior: {prior.tracking_id} of the report of {comparison.prior_date.isoformat()}{interval}"
            f"{': ' + sizes if sizes else ''}")


def _said(what: str, before: float | None, unit: str, change: float | None) -> str:
    if before is None:
        return ""
    return f"{what} then {before:g} {unit}" + (f", now {change:+.1f} %" if change is not None else "")


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.DCM.Comment, value=text[:1024],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


