"""Deciding when a series or a study has arrived, and handing it to routing.

DICOM never says "series finished", so completion is a decision: the carrying associations are
released and nothing new came for ``settle_seconds`` (or ``quiet_seconds`` of silence while one
stays open), both stretched for a slow series (``completeness``), longer while the headers
promise more (up to ``incomplete_timeout_seconds``). Study-level routes wait for their roles,
``study_timeout_seconds`` of quiet, or ``radnode complete``; then run with what arrived or end
as a failed job naming the missing inputs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset

from node import logs
from node.complete.completeness import Expectation, HeaderCache, adapted_seconds, expected_more
from node.config import Config
from node.index.store import Index, SeriesRow
from node.isolation import isolated
from node.route.router import Router, read_header
from node.route.study import StudyRouter

#: Series whose routing header (one instance's, about 60 KiB) stays in memory: a study being
#: routed needs its series' headers on every tick; past this, the least recently used is read
#: again when needed (about 15 MiB at most).
HEADER_CACHE_SERIES = 256


@dataclass(frozen=True)
class Timing:
    settle_seconds: float
    quiet_seconds: float
    incomplete_seconds: float = 300.0


#: Why a series is set aside when every instance it had was sent again under another series: it
#: is never routed (a pipeline would read nothing), and a new instance of it re-opens it.
NO_INSTANCES_LEFT = "no instances left: each was sent again under another study or series"


def series_is_complete(series: SeriesRow, now: float, timing: Timing) -> bool:
    """The quiet-time rule itself, kept free of I/O so that it can be tested directly."""
    if series.open_associations == 0:
        if now - quiet_since(series) >= timing.settle_seconds:
            return True
    return now - series.last_received >= timing.quiet_seconds


def quiet_since(series: SeriesRow) -> float:
    return max(series.last_received, series.released_at or series.last_received)


def next_check(series: SeriesRow, timing: Timing) -> float:
    """The first moment ``series_is_complete`` can hold if nothing else arrives: completion
    sleeps until then rather than a whole interval."""
    quiet = series.last_received + timing.quiet_seconds
    if series.open_associations == 0:
        return min(quiet, quiet_since(series) + timing.settle_seconds)
    return quiet


@dataclass(frozen=True)
class SeriesWait:
    """What a receiving series waits for, and until when at the latest (``radnode studies``)."""

    kind: Literal["instances", "association", "settle"]
    waits_for: str
    until: float


class Assembler:
    """One pass of ``tick`` completes series, routes them, and starts study-level jobs."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index
        self.router = Router(config)
        self.slices = HeaderCache()
        self._headers: OrderedDict[str, Dataset] = OrderedDict()  # least recently used first
        self._logged_waits: dict[str, tuple[int, int]] = {}  # series -> (generation, instances) logged
        self.studies = StudyRouter(config, index, self.router, self.header, self._forget_headers)

    def header(self, series: SeriesRow) -> Dataset:
        cached = self._headers.get(series.series_uid)
        if cached is None:
            cached = self._headers[series.series_uid] = read_header(series.sample_path)
            if len(self._headers) > HEADER_CACHE_SERIES:
                self._headers.popitem(last=False)
        else:
            self._headers.move_to_end(series.series_uid)
        return cached

    def cached_headers(self) -> int:
        """How many series headers are held in memory (at most ``HEADER_CACHE_SERIES``)."""
        return len(self._headers)

    def _forget_headers(self, series_uids: Iterable[str]) -> None:
        for series_uid in series_uids:
            self._headers.pop(series_uid, None)

    def timing(self, header: Dataset, arrivals: Sequence[float] = ()) -> Timing:
        """A route may complete its series sooner (or later) than the node default; a series
        that arrives slowly gets several times its own median gap between instances."""
        defaults = self.config.completion
        routes = self.router.matching(header)
        settle = min((r.settle_seconds for r in routes if r.settle_seconds is not None),
                     default=defaults.settle_seconds)
        quiet = min((r.quiet_seconds for r in routes if r.quiet_seconds is not None),
                    default=defaults.quiet_seconds)
        return Timing(adapted_seconds(arrivals, settle), adapted_seconds(arrivals, quiet),
                      defaults.incomplete_timeout_seconds)

    def series_timing(self, series: SeriesRow) -> Timing:
        return self.timing(self.header(series), self.index.arrival_times(series.series_uid))

    def expectation(self, series: SeriesRow) -> Expectation | None:
        """What the series' own headers say is still missing, if anything."""
        paths = self.index.instance_paths(series.series_uid)
        return expected_more(self.slices.headers(series.series_uid, paths))

    def series_wait(self, series: SeriesRow, now: float) -> SeriesWait:
        """Why a receiving series is not complete yet, and when it will be at the latest."""
        timing = self.series_timing(series)
        expectation = self.expectation(series)
        if expectation is not None:
            return SeriesWait("instances", f"more instances ({expectation.reason})",
                              series.last_received + timing.incomplete_seconds)
        if series.open_associations:
            return SeriesWait("association", "the sending association to be released",
                              series.last_received + timing.quiet_seconds)
        return SeriesWait("settle", "settle time", quiet_since(series) + timing.settle_seconds)

    def tick(self, now: float | None = None) -> float | None:
        """One pass; a series or study that raises is set aside with its reason, the rest go on.
        Returns when a receiving series may next complete (None: none waits on time)."""
        now = time.time() if now is None else now
        receiving = self.index.receiving_series()
        due: list[float] = []
        for series in receiving:
            isolated("completion", series.series_uid,
                     lambda: self._unless_moved(series, lambda: self._complete(series, now, due), due, now),
                     lambda reason: self._set_aside(series, reason))
        complete = self.index.series_to_route()  # with the series completed just now
        for series in complete:
            isolated("router", series.series_uid,
                     lambda: self._unless_moved(series, lambda: self._route(series), due, now),
                     lambda reason: self._set_aside(series, reason))
        self.studies.tick(now, {series.study_uid for series in (*receiving, *complete)})
        return min(due, default=None)

    def _unless_moved(self, series: SeriesRow, step: Callable[[], None], due: list[float], now: float) -> None:
        """``step`` on the series as this pass read it. An instance sent again under another
        series moves its file, so a file the row names may be gone by the time it is read: then
        the series is judged again at once, on the index as it is by then (emptied, it is set
        aside as such). A file gone while the row still names it is the series' failure."""
        try:
            step()
        except FileNotFoundError:
            current = self.index.series(series.series_uid)
            if current is not None and (current.sample_path, current.instance_count) == (
                    series.sample_path, series.instance_count):
                raise
            due.append(now)

    def _complete(self, series: SeriesRow, now: float, due: list[float]) -> None:
        """Complete ``series`` if its rule holds now; otherwise add to ``due`` when it may."""
        if series.instance_count == 0:  # its files are gone: nothing to read, nothing to wait for
            self._set_aside(series, NO_INSTANCES_LEFT)
            return
        if self.index.held_for_retrieve(series.study_uid):
            return  # a backfill is retrieving its study: complete once the PACS says all came
        timing = self.series_timing(series)
        if not series_is_complete(series, now, timing):
            if series.open_associations == 0:
                self.expectation(series)  # its slice headers are read while it settles, not after
            due.append(next_check(series, timing))
            return
        expectation = self.expectation(series)
        if expectation is not None and now - series.last_received < timing.incomplete_seconds:
            due.append(series.last_received + timing.incomplete_seconds)
            seen = (series.generation, series.instance_count)
            if self._logged_waits.get(series.series_uid) != seen:
                self._logged_waits[series.series_uid] = seen
                logs.info("series.waiting", series=series.series_uid, instances=series.instance_count,
                          reason=expectation.reason, seconds=round(timing.incomplete_seconds, 1))
            return
        if self.index.mark_complete(series.series_uid, series.generation):
            self.slices.forget(series.series_uid)
            self._logged_waits.pop(series.series_uid, None)
            logs.info("series.complete", series=series.series_uid, study=series.study_uid,
                      instances=series.instance_count, generation=series.generation,
                      incomplete=expectation.reason if expectation else None)

    def _route(self, series: SeriesRow) -> None:
        if series.instance_count == 0:
            self._set_aside(series, NO_INSTANCES_LEFT)
            return
        self.router.route_series(self.index, series, self.header(series))
        self.slices.forget(series.series_uid)  # also when ``radnode complete`` completed it
        self._logged_waits.pop(series.series_uid, None)
        if not self.router.study_routes():
            self._forget_headers([series.series_uid])  # no study route will look at it again

    def _set_aside(self, series: SeriesRow, reason: str) -> None:
        self._headers.pop(series.series_uid, None)
        self.slices.forget(series.series_uid)
        self.index.set_aside_series(series.series_uid, series.generation, reason)
        logs.error("series.set_aside", series=series.series_uid, study=series.study_uid,
                   generation=series.generation, reason=reason)
