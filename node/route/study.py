"""Study-level routing: which roles a study route waits for, and whether a study with the series
it has should wait, run, or end naming the inputs it is missing (pure functions of the route, the
assigned series and the clock), and ``StudyRouter``, which applies them to the open studies of
the index on each of the assembler's ticks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset

from node import logs
from node.config import Config, Route
from node.index.states import JobState, SeriesState
from node.index.store import Index, SeriesRow
from node.isolation import isolated
from node.route.matcher import failed_conditions
from node.route.router import Router, assign_inputs, job_spec, note_ignored


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


#: Studies quiet for longer than this are no longer examined by study-level routes.
STUDY_LOOKBACK_SECONDS = 7 * 24 * 3600


class StudyRouter:
    """Study-level routes applied to the index on each of the assembler's ticks: a job (or a
    failed job naming the missing inputs) once ``study_decision`` says so, for each open study.

    The assembler owns the header cache; this reads through it (``header``) and tells it when a
    settled study's headers are no longer needed (``forget_headers``).
    """

    def __init__(self, config: Config, index: Index, router: Router,
                 header: Callable[[SeriesRow], Dataset], forget_headers: Callable[[Iterable[str]], None]) -> None:
        self.config = config
        self.index = index
        self.router = router
        self._header = header
        self._forget_headers = forget_headers
        #: studies the study routes look at on each tick: those with a series seen receiving or
        #: complete and not yet settled; None until the first tick reads the lookback window
        self._open_studies: set[str] | None = None

    def tick(self, now: float, touched: set[str]) -> None:
        """Look only at open studies, so an idle tick costs the same whatever the index holds.

        A study opens when one of its series is seen receiving or complete and closes once
        settled (``_examine``); the first tick opens every study of the lookback window, so a
        restart resumes the waiting ones.
        """
        routes = self.router.study_routes()
        if not routes:
            return
        if self._open_studies is None:
            since = now - STUDY_LOOKBACK_SECONDS
            self._open_studies = {uid for uid, _ in self.index.studies_with_activity_since(since)}
        self._open_studies |= touched
        for study_uid in sorted(self._open_studies):
            if self._examine(study_uid, routes, now):
                self._open_studies.discard(study_uid)

    def _examine(self, study_uid: str, routes: Sequence[Route], now: float) -> bool:
        """Route one study; True when it is settled: no series of it receiving and every route
        answered (a job or a note for this generation, a recorded problem, or no series it
        matches), so that nothing but a new instance can change it."""
        rows = self.index.series_of_study(study_uid)
        if not rows:
            return True  # removed by retention
        last_received = max(r.last_received for r in rows)
        generation = sum(r.generation for r in rows)
        answered: list[bool] = []
        if self.index.has_problem("study", study_uid, generation):
            answered = [True] * len(routes)
        else:
            for route in routes:
                isolated("router", study_uid,
                         lambda: answered.append(self._route(route, study_uid, rows, last_received, now)),
                         lambda reason: self.index.record_problem("study", study_uid, generation,
                                                                  f"route {route.name}: {reason}"))
        settled = len(answered) == len(routes) and all(answered)
        if settled:
            self._forget_headers(r.series_uid for r in rows)
        return settled

    def status(self, route: Route, study_uid: str, rows: Sequence[SeriesRow], last_received: float,
               now: float) -> StudyStatus | None:
        """Where ``route`` stands with a study; None when no arrived series of it matches."""
        arrived = [(r, self._header(r)) for r in rows if r.state != SeriesState.RECEIVING and r.instance_count]
        if not any(not failed_conditions(route.match, header) for _, header in arrived):
            return None
        assigned = assign_inputs(route, arrived)
        pending = tuple(r.series_uid for r in rows if r.state == SeriesState.RECEIVING)
        timeout = route.study_timeout_seconds or self.config.completion.study_timeout_seconds
        forced_at = self.index.forced_at(study_uid)
        forced = forced_at is not None and forced_at >= last_received
        decision = study_decision(route, assigned, bool(pending), now - last_received, timeout, forced)
        return StudyStatus(route, sum(r.generation for r in rows), assigned, pending, decision,
                           last_received + timeout, forced)

    def _route(self, route: Route, study_uid: str, rows: Sequence[SeriesRow], last_received: float,
               now: float) -> bool:
        """Start the route's job for the study when it is time; True once the route has answered
        this generation of the study (see ``_examine``)."""
        generation = sum(r.generation for r in rows)
        if self.index.has_job(route.name, study_uid, generation):
            return True
        receiving = any(r.state == SeriesState.RECEIVING for r in rows)
        if generation and route.on_late_instances == "ignore" and self.index.has_job(route.name, study_uid):
            if not receiving:
                note_ignored(self.index, route, study_uid, study_uid, generation)
            return not receiving
        status = self.status(route, study_uid, rows, last_received, now)
        if status is None:
            return not receiving
        if status.decision.action == "wait":
            return False
        if status.decision.action == "run":
            spec = job_spec(route, subject=study_uid, study_uid=study_uid, generation=generation,
                            inputs=status.assigned)
        else:
            timeout = status.deadline - last_received
            why = "completion forced" if status.forced else f"study quiet for {timeout:g} s"
            reason = f"missing input: {', '.join(status.decision.missing)} ({why})"
            spec = job_spec(route, subject=study_uid, study_uid=study_uid, generation=generation,
                            inputs=status.assigned, state=JobState.FAILED, outcome=reason)
        if self.index.add_job(spec):
            logs.info("study.routed", study=study_uid, route=route.name, roles=sorted(status.assigned),
                      outcome=spec.outcome or spec.state, forced=status.forced)
        return True
