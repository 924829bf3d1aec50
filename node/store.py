"""The index: every piece of state that must survive a crash, in one SQLite file (WAL mode).

Receivers, the scheduler, workers and the dispatcher run in different processes and talk only
through this file. Each state change is one short ``BEGIN IMMEDIATE`` transaction, so two
processes never see half a change, and a restart finds every series, job and delivery where
it was left.

States: series ``receiving -> complete -> routed`` (a late instance re-opens it);
job and delivery: see ``node.states``, whose ``apply`` makes every state change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from node import states
from node.states import DeliveryState, JobState, SeriesState

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.SERIES)},
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    sample_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    association TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS node_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    calling_aet TEXT NOT NULL,
    address TEXT NOT NULL,
    receiver_pid INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL
);
CREATE TABLE IF NOT EXISTS association_series (
    association TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    PRIMARY KEY (association, series_uid)
);
CREATE INDEX IF NOT EXISTS association_series_series ON association_series(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    destinations TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL {states.schema_check(states.JOBS)},
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    deadline REAL,
    worker_pid INTEGER,
    UNIQUE (route, subject, generation)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority);
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    PRIMARY KEY (job_id, path)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.DELIVERIES)},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (job_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS result_objects (
    job_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS supersessions (
    job_id INTEGER PRIMARY KEY,
    replaces INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS route_notes (
    route TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    note TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (route, subject, generation)
);
CREATE TABLE IF NOT EXISTS forced_studies (
    study_uid TEXT PRIMARY KEY,
    forced_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS problems (
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, subject, generation)
);
"""

#: Columns added after the first release: (table, column, definition). An index made by an
#: older radnode gets them at open, so an upgrade needs no manual step.
_ADDED_COLUMNS = (
    ("jobs", "traceback", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "summary", "TEXT NOT NULL DEFAULT '{}'"),
    ("deliveries", "retry_from", "REAL"),
    ("jobs", "lost_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "transfer_syntax", "TEXT NOT NULL DEFAULT ''"),
)

#: a job that has not ended: a rerun of its route and subject waits, its study is not settled
_UNFINISHED = (JobState.QUEUED, JobState.RUNNING)

#: The index holds patient-linked rows (UIDs, paths): owner only, whatever the umask.
INDEX_MODE = 0o600


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    study_uid: str
    modality: str
    sop_class: str
    transfer_syntax: str
    path: Path
    size: int

    @classmethod
    def from_header(cls, header: Any, transfer_syntax: str, path: Path, size: int) -> "InstanceRecord":
        """The row of an instance, from its identifying attributes (a pydicom Dataset)."""
        return cls(
            sop_uid=str(header.SOPInstanceUID),
            series_uid=str(header.SeriesInstanceUID),
            study_uid=str(header.StudyInstanceUID),
            modality=str(header.Modality),
            sop_class=str(header.SOPClassUID),
            transfer_syntax=transfer_syntax,
            path=path,
            size=size,
        )


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    modality: str
    state: SeriesState
    generation: int
    instance_count: int
    first_received: float
    last_received: float
    sample_path: Path
    open_associations: int
    released_at: float | None


@dataclass(frozen=True)
class JobSpec:
    """A job to create: what the router decided for a series or study at one generation."""

    route: str
    pipeline: str
    subject: str
    study_uid: str
    generation: int
    inputs: dict[str, str]
    destinations: list[str]
    priority: int = 0
    #: ``failed`` (with the outcome saying why) for a route that cannot run for its subject
    state: JobState = JobState.QUEUED
    outcome: str = ""


@dataclass(frozen=True)
class Job:
    id: int
    route: str
    pipeline: str
    subject: str
    study_uid: str
    generation: int
    inputs: dict[str, str]
    destinations: list[str]
    priority: int
    state: JobState
    attempts: int
    outcome: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline: float | None
    worker_pid: int | None
    #: Python traceback of a failed job (file, line), for the developer who fixes it.
    traceback: str = ""
    #: the pipeline's JobResult.summary: stage timings, model sha256, volumes.
    summary: dict[str, Any] = field(default_factory=dict)
    #: attempts lost with the machine or process that ran them (not the job's fault); a job is
    #: failed when these reach ``[workers.ray] max_attempts`` (``node.states``).
    lost_attempts: int = 0


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str
    created_at: float
    sent_at: float | None
    #: start of the current retry window (None: created_at); ``radnode retry`` opens a new one.
    retry_from: float | None = None


@dataclass(frozen=True)
class ResultObject:
    """What stays known of a delivered result after retention removed its file: enough to name
    it as the predecessor of a newer result."""

    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str


@dataclass(frozen=True)
class Lineage:
    """A job's result objects and the earlier job they replace (with the version they are), as
    ``node.supersede`` works them out; recorded with the job's end, in its transaction."""

    objects: Sequence[ResultObject]
    replaces: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class RouteNote:
    """Why a route did not run for a subject (a series or a study) at one generation."""

    route: str
    subject: str
    study_uid: str
    generation: int
    note: str
    created_at: float


@dataclass(frozen=True)
class Problem:
    """An item a background loop could not handle, set aside so that the loop goes on."""

    kind: str
    subject: str
    generation: int
    reason: str
    at: float


@dataclass(frozen=True)
class ResultFile:
    """A result file to deliver, with what its writer knew of it (the dispatcher offers its SOP
    class and transfer syntax without opening it)."""

    path: Path
    sop_uid: str
    sop_class: str
    #: "": not known (a row an older radnode wrote): the dispatcher reads the file's meta
    transfer_syntax: str = ""


class Index:
    """One connection to the index; create one per process (and per thread that writes)."""

    def __init__(self, path: Path, *, durable_commits: bool = True) -> None:
        """``durable_commits=False`` saves the disk flush of every commit; only the receiver uses
        it, because the rows it writes point at fsynced spool files and ``node.reconcile`` writes
        them again after a power cut. Every other state change is fsynced when committed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        _restrict(path)
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, column, definition in _ADDED_COLUMNS:
            present = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- receiving -------------------------------------------------------------------------

    def open_association(self, assoc_id: str, calling_aet: str, address: str, pid: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO associations(id, calling_aet, address, receiver_pid, opened_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (assoc_id, calling_aet, address, pid, time.time()),
            )

    def close_association(self, assoc_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE associations SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                (time.time(), assoc_id),
            )

    def close_associations_of(self, receiver_pids: Sequence[int] | None = None) -> int:
        """Associations of receivers that died (all of them at start) are closed as of now."""
        with self._tx() as db:
            if receiver_pids is None:
                cur = db.execute(
                    "UPDATE associations SET closed_at = ? WHERE closed_at IS NULL", (time.time(),)
                )
            else:
                marks = ",".join("?" * len(receiver_pids))
                cur = db.execute(
                    f"UPDATE associations SET closed_at = ? WHERE closed_at IS NULL"
                    f" AND receiver_pid IN ({marks})",
                    (time.time(), *receiver_pids),
                )
            return cur.rowcount

    def record_instance(self, rec: InstanceRecord, assoc_id: str | None) -> bool:
        """Index a stored instance; returns False when it replaced one with the same SOP UID.

        A late instance of a series that was already complete re-opens it with a new
        generation, so the route can decide whether to run again.
        """
        now = time.time()
        with self._tx() as db:
            old = db.execute(
                "SELECT series_uid FROM instances WHERE sop_uid = ?", (rec.sop_uid,)
            ).fetchone()
            db.execute(
                "INSERT INTO studies(study_uid, first_received, last_received) VALUES (?, ?, ?)"
                " ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received",
                (rec.study_uid, now, now),
            )
            db.execute(
                "INSERT INTO series(series_uid, study_uid, modality, state, first_received,"
                " last_received, sample_path) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(series_uid) DO UPDATE SET last_received = excluded.last_received,"
                " generation = CASE WHEN state = ? THEN generation ELSE generation + 1 END,"
                " state = ?",  # states.REOPEN, for a series no longer receiving
                (rec.series_uid, rec.study_uid, rec.modality, SeriesState.RECEIVING, now, now,
                 str(rec.path), SeriesState.RECEIVING, states.REOPEN.target),
            )
            db.execute(
                "INSERT INTO instances(sop_uid, series_uid, study_uid, sop_class, transfer_syntax,"
                " path, size, received_at, association) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(sop_uid) DO UPDATE SET series_uid = excluded.series_uid,"
                " study_uid = excluded.study_uid, sop_class = excluded.sop_class,"
                " transfer_syntax = excluded.transfer_syntax, path = excluded.path,"
                " size = excluded.size, received_at = excluded.received_at,"
                " association = excluded.association",
                (rec.sop_uid, rec.series_uid, rec.study_uid, rec.sop_class, rec.transfer_syntax,
                 str(rec.path), rec.size, now, assoc_id),
            )
            if old is None:
                db.execute(
                    "UPDATE series SET instance_count = instance_count + 1 WHERE series_uid = ?",
                    (rec.series_uid,),
                )
            elif old["series_uid"] != rec.series_uid:
                db.execute(
                    "UPDATE series SET instance_count = instance_count + 1 WHERE series_uid = ?",
                    (rec.series_uid,),
                )
                db.execute(
                    "UPDATE series SET instance_count = instance_count - 1 WHERE series_uid = ?",
                    (old["series_uid"],),
                )
            if assoc_id is not None:
                db.execute(
                    "INSERT OR IGNORE INTO association_series(association, series_uid) VALUES (?, ?)",
                    (assoc_id, rec.series_uid),
                )
        return old is None

    # ---- completion and routing ------------------------------------------------------------

    def receiving_series(self) -> list[SeriesRow]:
        return self._series_rows("WHERE s.state = ?", (SeriesState.RECEIVING,))

    def series_of_study(self, study_uid: str) -> list[SeriesRow]:
        return self._series_rows("WHERE s.study_uid = ?", (study_uid,))

    def series(self, series_uid: str) -> SeriesRow | None:
        rows = self._series_rows("WHERE s.series_uid = ?", (series_uid,))
        return rows[0] if rows else None

    def all_series(self) -> list[SeriesRow]:
        return self._series_rows("", ())

    def _series_rows(self, where: str, args: tuple[Any, ...]) -> list[SeriesRow]:
        rows = self._db.execute(
            "SELECT s.*, "
            " (SELECT COUNT(*) FROM association_series x JOIN associations a ON a.id = x.association"
            "   WHERE x.series_uid = s.series_uid AND a.closed_at IS NULL) AS open_associations,"
            " (SELECT MAX(a.closed_at) FROM association_series x JOIN associations a"
            "   ON a.id = x.association WHERE x.series_uid = s.series_uid) AS released_at"
            f" FROM series s {where} ORDER BY s.first_received",
            args,
        ).fetchall()
        return [
            SeriesRow(
                series_uid=r["series_uid"], study_uid=r["study_uid"], modality=r["modality"],
                state=SeriesState(r["state"]), generation=r["generation"], instance_count=r["instance_count"],
                first_received=r["first_received"], last_received=r["last_received"],
                sample_path=Path(r["sample_path"]), open_associations=r["open_associations"],
                released_at=r["released_at"],
            )
            for r in rows
        ]

    def mark_complete(self, series_uid: str, generation: int) -> bool:
        """receiving -> complete, unless an instance arrived since the decision was taken."""
        with self._tx() as db:
            return states.apply(db, states.SERIES, states.COMPLETE, series_uid,
                                {"completed_at": time.time()}, extra_where="generation = ?",
                                extra_args=(generation,)) == 1

    def complete_series(self) -> list[SeriesRow]:
        return self._series_rows("WHERE s.state = ?", (SeriesState.COMPLETE,))

    def route_series(self, series_uid: str, generation: int, jobs: Sequence[JobSpec]) -> None:
        """complete -> routed and the jobs it needs, in one transaction."""
        with self._tx() as db:
            for job in jobs:
                self._insert_job(db, job)
            states.apply(db, states.SERIES, states.ROUTE, series_uid, {},
                         extra_where="generation = ?", extra_args=(generation,))

    def set_aside_series(self, series_uid: str, generation: int, reason: str) -> None:
        """A series the scheduler cannot complete or route leaves the queue (state ``routed``,
        no jobs) with the reason recorded; a late instance re-opens it for another try."""
        with self._tx() as db:
            states.apply(db, states.SERIES, states.SET_ASIDE, series_uid, {},
                         extra_where="generation = ?", extra_args=(generation,))
            self._insert_problem(db, "series", series_uid, generation, reason)

    def record_problem(self, kind: str, subject: str, generation: int, reason: str) -> None:
        with self._tx() as db:
            self._insert_problem(db, kind, subject, generation, reason)

    @staticmethod
    def _insert_problem(db: sqlite3.Connection, kind: str, subject: str, generation: int,
                        reason: str) -> None:
        db.execute(
            "INSERT INTO problems(kind, subject, generation, reason, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(kind, subject, generation) DO UPDATE SET reason = excluded.reason,"
            " at = excluded.at",
            (kind, subject, generation, reason[:2000], time.time()),
        )

    def has_problem(self, kind: str, subject: str, generation: int) -> bool:
        return self._db.execute(
            "SELECT 1 FROM problems WHERE kind = ? AND subject = ? AND generation = ?",
            (kind, subject, generation),
        ).fetchone() is not None

    def problems(self) -> list[Problem]:
        rows = self._db.execute(
            "SELECT kind, subject, generation, reason, at FROM problems ORDER BY at").fetchall()
        return [Problem(**dict(r)) for r in rows]

    def add_job(self, job: JobSpec) -> bool:
        with self._tx() as db:
            return self._insert_job(db, job)

    def _insert_job(self, db: sqlite3.Connection, job: JobSpec) -> bool:
        now = time.time()
        cur = db.execute(
            "INSERT OR IGNORE INTO jobs(route, pipeline, subject, study_uid, generation, inputs,"
            " destinations, priority, state, outcome, created_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.route, job.pipeline, job.subject, job.study_uid, job.generation,
             json.dumps(job.inputs), json.dumps(job.destinations), job.priority,
             states.JOBS.check_initial(job.state), job.outcome, now,
             now if job.state == JobState.FAILED else None),
        )
        return cur.rowcount == 1

    def has_job(self, route: str, subject: str, generation: int | None = None) -> bool:
        if generation is None:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE route = ? AND subject = ?", (route, subject)
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE route = ? AND subject = ? AND generation = ?",
                (route, subject, generation),
            ).fetchone()
        return row is not None

    def studies_with_activity_since(self, since: float) -> list[tuple[str, float]]:
        rows = self._db.execute(
            "SELECT study_uid, last_received FROM studies WHERE last_received >= ?", (since,)
        ).fetchall()
        return [(r["study_uid"], r["last_received"]) for r in rows]

    def instance_paths(self, series_uid: str) -> list[Path]:
        rows = self._db.execute(
            "SELECT path FROM instances WHERE series_uid = ? ORDER BY path", (series_uid,)
        ).fetchall()
        return [Path(r["path"]) for r in rows]

    def arrival_times(self, series_uid: str) -> list[float]:
        rows = self._db.execute(
            "SELECT received_at FROM instances WHERE series_uid = ? ORDER BY received_at", (series_uid,)
        ).fetchall()
        return [float(r["received_at"]) for r in rows]

    def studies(self) -> list[tuple[str, float]]:
        """(StudyInstanceUID, last instance received) of every study the index holds, newest first."""
        rows = self._db.execute("SELECT study_uid, last_received FROM studies ORDER BY last_received DESC")
        return [(r["study_uid"], r["last_received"]) for r in rows.fetchall()]

    # ---- forced completion -----------------------------------------------------------------

    def force_series_complete(self, series_uid: str) -> bool:
        """receiving -> complete now, on the administrator's word (``radnode complete``)."""
        with self._tx() as db:
            return states.apply(db, states.SERIES, states.COMPLETE, series_uid,
                                {"completed_at": time.time()}) == 1

    def force_study(self, study_uid: str) -> int:
        """Complete every receiving series of a study and let its study routes decide now, as if
        their timeout had passed; returns how many series were still receiving."""
        now = time.time()
        with self._tx() as db:
            count = states.apply(db, states.SERIES, states.COMPLETE, None, {"completed_at": now},
                                 extra_where="study_uid = ?", extra_args=(study_uid,))
            db.execute("INSERT INTO forced_studies(study_uid, forced_at) VALUES (?, ?)"
                       " ON CONFLICT(study_uid) DO UPDATE SET forced_at = excluded.forced_at",
                       (study_uid, now))
        return count

    def forced_at(self, study_uid: str) -> float | None:
        row = self._db.execute("SELECT forced_at FROM forced_studies WHERE study_uid = ?",
                               (study_uid,)).fetchone()
        return None if row is None else float(row["forced_at"])

    # ---- notes: why a route did not run ----------------------------------------------------

    def add_note(self, route: str, subject: str, study_uid: str, generation: int, note: str) -> bool:
        """Record once why ``route`` did not run for ``subject`` at ``generation``."""
        with self._tx() as db:
            return db.execute(
                "INSERT OR IGNORE INTO route_notes(route, subject, study_uid, generation, note,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (route, subject, study_uid, generation, note, time.time()),
            ).rowcount == 1

    def notes(self) -> list[RouteNote]:
        rows = self._db.execute("SELECT * FROM route_notes ORDER BY created_at").fetchall()
        return [RouteNote(**dict(r)) for r in rows]

    # ---- superseded results ----------------------------------------------------------------

    def latest_job(self, route: str, subject: str, before: int | None = None) -> Job | None:
        """The newest job of a route for a subject (older than job ``before`` when given)."""
        sql, args = "WHERE route = ? AND subject = ?", (route, subject)
        if before is not None:
            sql, args = sql + " AND id < ?", (*args, before)
        jobs = self._jobs(sql, args)
        return jobs[-1] if jobs else None

    def predecessor(self, job: Job) -> tuple[int, list[ResultObject]] | None:
        """The newest earlier job of the same route and subject that produced results: the answer
        that ``job`` replaces. None for a first answer."""
        row = self._db.execute(
            "SELECT j.id FROM jobs j WHERE j.route = ? AND j.subject = ? AND j.id < ?"
            " AND j.state = ? AND EXISTS (SELECT 1 FROM result_objects o WHERE o.job_id = j.id)"
            " ORDER BY j.id DESC LIMIT 1",
            (job.route, job.subject, job.id, JobState.DONE),
        ).fetchone()
        return None if row is None else (int(row["id"]), self.result_objects(int(row["id"])))

    def result_objects(self, job_id: int) -> list[ResultObject]:
        rows = self._db.execute(
            "SELECT sop_uid, sop_class, series_uid, study_uid FROM result_objects WHERE job_id = ?"
            " ORDER BY sop_uid", (job_id,)).fetchall()
        return [ResultObject(**dict(r)) for r in rows]

    @staticmethod
    def _record_lineage(db: sqlite3.Connection, job_id: int, lineage: Lineage) -> None:
        """The result objects are kept after retention removes the files (a few rows per job), so
        that a later run can still name what it replaces."""
        db.execute("DELETE FROM result_objects WHERE job_id = ?", (job_id,))
        db.executemany(
            "INSERT INTO result_objects(job_id, sop_uid, sop_class, series_uid, study_uid)"
            " VALUES (?, ?, ?, ?, ?)",
            [(job_id, o.sop_uid, o.sop_class, o.series_uid, o.study_uid) for o in lineage.objects],
        )
        if lineage.replaces is not None:
            db.execute("INSERT INTO supersessions(job_id, replaces, version) VALUES (?, ?, ?)"
                       " ON CONFLICT(job_id) DO UPDATE SET replaces = excluded.replaces,"
                       " version = excluded.version", (job_id, lineage.replaces, lineage.version))

    def supersessions(self) -> dict[int, tuple[int, int]]:
        """{job: (the job it replaces, its version number)}."""
        rows = self._db.execute("SELECT job_id, replaces, version FROM supersessions").fetchall()
        return {r["job_id"]: (r["replaces"], r["version"]) for r in rows}

    def version(self, job_id: int) -> int:
        """1 for a first answer, n + 1 for one that replaces version n."""
        row = self._db.execute("SELECT version FROM supersessions WHERE job_id = ?", (job_id,)).fetchone()
        return 1 if row is None else int(row["version"])

    def instance(self, sop_uid: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return dict(row) if row else None

    def count_instances(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    # ---- jobs ------------------------------------------------------------------------------

    def claim_job(self, pid: int | None, timeout: float) -> Job | None:
        """Start a new attempt of the most urgent queued job, or None; ``pid`` is the worker
        process that runs it when known now (a local executor's worker records it on start)."""
        now = time.time()
        with self._tx() as db:
            # A rerun waits for the earlier job of its route and subject, so that it can name
            # that job's results as the ones it replaces.
            row = db.execute(
                "SELECT id FROM jobs q WHERE state = ? AND NOT EXISTS (SELECT 1 FROM jobs p"
                " WHERE p.route = q.route AND p.subject = q.subject AND p.id < q.id"
                " AND p.state IN (?, ?)) ORDER BY priority DESC, id LIMIT 1",
                (JobState.QUEUED, *_UNFINISHED),
            ).fetchone()
            if row is None:
                return None
            states.apply(db, states.JOBS, states.CLAIM, row["id"], {
                "started_at": now, "deadline": now + timeout, "worker_pid": pid,
                "attempts": states.Sql("attempts + 1")})
        return self.job(row["id"])

    def attempt_started(self, job_id: int, attempt: int, pid: int) -> bool:
        """The worker process ``pid`` holds this attempt now; False: it is no longer current."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.START, job_id, {"worker_pid": pid},
                                   states.Fence(attempt)) == 1

    def finish_job(self, job_id: int, results: Sequence[ResultFile], outcome: str,
                   summary: dict[str, Any] | None = None, *, attempt: int,
                   lineage: Lineage | None = None) -> bool:
        """running -> done, with its result files, their lineage (what they replace), the
        pipeline's summary and one delivery per destination, all in one transaction. Only the
        result of the current ``attempt`` is taken: False means a later attempt owns the job (or
        it ended) and nothing was written."""
        now = time.time()
        with self._tx() as db:
            job = db.execute("SELECT destinations FROM jobs WHERE id = ?", (job_id,)).fetchone()
            moved = states.apply(db, states.JOBS, states.FINISH, job_id, {
                "outcome": outcome, "finished_at": now,
                "summary": json.dumps(summary or {}, default=str)}, states.Fence(attempt))
            if not moved:
                return False
            if lineage is not None:
                self._record_lineage(db, job_id, lineage)
            db.execute("DELETE FROM results WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO results(job_id, path, sop_uid, sop_class, transfer_syntax) VALUES (?, ?, ?, ?, ?)",
                [(job_id, str(r.path), r.sop_uid, r.sop_class, r.transfer_syntax) for r in results],
            )
            if results:
                db.executemany(
                    "INSERT OR IGNORE INTO deliveries(job_id, destination, state, next_attempt_at,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    [(job_id, dest, states.DELIVERIES.check_initial(DeliveryState.PENDING), now, now)
                     for dest in json.loads(job["destinations"])],
                )
        return True

    def fail_job(self, job_id: int, reason: str, only_if_pid: int | None = None,
                 traceback: str = "", *, attempt: int) -> bool:
        """running -> failed for ``attempt`` (and, with ``only_if_pid``, only while that worker
        holds it): a late failure of an attempt the node already ended changes nothing."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.FAIL, job_id, {
                "outcome": reason, "finished_at": time.time(), "traceback": traceback},
                states.Fence(attempt, only_if_pid)) == 1

    def hand_back_job(self, job_id: int, attempt: int, reason: str, lost: bool) -> bool:
        """running -> queued for a new attempt; ``lost``: the attempt died with the machine that
        ran it and counts against the job's retries (a cluster that could not be reached before
        the attempt ran does not). The reason stays in ``outcome`` until the next attempt ends."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.HAND_BACK, job_id, {
                "outcome": reason, "worker_pid": None, "deadline": None,
                "lost_attempts": states.Sql(f"lost_attempts + {int(lost)}")},
                states.Fence(attempt)) == 1

    def requeue_running_jobs(self, worker_pids: Sequence[int] | None = None) -> int:
        """Running jobs whose worker is gone (every one, at start) are queued to run again."""
        with self._tx() as db:
            extra, args = "", ()
            if worker_pids is not None:
                extra = f"worker_pid IN ({','.join('?' * len(worker_pids))})"
                args = tuple(worker_pids)
            return states.apply(db, states.JOBS, states.HAND_BACK, None,
                                   {"worker_pid": None, "deadline": None}, states.Fence(),
                                   extra, args)

    def requeue_job(self, job_id: int) -> bool:
        """A failed job (after a fix on the site, say) is queued again on the admin's request."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.REQUEUE, job_id, {
                "outcome": "", "traceback": "", "worker_pid": None, "deadline": None}) == 1

    def cancel_job(self, job_id: int) -> bool:
        """A queued job the administrator does not want run ends as failed, with the reason on
        record (the schema's states stay the four the design names); ``requeue_job`` undoes it."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.CANCEL, job_id, {
                "outcome": "cancelled by the administrator", "finished_at": time.time()}) == 1

    def overdue_jobs(self, now: float) -> list[Job]:
        return self._jobs("WHERE state = ? AND deadline < ?", (JobState.RUNNING, now))

    def running_jobs(self) -> list[Job]:
        return self._jobs("WHERE state = ?", (JobState.RUNNING,))

    def job(self, job_id: int) -> Job | None:
        jobs = self._jobs("WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def jobs(self, state: JobState | None = None) -> list[Job]:
        return self._jobs("WHERE state = ?", (state,)) if state else self._jobs("", ())

    def jobs_finished_since(self, since: float) -> list[Job]:
        """Jobs that ended (done or failed) after ``since``: the overview's job-time chart."""
        return self._jobs("WHERE finished_at >= ?", (since,))

    def _jobs(self, where: str, args: tuple[Any, ...]) -> list[Job]:
        rows = self._db.execute(f"SELECT * FROM jobs {where} ORDER BY id", args).fetchall()
        return [
            Job(**{**dict(r), "state": JobState(r["state"]), "inputs": json.loads(r["inputs"]),
                   "destinations": json.loads(r["destinations"]), "summary": json.loads(r["summary"])})
            for r in rows
        ]

    def results(self, job_id: int) -> list[ResultFile]:
        rows = self._db.execute(
            "SELECT path, sop_uid, sop_class, transfer_syntax FROM results WHERE job_id = ? ORDER BY path",
            (job_id,)).fetchall()
        return [ResultFile(Path(r["path"]), r["sop_uid"], r["sop_class"], r["transfer_syntax"]) for r in rows]

    # ---- deliveries ------------------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        return self._deliveries(
            "WHERE state IN (?, ?) AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?",
            (DeliveryState.PENDING, DeliveryState.RETRYING, now, limit),
        )

    def deliveries(self, state: DeliveryState | None = None) -> list[Delivery]:
        if state:
            return self._deliveries("WHERE state = ? ORDER BY id", (state,))
        return self._deliveries("ORDER BY id", ())

    def _deliveries(self, tail: str, args: tuple[Any, ...]) -> list[Delivery]:
        rows = self._db.execute(f"SELECT * FROM deliveries {tail}", args).fetchall()
        return [Delivery(**{**dict(r), "state": DeliveryState(r["state"])}) for r in rows]

    def delivery_sent(self, delivery_id: int) -> None:
        with self._tx() as db:
            states.apply(db, states.DELIVERIES, states.SEND, delivery_id, {
                "sent_at": time.time(), "attempts": states.Sql("attempts + 1"), "last_error": ""})

    def delivery_failed(self, delivery_id: int, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` means give up (dead)."""
        with self._tx() as db:
            values: dict[str, Any] = {"attempts": states.Sql("attempts + 1"), "last_error": error}
            if next_attempt_at is None:
                states.apply(db, states.DELIVERIES, states.GIVE_UP, delivery_id, values)
            else:
                states.apply(db, states.DELIVERIES, states.RETRY_LATER, delivery_id,
                             {**values, "next_attempt_at": next_attempt_at})

    def retry_dead_deliveries(self, delivery_id: int | None = None) -> int:
        with self._tx() as db:
            now = time.time()
            return states.apply(db, states.DELIVERIES, states.RETRY_DEAD, delivery_id, {
                "attempts": 0, "next_attempt_at": now, "retry_from": now})

    # ---- monitoring ------------------------------------------------------------------------

    def state_counts(self) -> dict[str, dict[str, int]]:
        """{table: {state: rows}} for series, jobs and deliveries: the node's work at a glance."""
        counts: dict[str, dict[str, int]] = {}
        for table in ("series", "jobs", "deliveries"):
            rows = self._db.execute(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state").fetchall()
            counts[table] = {r["state"]: r["n"] for r in rows}
        return counts

    def arrivals_since(self, since: float) -> list[float]:
        """Receive times of the instances that arrived after ``since`` (the overview's throughput)."""
        rows = self._db.execute("SELECT received_at FROM instances WHERE received_at >= ? ORDER BY received_at",
                                (since,)).fetchall()
        return [float(r[0]) for r in rows]

    def job_seconds(self) -> dict[str, tuple[int, float]]:
        """{pipeline: (finished jobs, their total seconds from queued to done)}."""
        rows = self._db.execute(
            "SELECT pipeline, COUNT(*) AS n, SUM(finished_at - created_at) AS total FROM jobs"
            " WHERE state = ? GROUP BY pipeline", (JobState.DONE,)
        ).fetchall()
        return {r["pipeline"]: (r["n"], float(r["total"] or 0.0)) for r in rows}

    # ---- retention -------------------------------------------------------------------------

    def settled_studies(self, received_before: float) -> list[str]:
        """Studies quiet since ``received_before`` whose every series is routed and every job
        has ended: nothing in the node will read their instances again."""
        rows = self._db.execute(
            "SELECT st.study_uid FROM studies st WHERE st.last_received < ?"
            " AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = st.study_uid"
            "                 AND s.state != ?)"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = st.study_uid"
            "                 AND j.state IN (?, ?))",
            (received_before, SeriesState.ROUTED, *_UNFINISHED),
        ).fetchall()
        return [r["study_uid"] for r in rows]

    def study_files(self, study_uid: str) -> list[Path]:
        return [Path(r["path"]) for r in self._db.execute(
            "SELECT path FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()]

    def forget_study(self, study_uid: str) -> None:
        """Drop a study's instances and series from the index.

        Retention removes the files first and the rows after: a crash in between leaves rows
        that the next sweep removes, never unreferenced files, which ``node.reconcile`` would
        take for received instances whose rows a power cut lost and route again.
        """
        with self._tx() as db:
            db.execute("DELETE FROM association_series WHERE series_uid IN"
                       " (SELECT series_uid FROM series WHERE study_uid = ?)", (study_uid,))
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM forced_studies WHERE study_uid = ?", (study_uid,))

    def indexed_files(self) -> set[str]:
        return {r["path"] for r in self._db.execute("SELECT path FROM instances").fetchall()}

    def state(self, key: str) -> str | None:
        """A value the node keeps about itself between runs (see ``set_state``)."""
        row = self._db.execute("SELECT value FROM node_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_state(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO node_state(key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def delivered_jobs(self, finished_before: float) -> list[int]:
        """Jobs finished before the cut-off with results that every destination has received."""
        rows = self._db.execute(
            "SELECT j.id FROM jobs j WHERE j.finished_at < ? AND j.state = ?"
            " AND EXISTS (SELECT 1 FROM results r WHERE r.job_id = j.id)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.state != ?)",
            (finished_before, JobState.DONE, DeliveryState.SENT),
        ).fetchall()
        return [r["id"] for r in rows]

    def forget_results(self, job_id: int) -> None:
        """The job and its deliveries stay as history; only the result files' rows go."""
        with self._tx() as db:
            db.execute("DELETE FROM results WHERE job_id = ?", (job_id,))


def _restrict(path: Path) -> None:
    """Create the index (and chmod an older one) owner-only before SQLite opens it: SQLite gives
    its -wal and -shm files the database file's mode. An index this user does not own (an
    administrator reading another account's node) is left as it is."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, INDEX_MODE))
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists() and name.stat().st_mode & 0o777 != INDEX_MODE:
                os.chmod(name, INDEX_MODE)
    except PermissionError:
        pass
