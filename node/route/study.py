"""Study-level routing decisions: which roles a study route waits for, and whether a study with
the series it has should wait, run, or end naming the inputs it is missing. Pure functions of
the route, the assigned series and the clock; ``node.complete.assembler`` applies them to the
index on each tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from node.config import Route


@dataclass(frozen=True)
class StudyDecision:
    action: Literal["wait", "run", "missing"]
    missing: tuple[str, ...] = ()


def wanted_roles(route: Route) -> list[str]:
    """The roles a study route waits for: all of them, or the required ones and its
    ``sufficient_roles``."""
    if route.sufficient_roles is None:
        return list(route.inputs)
    return [role for role, sel in route.inputs.items() if sel.required or role in route.sufficient_roles]


def enough_inputs(route: Route, assigned: dict[str, str]) -> bool:
    return set(wanted_roles(route)) <= set(assigned)


def study_decision(
    route: Route, assigned: dict[str, str], pending: bool, quiet_for: float, timeout: float,
    forced: bool = False,
) -> StudyDecision:
    """Run when enough roles are filled and nothing is arriving; after the timeout (or when an
    administrator forced it), run with the required roles or give up naming what is missing."""
    if enough_inputs(route, assigned) and not pending:
        return StudyDecision("run")
    if quiet_for < timeout and not forced:
        return StudyDecision("wait")
    missing = tuple(role for role, sel in route.inputs.items() if sel.required and role not in assigned)
    return StudyDecision("missing", missing) if missing else StudyDecision("run")


@dataclass(frozen=True)
class StudyStatus:
    """Where one study-level route stands with one study."""

    route: Route
    generation: int
    assigned: dict[str, str]
    pending: tuple[str, ...]
    decision: StudyDecision
    deadline: float
    forced: bool
