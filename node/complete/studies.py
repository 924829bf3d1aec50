"""What each study and series is waiting for: ``radnode studies`` and the study counts in /metrics.

A brain study missing an optional sequence waits up to ``study_timeout_seconds``; a series whose
slices have a gap waits up to ``incomplete_timeout_seconds``. Both are decisions the node takes
silently, so this view says, from the index and the same rules the assembler applies, which
roles are filled, what is still awaited and until when (``radnode complete`` ends the wait).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from node.complete.assembler import Assembler
from node.config import Config
from node.index.states import SeriesState
from node.index.store import Index, SeriesRow
from node.route.study import STUDY_LOOKBACK_SECONDS, wanted_roles


class StudyState(StrEnum):
    """A study's standing, worked out from its series and study routes (not stored, so no
    transitions: see ``node.index.states`` for the stored machines). /metrics lists them in this order."""

    RECEIVING = "receiving"
    WAITING = "waiting"
    ROUTED = "routed"


#: What a receiving series waits for (``SeriesWait.kind``).
SERIES_WAITS = ("instances", "association", "settle")


@dataclass(frozen=True)
class SeriesView:
    series_uid: str
    modality: str
    description: str
    instances: int
    state: SeriesState
    waits_for: str = ""
    until: float | None = None
    wait_kind: str = ""


@dataclass(frozen=True)
class RouteView:
    """One study-level route's standing with a study."""

    route: str
    state: str
    filled: dict[str, str]
    waits_for: tuple[str, ...] = ()
    until: float | None = None


@dataclass
class StudyView:
    study_uid: str
    last_received: float
    series: list[SeriesView] = field(default_factory=list)
    routes: list[RouteView] = field(default_factory=list)
    #: StudyDescription and StudyDate (YYYY-MM-DD) from a series' header: what people recognise a
    #: study by on the page, instead of its UID (no patient data)
    description: str = ""
    date: str = ""
    #: why the study's headers or routes could not be read (a spool file gone, say): the view
    #: then lists its series from the index alone, and the page and /metrics show every other study
    problem: str = ""

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series})

    @property
    def state(self) -> StudyState:
        if any(s.state == SeriesState.RECEIVING for s in self.series):
            return StudyState.RECEIVING
        if any(r.state == StudyState.WAITING for r in self.routes):
            return StudyState.WAITING
        return StudyState.ROUTED


class StudyWatch:
    """Builds the views with an assembler of its own (read-only: it never changes the index)."""

    def __init__(self, config: Config, index: Index) -> None:
        self.index = index
        self.assembler = Assembler(config, index)
        timeouts = [r.study_timeout_seconds or config.completion.study_timeout_seconds
                    for r in self.assembler.router.study_routes()]
        #: a study quiet for longer, with no series receiving, has nothing left to wait for
        self.longest_wait = max(timeouts, default=0.0)

    def studies(self, now: float, detail: bool = True, settled_limit: int | None = None) -> list[StudyView]:
        """Studies of the last 7 days, newest first. ``detail=False`` (for /metrics) does not read
        the headers of studies that can no longer be waiting, so a scrape stays cheap.
        ``settled_limit`` keeps only the newest that many of those settled studies (a busy site's
        week is 1,400 studies: the web page shows what still moves and the latest few)."""
        views = []
        settled = 0
        for study_uid, last_received in self.index.studies(since=now - STUDY_LOOKBACK_SECONDS):
            if now - last_received >= self.longest_wait:
                rows = self.index.series_of_study(study_uid)
                if all(r.state != SeriesState.RECEIVING for r in rows):
                    settled += 1
                    if settled_limit is not None and settled > settled_limit:
                        continue
                    if not detail:
                        views.append(_from_index(study_uid, last_received, rows))
                        continue
            views.append(self._readable_study(study_uid, last_received, now))
        return views

    def _readable_study(self, study_uid: str, last_received: float, now: float) -> StudyView:
        """``study``, or, when its files cannot be read, the index's view of it with the reason."""
        try:
            return self.study(study_uid, last_received, now)
        except Exception as error:  # noqa: BLE001 (one unreadable study must not hide the others)
            view = _from_index(study_uid, last_received, self.index.series_of_study(study_uid))
            view.problem = f"{type(error).__name__}: {error}"[:500]
            return view

    def study(self, study_uid: str, last_received: float, now: float) -> StudyView:
        rows = self.index.series_of_study(study_uid)
        view = StudyView(study_uid, last_received)
        for row in rows:
            header = self.assembler.header(row)
            view.description = view.description or str(header.get("StudyDescription", ""))
            view.date = view.date or _date(str(header.get("StudyDate", "")))
            series = SeriesView(row.series_uid, row.modality, str(header.get("SeriesDescription", "")),
                                row.instance_count, row.state)
            if row.state == SeriesState.RECEIVING:
                wait = self.assembler.series_wait(row, now)
                series = replace(series, waits_for=wait.waits_for, until=wait.until, wait_kind=wait.kind)
            else:
                self.assembler.slices.forget(row.series_uid)  # its slice headers were for the wait
            view.series.append(series)
        for route in self.assembler.router.study_routes():
            status = self.assembler.studies.status(route, study_uid, rows, last_received, now)
            if status is None:
                continue
            job = self.index.latest_job(route.name, study_uid)
            if job is not None and (job.generation == status.generation or route.on_late_instances == "ignore"):
                view.routes.append(RouteView(route.name, f"job {job.id} {job.state}", status.assigned))
            elif status.decision.action == "wait":
                awaited = tuple(f"role {role}" for role in wanted_roles(route) if role not in status.assigned)
                pending = tuple(f"series {uid} to complete" for uid in status.pending)
                view.routes.append(RouteView(route.name, StudyState.WAITING, status.assigned, pending + awaited,
                                             status.deadline))
            else:
                view.routes.append(RouteView(route.name, "routing now", status.assigned))
        return view


def _from_index(study_uid: str, last_received: float, rows: list[SeriesRow]) -> StudyView:
    """A study's view from its index rows alone, no header read."""
    view = StudyView(study_uid, last_received)
    view.series = [SeriesView(r.series_uid, r.modality, "", r.instance_count, r.state) for r in rows]
    return view


def _date(dicom_date: str) -> str:
    """A DICOM DA (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    if len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return dicom_date


@dataclass(frozen=True)
class WaitCounts:
    """The numbers behind ``radnode studies``, for /metrics."""

    studies: dict[StudyState, int]
    series: dict[str, int]
    routes_waiting: int


def wait_counts(views: list[StudyView]) -> WaitCounts:
    studies = dict.fromkeys(StudyState, 0)
    series = dict.fromkeys(SERIES_WAITS, 0)
    for view in views:
        studies[view.state] += 1
        for item in view.series:
            if item.wait_kind:
                series[item.wait_kind] += 1
    waiting = sum(1 for view in views for route in view.routes if route.state == StudyState.WAITING)
    return WaitCounts(studies, series, waiting)
