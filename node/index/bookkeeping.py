"""Bookkeeping: what the node notes for people (why a route did not run, what a loop set aside),
what it keeps about itself between runs, and the counts that monitoring shows."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from node.index.db import Database
from node.index.states import MACHINES, JobState


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


def insert_problem(db: sqlite3.Connection, kind: str, subject: str, generation: int, reason: str) -> None:
    """Set an item aside with its reason, inside the caller's transaction."""
    db.execute(
        "INSERT INTO problems(kind, subject, generation, reason, at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(kind, subject, generation) DO UPDATE SET reason = excluded.reason,"
        " at = excluded.at",
        (kind, subject, generation, reason[:2000], time.time()),
    )


class Bookkeeping(Database):
    """Notes, set-aside problems, the node's own values and the counts monitoring shows."""

    def record_problem(self, kind: str, subject: str, generation: int, reason: str) -> None:
        with self._tx() as db:
            insert_problem(db, kind, subject, generation, reason)

    def has_problem(self, kind: str, subject: str, generation: int) -> bool:
        return self._db.execute(
            "SELECT 1 FROM problems WHERE kind = ? AND subject = ? AND generation = ?",
            (kind, subject, generation),
        ).fetchone() is not None

    def problems(self) -> list[Problem]:
        rows = self._db.execute(
            "SELECT kind, subject, generation, reason, at FROM problems ORDER BY at").fetchall()
        return [Problem(**dict(r)) for r in rows]

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

    def node_value(self, key: str) -> str | None:
        """A value the node keeps about itself between runs (see ``set_node_value``)."""
        row = self._db.execute("SELECT value FROM node_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_node_value(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO node_state(key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def state_counts(self) -> dict[str, dict[str, int]]:
        """{table: {state: rows}} for series, jobs and deliveries: the node's work at a glance."""
        counts: dict[str, dict[str, int]] = {}
        for machine in MACHINES:
            rows = self._db.execute(f"SELECT state, COUNT(*) AS n FROM {machine.table} GROUP BY state").fetchall()
            counts[machine.table] = {r["state"]: r["n"] for r in rows}
        return counts

    def arrivals_since(self, since: float) -> list[float]:
        """Receive times of the instances that arrived after ``since`` (the overview's throughput)."""
        rows = self._db.execute("SELECT received_at FROM instances WHERE received_at >= ? ORDER BY received_at",
                                (since,)).fetchall()
        return [float(r[0]) for r in rows]

    def requeued_at(self) -> dict[int, float]:
        """{job: when it was last queued again} for jobs handed back or retried (a trigger of the
        schema notes it): their queue time starts there, not at their creation."""
        rows = self._db.execute("SELECT job_id, queued_at FROM jobs_requeued").fetchall()
        return {int(r["job_id"]): float(r["queued_at"]) for r in rows}

    def job_seconds(self) -> dict[str, tuple[int, float]]:
        """{pipeline: (finished jobs, their total seconds from last queued to done)}."""
        rows = self._db.execute(
            "SELECT pipeline, COUNT(*) AS n, SUM(finished_at - COALESCE(q.queued_at, created_at)) AS total"
            " FROM jobs LEFT JOIN jobs_requeued q ON q.job_id = jobs.id"
            " WHERE state = ? GROUP BY pipeline", (JobState.DONE,)
        ).fetchall()
        return {r["pipeline"]: (r["n"], float(r["total"] or 0.0)) for r in rows}
