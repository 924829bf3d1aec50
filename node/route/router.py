"""Routes: which complete series (or studies) go to which pipeline, and where results go.

Matching uses the header of one stored instance of the series (no pixel data is read), the
same choice mercure and Orthanc make: a series shares its routing attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset

from node import logs
from node.config import Config, Route
from node.index.states import JobState
from node.index.store import Index, JobSpec, SeriesRow
from node.route.matcher import failed_conditions
from pipelines.base import SERIES_ROLE


@dataclass(frozen=True)
class RouteCheck:
    """Why a route does or does not take a series; what ``radnode route-test`` prints."""

    route: str
    matched: bool
    reasons: tuple[str, ...]


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config

    def check(self, header: Dataset) -> list[RouteCheck]:
        """Every route, in priority order, with the conditions that failed for this header."""
        out = []
        for route in self._by_priority(self.config.routes):
            reasons = failed_conditions(route.match, header)
            notes: tuple[str, ...] = ()
            if route.level == "study" and not reasons:
                roles = [role for role, selector in route.inputs.items()
                         if not failed_conditions(selector.match, header)]
                if roles:
                    notes = (f"study input role: {', '.join(roles)}",)
                else:
                    reasons = [f"matches none of the study's input roles ({', '.join(route.inputs)})"]
            out.append(RouteCheck(route.name, not reasons, tuple(reasons) or notes))
        return out

    def matching(self, header: Dataset, level: str | None = None) -> list[Route]:
        return [
            route for route in self._by_priority(self.config.routes)
            if (level is None or route.level == level) and not failed_conditions(route.match, header)
        ]

    def route_series(self, index: Index, series: SeriesRow, header: Dataset) -> list[JobSpec]:
        """The one call completion makes: queue the jobs of a series that just completed (one per
        matching series-level route) and record it routed, with a note where late instances are
        ignored."""
        routes = self.matching(header, level="series")
        jobs = [job_spec(route, subject=series.series_uid, study_uid=series.study_uid,
                         generation=series.generation, inputs={SERIES_ROLE: series.series_uid})
                for route in routes if series.generation == 0 or route.on_late_instances == "rerun"]
        if series.generation:
            for route in routes:
                if route.on_late_instances == "ignore":
                    note_ignored(index, route, series.series_uid, series.study_uid, series.generation)
        index.route_series(series.series_uid, series.generation, jobs)
        logs.info("series.routed", series=series.series_uid, routes=[j.route for j in jobs])
        return jobs

    def study_routes(self) -> list[Route]:
        return [r for r in self._by_priority(self.config.routes) if r.level == "study"]

    @staticmethod
    def _by_priority(routes: Iterable[Route]) -> list[Route]:
        return sorted(routes, key=lambda r: -r.priority)


def assign_inputs(route: Route, series: Iterable[tuple[SeriesRow, Dataset]]) -> dict[str, str]:
    """Pick one series per input role; the fullest series wins when several qualify.

    A series fills at most one role, so a T1 post-contrast series cannot also count as the T1.
    """
    candidates = [(row, header) for row, header in series if not failed_conditions(route.match, header)]
    candidates.sort(key=lambda item: (-item[0].instance_count, -item[0].last_received))
    chosen: dict[str, str] = {}
    used: set[str] = set()
    for role, selector in route.inputs.items():
        for row, header in candidates:
            if row.series_uid not in used and not failed_conditions(selector.match, header):
                chosen[role] = row.series_uid
                used.add(row.series_uid)
                break
    return chosen


def job_spec(
    route: Route, *, subject: str, study_uid: str, generation: int, inputs: Mapping[str, str],
    state: JobState = JobState.QUEUED, outcome: str = "",
) -> JobSpec:
    return JobSpec(
        route=route.name, pipeline=route.pipeline, subject=subject, study_uid=study_uid,
        generation=generation, inputs=dict(inputs),
        destinations=list(route.destinations) if route.deliver else [],  # a silent trial sends nothing
        priority=route.priority, state=state, outcome=outcome,
    )


def note_ignored(index: Index, route: Route, subject: str, study_uid: str, generation: int) -> None:
    """on_late_instances = "ignore": say on the record why nothing ran."""
    previous = index.latest_job(route.name, subject)
    if previous is None:
        return
    note = (f"not run: instances arrived after job {previous.id} and on_late_instances = \"ignore\";"
            f" job {previous.id} ({previous.state}) stays the answer")
    if index.add_note(route.name, subject, study_uid, generation, note):
        logs.info("route.late_ignored", route=route.name, subject=subject, generation=generation,
                  job=previous.id)
