"""Jobs in the index: creating them, their attempts along the job machine (``node.index.states``),
and reading them back."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from node.index import states
from node.index.db import Database, Listing
from node.index.results import Lineage, ResultFile, ResultObject, record_results, result_objects
from node.index.states import JobState
from pipelines.base import JobSummary

#: a job that has not ended: a rerun of its route and subject waits, its study is not settled
UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
#: the lanes of the queue: a job of a study a backfill retrieved waits for every live job
LIVE, BACKFILL = "live", "backfill"


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


@dataclass(frozen=True, kw_only=True)
class Job(JobSpec):
    """A job as the index holds it: its spec and where its attempts stand."""

    id: int
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    deadline: float | None
    worker_pid: int | None
    #: Python traceback of a failed job (file, line), for the developer who fixes it.
    traceback: str = ""
    #: the pipeline's JobResult.summary as stored (``JobSummary.from_stored``): the model, stage
    #: timings, and the pipeline's own keys in ``details``.
    summary: JobSummary = field(default_factory=JobSummary)
    #: attempts lost with the machine or process that ran them (not the job's fault); a job is
    #: failed when these reach ``[workers.ray] max_attempts`` (``node.index.states``).
    lost_attempts: int = 0
    #: when the process holding the running attempt last said it is alive (``beat``); the
    #: claim and the start count as beats, so an attempt nobody took goes stale too.
    heartbeat_at: float | None = None
    #: ``live`` or ``backfill``: which lane of the queue it waits in
    lane: str = LIVE


def insert_job(db: sqlite3.Connection, job: JobSpec) -> bool:
    """Create a job (once per route, subject and generation) inside the caller's transaction;
    a job of a study that a backfill retrieves goes in the backfill lane."""
    now = time.time()
    cur = db.execute(
        "INSERT OR IGNORE INTO jobs(route, pipeline, subject, study_uid, generation, inputs,"
        " destinations, priority, state, outcome, created_at, finished_at, lane)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN EXISTS (SELECT 1 FROM backfill_studies"
        " WHERE study_uid = ?) THEN ? ELSE ? END)",
        (job.route, job.pipeline, job.subject, job.study_uid, job.generation,
         json.dumps(job.inputs), json.dumps(job.destinations), job.priority,
         states.JOBS.check_initial(job.state), job.outcome, now,
         now if job.state == JobState.FAILED else None, job.study_uid, BACKFILL, LIVE),
    )
    return cur.rowcount == 1


class JobIndex(Database):
    """Jobs and the job machine's transitions of their attempts."""

    def add_job(self, job: JobSpec) -> bool:
        with self._tx() as db:
            added = insert_job(db, job)
        if added:
            self._ring("jobs")
        return added

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

    def claim_job(self, pid: int | None, timeout: float, *, backfill: bool = True) -> Job | None:
        """Start a new attempt of the most urgent queued job, or None; ``pid`` is the worker
        process that runs it when known now (a local executor's worker records it on start).
        Live jobs come before every backfill job; ``backfill=False`` (outside ``[backfill]
        hours``) leaves the backfill lane waiting."""
        now = time.time()
        with self._tx() as db:
            # A rerun waits for the earlier job of its route and subject, so that it can name
            # that job's results as the ones it replaces. "+p.state" keeps SQLite from looking
            # that job up through the state index (every queued job, for each queued job: 1.5 s a
            # claim with 3,000 queued, measured) instead of the (route, subject) one (2 ms).
            row = db.execute(
                "SELECT id FROM jobs q WHERE state = ? AND (lane = ? OR ?) AND NOT EXISTS (SELECT 1 FROM jobs p"
                " WHERE p.route = q.route AND p.subject = q.subject AND p.id < q.id"
                " AND +p.state IN (?, ?)) ORDER BY lane = ?, priority DESC, id LIMIT 1",
                (JobState.QUEUED, LIVE, backfill, *UNFINISHED, BACKFILL),
            ).fetchone()
            if row is None:
                return None
            states.apply(db, states.JOBS, states.CLAIM, row["id"], {
                "started_at": now, "deadline": now + timeout, "worker_pid": pid,
                "heartbeat_at": now, "attempts": states.Sql("attempts + 1")})
        return self.job(row["id"])

    def start_attempt(self, job_id: int, attempt: int, pid: int) -> bool:
        """The worker process ``pid`` holds this attempt now; False: it is no longer current.

        The attempt's timeout counts from now: the time it waited for a worker (one replacing a
        killed worker loads its pipelines first) is not held against the run, as on Ray
        (``restart_deadline``)."""
        now = time.time()
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.START, job_id,
                                {"worker_pid": pid, "heartbeat_at": now,
                                 "deadline": states.Sql(f"deadline - started_at + {now!r}")},
                                states.Fence(attempt)) == 1

    def beat(self, job_id: int, attempt: int, pid: int) -> bool:
        """The worker process ``pid`` still holds this attempt and is alive; False: the
        attempt is no longer current or no longer its."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.START, job_id, {"heartbeat_at": time.time()},
                                states.Fence(attempt, pid)) == 1

    def restart_deadline(self, job_id: int, attempt: int, timeout: float) -> bool:
        """The attempt's timeout counts from now: its runner became ready (a Ray actor that
        started and loaded its pipeline), so waiting for it is not held against the run."""
        with self._tx() as db:
            return states.apply(db, states.JOBS, states.START, job_id, {"deadline": time.time() + timeout},
                                states.Fence(attempt)) == 1

    def stalled_jobs(self, before: float) -> list[Job]:
        """Running attempts whose holder has not beaten since ``before``: dead or wedged."""
        return self._jobs("WHERE state = ? AND heartbeat_at < ?", (JobState.RUNNING, before))

    def finish_job(self, job_id: int, results: Sequence[ResultFile], outcome: str,
                   summary: JobSummary | None = None, *, attempt: int,
                   lineage: Lineage | None = None, destinations: Sequence[str] | None = None) -> bool:
        """running -> done, with its result files, their lineage (what they replace), the
        pipeline's summary and one delivery per destination, all in one transaction. Only the
        result of the current ``attempt`` is taken: False means a later attempt owns the job (or
        it ended) and nothing was written. ``destinations``: which of the job's destinations get
        a delivery (the caller knows which take these results' formats); None: all of them."""
        now = time.time()
        with self._tx() as db:
            job = db.execute("SELECT destinations FROM jobs WHERE id = ?", (job_id,)).fetchone()
            moved = states.apply(db, states.JOBS, states.FINISH, job_id, {
                "outcome": outcome, "finished_at": now,
                "summary": json.dumps(summary.to_stored() if summary is not None else {}, default=str)},
                states.Fence(attempt))
            if not moved:
                return False
            receiving = [name for name in json.loads(job["destinations"])
                         if destinations is None or name in destinations]
            record_results(db, job_id, results, receiving, lineage, now)
        self._ring("deliveries", "jobs")  # its results are due, and its worker is free
        return True

    def fail_job(self, job_id: int, reason: str, only_if_pid: int | None = None,
                 traceback: str = "", *, attempt: int) -> bool:
        """running -> failed for ``attempt`` (and, with ``only_if_pid``, only while that worker
        holds it): a late failure of an attempt the node already ended changes nothing."""
        with self._tx() as db:
            failed = states.apply(db, states.JOBS, states.FAIL, job_id, {
                "outcome": reason, "finished_at": time.time(), "traceback": traceback},
                states.Fence(attempt, only_if_pid)) == 1
        self._ring("jobs")  # its worker is free
        return failed

    def hand_back_job(self, job_id: int, attempt: int, reason: str, lost: bool) -> bool:
        """running -> queued for a new attempt; ``lost``: the attempt died with the machine that
        ran it and counts against the job's retries (a cluster that could not be reached before
        the attempt ran does not). The reason stays in ``outcome`` until the next attempt ends."""
        with self._tx() as db:
            handed_back = states.apply(db, states.JOBS, states.HAND_BACK, job_id, {
                "outcome": reason, "worker_pid": None, "deadline": None,
                "lost_attempts": states.Sql(f"lost_attempts + {int(lost)}")},
                states.Fence(attempt)) == 1
        self._ring("jobs")
        return handed_back

    def requeue_running_jobs(self, worker_pids: Sequence[int] | None = None) -> int:
        """Running jobs whose worker is gone (every one, at start) are queued to run again."""
        with self._tx() as db:
            extra = ""
            args: tuple[int, ...] = ()
            if worker_pids is not None:
                extra = f"worker_pid IN ({','.join('?' * len(worker_pids))})"
                args = tuple(worker_pids)
            return states.apply(db, states.JOBS, states.HAND_BACK, None,
                                {"worker_pid": None, "deadline": None}, states.Fence(), extra, args)

    def requeue_job(self, job_id: int) -> bool:
        """A failed job (after a fix on the site, say) is queued again on the admin's request."""
        with self._tx() as db:
            requeued = states.apply(db, states.JOBS, states.REQUEUE, job_id, {
                "outcome": "", "traceback": "", "worker_pid": None, "deadline": None}) == 1
        self._ring("jobs")
        return requeued

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

    def jobs_page(self, listing: Listing) -> list[Job]:
        """One page of jobs, newest first (``Listing``)."""
        tail, args = listing.page()
        return self._jobs_tail(tail, args)

    def count_jobs(self, listing: Listing) -> int:
        """How many jobs the listing's filters keep, on every page."""
        where, args = replace(listing, before_id=None).where()
        return int(self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0])

    def jobs_finished_since(self, since: float) -> list[Job]:
        """Jobs that ended (done or failed) after ``since``, in the order they ended: the
        overview's job-time chart (through ``jobs_finished``, not the year of jobs before them)."""
        return self._jobs_tail("WHERE finished_at >= ? ORDER BY finished_at, id", (since,))

    def _jobs(self, where: str, args: tuple[Any, ...]) -> list[Job]:
        return self._jobs_tail(f"{where} ORDER BY id", args)

    def _jobs_tail(self, tail: str, args: tuple[Any, ...]) -> list[Job]:
        rows = self._db.execute(f"SELECT * FROM jobs {tail}", args).fetchall()
        return [
            Job(**{**dict(r), "state": JobState(r["state"]), "inputs": json.loads(r["inputs"]),
                   "destinations": json.loads(r["destinations"]),
                   "summary": JobSummary.from_stored(json.loads(r["summary"]))})
            for r in rows
        ]

    def latest_job(self, route: str, subject: str, before: int | None = None) -> Job | None:
        """The newest job of a route for a subject (older than job ``before`` when given)."""
        sql = "WHERE route = ? AND subject = ?"
        args: tuple[Any, ...] = (route, subject)
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
        return None if row is None else (int(row["id"]), result_objects(self._db, int(row["id"])))
