"""Deciding when a series or a study has arrived, and handing it to the router.

DICOM never says "series finished", so completion is a decision. radnode uses what it knows:
a series is complete once the associations that carried it are released and nothing new came
for ``settle_seconds``; if an association stays open, ``quiet_seconds`` of silence decide.
Study-level routes wait until every input role has a complete series, or until the study has
been quiet for ``study_timeout_seconds``: then they run with what arrived if the required
roles are there, and otherwise end as a failed job whose reason names the missing inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

from pydicom import Dataset

from node import logs
from node.config import Config, Route
from node.isolation import isolated
from node.matcher import failed_conditions
from node.router import Router, assign_inputs, job_spec, read_header
from node.store import Index, SeriesRow

#: Studies quiet for longer than this are no longer examined by study-level routes.
STUDY_LOOKBACK_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Timing:
    settle_seconds: float
    quiet_seconds: float


def series_is_complete(series: SeriesRow, now: float, timing: Timing) -> bool:
    """The completion rule itself, kept free of I/O so that it can be tested directly."""
    if series.open_associations == 0:
        quiet_since = max(series.last_received, series.released_at or series.last_received)
        if now - quiet_since >= timing.settle_seconds:
            return True
    return now - series.last_received >= timing.quiet_seconds


@dataclass(frozen=True)
class StudyDecision:
    action: Literal["wait", "run", "missing"]
    missing: tuple[str, ...] = ()


def study_decision(
    route: Route, assigned: dict[str, str], pending: bool, quiet_for: float, timeout: float
) -> StudyDecision:
    """Run when every role is filled and nothing is arriving; after the timeout, run with the
    required roles or give up naming what is missing."""
    if len(assigned) == len(route.inputs) and not pending:
        return StudyDecision("run")
    if quiet_for < timeout:
        return StudyDecision("wait")
    missing = tuple(role for role, sel in route.inputs.items() if sel.required and role not in assigned)
    return StudyDecision("missing", missing) if missing else StudyDecision("run")


class Assembler:
    """One pass of ``tick`` completes series, routes them, and starts study-level jobs."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index
        self.router = Router(config)
        self._headers: dict[str, Dataset] = {}

    def header(self, series: SeriesRow) -> Dataset:
        cached = self._headers.get(series.series_uid)
        if cached is None:
            cached = self._headers[series.series_uid] = read_header(series.sample_path)
        return cached

    def timing(self, header: Dataset) -> Timing:
        """A route may complete its series sooner (or later) than the node default."""
        defaults = self.config.completion
        routes = self.router.matching(header)
        settle = [r.settle_seconds for r in routes if r.settle_seconds is not None]
        quiet = [r.quiet_seconds for r in routes if r.quiet_seconds is not None]
        return Timing(min(settle, default=defaults.settle_seconds), min(quiet, default=defaults.quiet_seconds))

    def tick(self, now: float | None = None) -> None:
        """One pass; a series or study that raises is set aside with its reason, the rest go on."""
        now = time.time() if now is None else now
        for series in self.index.receiving_series():
            isolated("scheduler", series.series_uid, lambda: self._complete(series, now),
                     lambda reason: self._set_aside(series, reason))
        for series in self.index.complete_series():
            isolated("router", series.series_uid, lambda: self._route(series),
                     lambda reason: self._set_aside(series, reason))
        self._route_studies(now)

    def _complete(self, series: SeriesRow, now: float) -> None:
        if series_is_complete(series, now, self.timing(self.header(series))):
            if self.index.mark_complete(series.series_uid, series.generation):
                logs.info("series.complete", series=series.series_uid, study=series.study_uid,
                          instances=series.instance_count, generation=series.generation)

    def _route(self, series: SeriesRow) -> None:
        jobs = self.router.series_jobs(series, self.header(series))
        self.index.route_series(series.series_uid, series.generation, jobs)
        logs.info("series.routed", series=series.series_uid, routes=[j["route"] for j in jobs])

    def _set_aside(self, series: SeriesRow, reason: str) -> None:
        self._headers.pop(series.series_uid, None)
        self.index.set_aside_series(series.series_uid, series.generation, reason)
        logs.error("series.set_aside", series=series.series_uid, study=series.study_uid,
                   generation=series.generation, reason=reason)

    def _route_studies(self, now: float) -> None:
        routes = self.router.study_routes()
        if not routes:
            return
        for study_uid, last_received in self.index.studies_with_activity_since(now - STUDY_LOOKBACK_SECONDS):
            rows = self.index.series_of_study(study_uid)
            generation = sum(r.generation for r in rows)
            if self.index.has_problem("study", study_uid, generation):
                continue
            for route in routes:
                isolated("router", study_uid,
                         lambda: self._route_study(route, study_uid, rows, now - last_received),
                         lambda reason: self.index.record_problem("study", study_uid, generation,
                                                                  f"route {route.name}: {reason}"))

    def _route_study(self, route: Route, study_uid: str, rows: Sequence[SeriesRow], quiet_for: float) -> None:
        generation = sum(r.generation for r in rows)
        if self.index.has_job(route.name, study_uid, generation):
            return
        if generation and route.on_late_instances == "ignore" and self.index.has_job(route.name, study_uid):
            return
        arrived = [(r, self.header(r)) for r in rows if r.state != "receiving"]
        if not any(not failed_conditions(route.match, header) for _, header in arrived):
            return
        assigned = assign_inputs(route, arrived)
        pending = any(r.state == "receiving" for r in rows)
        timeout = route.study_timeout_seconds or self.config.completion.study_timeout_seconds
        decision = study_decision(route, assigned, pending, quiet_for, timeout)
        if decision.action == "wait":
            return
        if decision.action == "run":
            spec = job_spec(route, subject=study_uid, study_uid=study_uid, generation=generation,
                            inputs=assigned)
        else:
            reason = f"missing input: {', '.join(decision.missing)} (study quiet for {timeout:g} s)"
            spec = job_spec(route, subject=study_uid, study_uid=study_uid, generation=generation,
                            inputs=assigned, state="failed", outcome=reason)
        if self.index.add_job(spec):
            logs.info("study.routed", study=study_uid, route=route.name, roles=sorted(assigned),
                      outcome=spec["outcome"] or "queued")
