"""Backfills in the index: what a site asked to retrieve from its PACS, each study's way here
(the backfill and retrieve machines of ``node.index.states``), and the figures people watch.

A backfill is a record, not a process: the node's backfill loop (``node.retrieve.backfill``) reads
its work from here, so a restart (or a kill) resumes every backfill where it stood. A study's
jobs are the ordinary jobs of its routes; they wait in the backfill lane (``node.index.jobs``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.index import states
from node.index.db import Database
from node.index.jobs import BACKFILL, UNFINISHED
from node.index.states import BackfillState, DeliveryState, RetrieveState, SeriesState


@dataclass(frozen=True)
class Backfill:
    id: int
    source: str
    #: what was asked, as ``node.retrieve.query.StudyQuery`` stores it
    request: dict[str, Any]
    state: BackfillState
    reason: str
    created_at: float
    finished_at: float | None
    #: listed keys the PACS answered nothing for, (AccessionNumber or StudyInstanceUID, value);
    #: identifying: the validation export shows them, the status line and the page only their count
    not_found: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FoundStudy:
    """A study the PACS answered a backfill's query with."""

    study_uid: str
    #: identifying: kept for the validation export only, never logged or shown on a page
    accession: str = ""


@dataclass(frozen=True)
class BackfillStudy(FoundStudy):
    id: int = 0
    backfill_id: int = 0
    state: RetrieveState = RetrieveState.FOUND
    attempts: int = 0
    last_error: str = ""
    found_at: float = 0.0
    retrieve_started_at: float | None = None
    retrieved_at: float | None = None
    instances: int = 0
    #: a study whose retrieve failed is not asked for again before this
    not_before: float = 0.0


@dataclass(frozen=True)
class Progress:
    """A backfill's figures: studies found by the query, retrieved, run (every job ended, or no
    route took it) and delivered (every delivery of those jobs sent; a silent trial has none)."""

    queried: int
    retrieved: int
    failed: int
    run: int
    delivered: int
    #: when the first study's retrieve started (None: none yet), for the rate
    started_at: float | None

    def rate_per_hour(self, now: float) -> float | None:
        """Studies run per hour since the first retrieve; None before one ran."""
        if self.started_at is None or self.run == 0 or now <= self.started_at:
            return None
        return self.run * 3600.0 / (now - self.started_at)

    def eta_seconds(self, now: float) -> float | None:
        rate = self.rate_per_hour(now)
        left = self.queried - self.failed - self.run
        return None if rate is None else max(0, left) * 3600.0 / rate


#: a retrieved study whose series are all routed (with their jobs, in one transaction) and whose
#: jobs have all ended; one that no route took counts too, or its backfill would never end
_RUN = (f"NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = b.study_uid AND s.state <> '{SeriesState.ROUTED}')"
        f" AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = b.study_uid"
        f" AND j.state IN ({', '.join(repr(str(s)) for s in UNFINISHED)}))")
_DELIVERED = (f"{_RUN} AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN jobs j ON j.id = d.job_id"
              f" WHERE j.study_uid = b.study_uid AND d.state <> '{DeliveryState.SENT}')")


class BackfillIndex(Database):
    """Backfills, their studies, and the retrieve machine."""

    def create_backfill(self, source: str, request: dict[str, Any]) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO backfills(source, request, state, created_at) VALUES (?, ?, ?, ?)",
                             (source, json.dumps(request), states.BACKFILLS.check_initial(BackfillState.QUERYING),
                              time.time()))
            return int(cur.lastrowid or 0)

    def backfill(self, backfill_id: int) -> Backfill | None:
        found = self._backfills("WHERE id = ?", (backfill_id,))
        return found[0] if found else None

    def backfills(self, state: BackfillState | None = None) -> list[Backfill]:
        return self._backfills("WHERE state = ?", (state,)) if state else self._backfills("", ())

    def _backfills(self, where: str, args: tuple[Any, ...]) -> list[Backfill]:
        rows = self._db.execute(f"SELECT * FROM backfills {where} ORDER BY id", args).fetchall()
        return [Backfill(**{**dict(r), "state": BackfillState(r["state"]), "request": json.loads(r["request"]),
                            "not_found": tuple((k, v) for k, v in json.loads(r["not_found"]))}) for r in rows]

    def record_found(self, backfill_id: int, studies: Sequence[FoundStudy],
                     not_found: Sequence[tuple[str, str]] = (), listed: int = 0, source: str = "") -> bool:
        """querying -> retrieving with the studies its query found (each once) and the ``listed``
        ones ``source`` did not know, counted in the reason; False: the backfill was cancelled
        meanwhile and nothing was recorded."""
        now = time.time()
        reason = f"{len(not_found)} of {listed} listed not found at {source}" if not_found else ""
        with self._tx() as db:
            if not states.apply(db, states.BACKFILLS, states.FOUND, backfill_id,
                                {"reason": reason, "not_found": json.dumps(list(not_found))}):
                return False
            db.executemany("INSERT OR IGNORE INTO backfill_studies(backfill_id, study_uid, accession, state,"
                           " found_at) VALUES (?, ?, ?, ?, ?)",
                           [(backfill_id, s.study_uid, s.accession, RetrieveState.FOUND, now) for s in studies])
        return True

    def fail_query(self, backfill_id: int, reason: str) -> bool:
        with self._tx() as db:
            return states.apply(db, states.BACKFILLS, states.QUERY_FAILED, backfill_id,
                                {"reason": reason, "finished_at": time.time()}) == 1

    def take_studies(self, limit: int) -> list[BackfillStudy]:
        """found -> retrieving for up to ``limit`` studies of running backfills, oldest first."""
        if limit <= 0:
            return []
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                "SELECT b.id FROM backfill_studies b JOIN backfills f ON f.id = b.backfill_id"
                " WHERE b.state = ? AND f.state = ? AND b.not_before <= ? ORDER BY b.id LIMIT ?",
                (RetrieveState.FOUND, BackfillState.RETRIEVING, time.time(), limit))]
            for study_id in ids:
                states.apply(db, states.RETRIEVES, states.TAKE, study_id,
                             {"retrieve_started_at": time.time(), "attempts": states.Sql("attempts + 1")})
        return self._studies(f"WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)) if ids else []

    def studies_retrieving(self) -> list[BackfillStudy]:
        return self._studies("WHERE state = ?", (RetrieveState.RETRIEVING,))

    def backfill_studies(self, backfill_id: int) -> list[BackfillStudy]:
        return self._studies("WHERE backfill_id = ?", (backfill_id,))

    def _studies(self, where: str, args: tuple[Any, ...]) -> list[BackfillStudy]:
        rows = self._db.execute(f"SELECT * FROM backfill_studies {where} ORDER BY id", args).fetchall()
        return [BackfillStudy(**{**dict(r), "state": RetrieveState(r["state"])}) for r in rows]

    def mark_retrieved(self, study_id: int, instances: int) -> bool:
        with self._tx() as db:
            return states.apply(db, states.RETRIEVES, states.ARRIVED, study_id,
                                {"retrieved_at": time.time(), "instances": instances, "last_error": ""}) == 1

    def retrieve_failed(self, study_id: int, error: str, max_attempts: int, wait: float) -> RetrieveState | None:
        """retrieving -> found for another try in ``wait`` seconds, or -> failed after
        ``max_attempts``; the state it moved to (None: it was no longer retrieving)."""
        with self._tx() as db:
            values: dict[str, Any] = {"last_error": error, "not_before": time.time() + wait}
            if states.apply(db, states.RETRIEVES, states.GIVE_UP_RETRIEVE, study_id, values,
                            extra_where="attempts >= ?", extra_args=(max_attempts,)):
                return RetrieveState.FAILED
            if states.apply(db, states.RETRIEVES, states.TRY_AGAIN, study_id, values):
                return RetrieveState.FOUND
        return None

    def held_for_retrieve(self, study_uid: str) -> bool:
        """Whether a backfill is retrieving this study, or will try again after a failed
        retrieve: its series are not complete before the PACS said the retrieve ended, so a kill
        or a failure mid-retrieve never routes half a series (the rest would run it again)."""
        row = self._db.execute("SELECT 1 FROM backfill_studies WHERE study_uid = ? AND (state = ?"
                               " OR (state = ? AND attempts > 0)) LIMIT 1",
                               (study_uid, RetrieveState.RETRIEVING, RetrieveState.FOUND)).fetchone()
        return row is not None

    def cancel_backfill(self, backfill_id: int) -> int | None:
        """The backfill, its studies not yet retrieved and its queued jobs are cancelled; the
        number of jobs cancelled (None: the backfill had already ended)."""
        with self._tx() as db:
            if not states.apply(db, states.BACKFILLS, states.CANCEL_BACKFILL, backfill_id,
                                {"finished_at": time.time(), "reason": "cancelled by the administrator"}):
                return None
            states.apply(db, states.RETRIEVES, states.CANCEL_RETRIEVE, None, {},
                         extra_where="backfill_id = ?", extra_args=(backfill_id,))
            return _cancel_queued_jobs(db, "b.backfill_id = ?", (backfill_id,))

    def cancel_stray_jobs(self) -> int:
        """Queued jobs of studies whose every backfill was cancelled (a retrieve in flight at the
        cancel brought them) are cancelled too."""
        with self._tx() as db:
            return _cancel_queued_jobs(db, "b.state = ? AND NOT EXISTS (SELECT 1 FROM backfill_studies o WHERE"
                                       " o.study_uid = b.study_uid AND o.state <> ?)",
                                       (RetrieveState.CANCELLED, RetrieveState.CANCELLED))

    def finish_backfills(self) -> list[int]:
        """retrieving -> done for each backfill whose studies have all been retrieved (or given
        up) and run; the ids that finished."""
        done = []
        for backfill in self.backfills(BackfillState.RETRIEVING):
            row = self._db.execute(
                f"SELECT COUNT(*) FROM backfill_studies b WHERE b.backfill_id = ? AND NOT (b.state IN (?, ?)"
                f" OR (b.state = ? AND {_RUN}))",
                (backfill.id, RetrieveState.FAILED, RetrieveState.CANCELLED, RetrieveState.RETRIEVED)).fetchone()
            if row[0] == 0:
                with self._tx() as db:
                    if states.apply(db, states.BACKFILLS, states.FINISH_BACKFILL, backfill.id,
                                    {"finished_at": time.time()}):
                        done.append(backfill.id)
        return done

    def progress(self, backfill_id: int) -> Progress:
        row = self._db.execute(
            "SELECT COUNT(*) AS queried,"
            f" COALESCE(SUM(b.state = '{RetrieveState.RETRIEVED}'), 0) AS retrieved,"
            f" COALESCE(SUM(b.state = '{RetrieveState.FAILED}'), 0) AS failed,"
            f" COALESCE(SUM(b.state = '{RetrieveState.RETRIEVED}' AND {_RUN}), 0) AS run,"
            f" COALESCE(SUM(b.state = '{RetrieveState.RETRIEVED}' AND {_DELIVERED}), 0) AS delivered,"
            " MIN(b.retrieve_started_at) AS started_at FROM backfill_studies b WHERE b.backfill_id = ?",
            (backfill_id,)).fetchone()
        return Progress(**dict(row))

    def study_jobs(self, study_uid: str) -> list[int]:
        """The ids of a study's jobs, oldest first (the validation export reads each)."""
        return [int(r[0]) for r in self._db.execute("SELECT id FROM jobs WHERE study_uid = ? ORDER BY id",
                                                    (study_uid,))]

    def delivered_at(self, job_id: int) -> float | None:
        """When the last of a job's deliveries was sent; None while one is not."""
        row = self._db.execute("SELECT COUNT(*) AS n, SUM(state = ?) AS sent, MAX(sent_at) AS at"
                               " FROM deliveries WHERE job_id = ?", (DeliveryState.SENT, job_id)).fetchone()
        return None if row["n"] == 0 or row["sent"] != row["n"] else float(row["at"])


def _cancel_queued_jobs(db: sqlite3.Connection, studies_where: str, args: tuple[Any, ...]) -> int:
    """Cancel the backfill lane's queued jobs of the backfill studies ``studies_where`` selects."""
    return states.apply(db, states.JOBS, states.CANCEL, None,
                        {"outcome": "cancelled with its backfill", "finished_at": time.time()},
                        extra_where=f"lane = ? AND study_uid IN (SELECT b.study_uid FROM backfill_studies b"
                                    f" WHERE {studies_where})", extra_args=(BACKFILL, *args))

