"""The node's backfill loop: queries the PACS for each new backfill, retrieves its studies a
few at a time within ``[backfill] hours``, and marks each backfill done when its studies have run.

Everything it does is recorded in the index (``node.index.backfills``) before and after each
step, so that a restart resumes it: a study whose retrieve was under way is asked for again (its
series were held incomplete meanwhile, so nothing half-arrived has run). The jobs themselves are
the routes' ordinary jobs, in the backfill lane of the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from node import logs
from node.config import Config, ConfigError
from node.index.backfills import BackfillStudy
from node.index.states import BackfillState
from node.index.store import Index
from node.retrieve.move import Moved, move_study
from node.retrieve.query import PacsError, StudyQuery, find_studies

#: a study whose retrieve failed is asked for again after this (the PACS may be restarting)
RETRY_SECONDS = 30.0


def in_hours(hours: str | None, now: float | None = None) -> bool:
    """Whether ``now`` (local time) is within "HH:MM-HH:MM"; an end before the start runs past
    midnight; None: always."""
    if hours is None:
        return True
    start, end = (int(h) * 60 + int(m) for h, m in (part.split(":") for part in hours.split("-")))
    moment = datetime.fromtimestamp(time.time() if now is None else now)
    minute = moment.hour * 60 + moment.minute
    return start <= minute < end if start <= end else minute >= start or minute < end


class Backfiller:
    """One ``tick`` a second from the node's backfill thread. A retrieve still in flight when the
    node stops is not recorded: its study stays ``retrieving`` and is asked for at the next start."""

    def __init__(self, config: Config, index: Index, receiving: Callable[[], bool]) -> None:
        """``receiving``: whether the node's receivers take associations (the PACS's C-STOREs)."""
        self.config = config
        self.index = index
        self.receiving = receiving
        self.settings = config.backfill
        self._pool = ThreadPoolExecutor(self.settings.retrieves_in_flight, thread_name_prefix="retrieve")
        self._in_flight: dict[int, Future[Moved]] = {}

    def tick(self) -> None:
        for backfill in self.index.backfills(BackfillState.QUERYING):
            self._query(backfill.id, backfill.source, StudyQuery.from_stored(backfill.request))
        self._collect()
        if in_hours(self.settings.hours) and self.receiving():
            self._retrieve()
        cancelled = self.index.cancel_stray_jobs()
        if cancelled:
            logs.info("backfill.jobs_cancelled", jobs=cancelled)
        for backfill_id in self.index.finish_backfills():
            logs.info("backfill.done", backfill=backfill_id, **vars(self.index.progress(backfill_id)))

    def _query(self, backfill_id: int, source_name: str, query: StudyQuery) -> None:
        try:
            source = self.config.source(source_name)
            answer = find_studies(self.config, source, query)
        except (PacsError, ConfigError, OSError) as error:
            if self.index.fail_query(backfill_id, str(error)):
                logs.error("backfill.query_failed", backfill=backfill_id, source=source_name, reason=str(error))
            return
        listed = len(query.accessions) + len(query.study_uids)
        if self.index.record_found(backfill_id, answer.studies, answer.not_found, listed, source_name):
            logs.info("backfill.queried", backfill=backfill_id, source=source_name, studies=len(answer.studies),
                      asked=listed or None, not_found=len(answer.not_found) or None)

    def _retrieve(self) -> None:
        """Start retrieves while fewer than ``retrieves_in_flight`` are under way: first those a
        restart interrupted, then new studies, oldest first."""
        room = self.settings.retrieves_in_flight - len(self._in_flight)
        orphans = [s for s in self.index.studies_retrieving() if s.id not in self._in_flight][:max(room, 0)]
        sources = {b.id: b.source for b in self.index.backfills(BackfillState.RETRIEVING)}
        for study in [*orphans, *self.index.take_studies(room - len(orphans))]:
            self._in_flight[study.id] = self._pool.submit(self._move, study, sources.get(study.backfill_id))

    def _move(self, study: BackfillStudy, source_name: str | None) -> Moved:
        """In a retrieve thread: the C-MOVE only (the index is written by the loop's thread)."""
        logs.info("backfill.retrieving", backfill=study.backfill_id, study=study.study_uid, attempt=study.attempts)
        return move_study(self.config, self.config.source(source_name), study.study_uid)

    def _collect(self) -> None:
        """Record the retrieves that ended."""
        for study_id, future in list(self._in_flight.items()):
            if not future.done():
                continue
            del self._in_flight[study_id]
            try:
                moved = future.result()
            except Exception as error:  # noqa: BLE001 (any failure is this study's, tried again)
                state = self.index.retrieve_failed(study_id, str(error), self.settings.retrieve_attempts,
                                                   RETRY_SECONDS)
                logs.error("backfill.retrieve_failed", study_row=study_id, reason=str(error),
                           next=state.value if state else None)
                continue
            if self.index.mark_retrieved(study_id, moved.completed):
                logs.info("backfill.retrieved", study_row=study_id, instances=moved.completed)

