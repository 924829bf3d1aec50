"""Conditions on DICOM attributes, as written in config.toml's ``[routes.match]`` tables.

A condition is ``KEYWORD = spec``: a value (any single value of a multi-valued attribute
matches), a list, ``{regex}``, ``{gt/ge/lt/le}``, ``{one_of}`` or ``{present}`` (the README's
route section shows each). Each check says why it failed, because ``radnode route-test`` shows
that to the administrator.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

from node.logs import PHI_FIELDS, REDACTED

_COMPARE: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
}


@dataclass(frozen=True)
class Condition:
    """One parsed ``KEYWORD = spec``; ``check`` returns None when it holds, else the reason."""

    keyword: str
    kind: str
    argument: Any

    def check(self, dataset: Dataset) -> str | None:
        values = attribute_values(dataset, self.keyword)
        if self.kind == "present":
            present = values is not None
            if present == self.argument:
                return None
            return f"{self.keyword} is {'present' if present else 'absent'}"
        if values is None:
            return f"{self.keyword} is absent"
        shown = "\\".join(values)
        # a reason reaches the route tester's page and the logs: a patient's value is not said
        said = REDACTED if self.keyword in PHI_FIELDS else shown
        if self.kind == "equals":
            wanted = str(self.argument)
            return None if wanted in (shown, *values) else f"{self.keyword} = {said!r}, not {wanted!r}"
        if self.kind == "one_of":
            wanted_set = {str(a) for a in self.argument}
            if wanted_set & {shown, *values}:
                return None
            return f"{self.keyword} = {said!r}, not one of {sorted(wanted_set)}"
        if self.kind == "regex":
            return None if self.argument.search(shown) else f"{self.keyword} = {said!r} does not match /{self.argument.pattern}/"
        if self.kind == "compare":
            return _compare(self.keyword, values, self.argument)
        raise AssertionError(self.kind)


def _compare(keyword: str, values: list[str], bounds: Mapping[str, float]) -> str | None:
    try:
        number = float(values[0])
    except (ValueError, IndexError):
        return f"{keyword} = {values!r} is not a number"
    for op_name, bound in bounds.items():
        op, symbol = _COMPARE[op_name]
        if not op(number, bound):
            return f"{keyword} = {number:g}, not {symbol} {bound:g}"
    return None


def attribute_values(dataset: Dataset, keyword: str) -> list[str] | None:
    """The attribute as a list of strings (one per value), or None if absent or empty."""
    element = dataset.get(keyword)
    if element is None or element == "" or (isinstance(element, (list, MultiValue)) and not element):
        return None
    if isinstance(element, (list, MultiValue)):
        return [str(v).strip() for v in element]
    return [str(element).strip()]


def parse_condition(keyword: str, spec: Any) -> Condition:
    """Turn one config entry into a Condition; raises ValueError with a message for the admin."""
    if tag_for_keyword(keyword) is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword (for example Modality, BodyPartExamined)")
    if isinstance(spec, bool):
        raise ValueError(f"{keyword}: use {{present = true}} to test presence")
    if isinstance(spec, (str, int, float)):
        return Condition(keyword, "equals", spec)
    if isinstance(spec, list):
        return Condition(keyword, "one_of", tuple(spec))
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{keyword}: a condition is a value, a list or a table like {{regex = \"...\"}}")
    keys = set(spec)
    if keys == {"regex"}:
        try:
            return Condition(keyword, "regex", re.compile(spec["regex"]))
        except (re.error, TypeError) as error:
            raise ValueError(f"{keyword}: invalid regular expression: {error}") from None
    if keys == {"one_of"}:
        if not isinstance(spec["one_of"], list):
            raise ValueError(f"{keyword}: one_of takes a list")
        return Condition(keyword, "one_of", tuple(spec["one_of"]))
    if keys == {"present"}:
        if not isinstance(spec["present"], bool):
            raise ValueError(f"{keyword}: present takes true or false")
        return Condition(keyword, "present", spec["present"])
    if keys <= set(_COMPARE):
        bad = [k for k, v in spec.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"{keyword}: {bad[0]} takes a number")
        if dictionary_VR(keyword) not in ("DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
            raise ValueError(f"{keyword}: numeric comparison on a non-numeric attribute")
        return Condition(keyword, "compare", dict(spec))
    raise ValueError(
        f"{keyword}: unknown condition {sorted(keys)}; use regex, one_of, present, gt, ge, lt, le"
    )


def failed_conditions(conditions: Mapping[str, Condition], dataset: Dataset) -> list[str]:
    """Reasons of every condition that does not hold; empty means the dataset matches."""
    return [reason for c in conditions.values() if (reason := c.check(dataset)) is not None]
