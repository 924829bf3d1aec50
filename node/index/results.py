"""Results and their deliveries: the files a job produced, what they replace, and each
destination's delivery (``node.index.states`` holds the delivery machine)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.index import states
from node.index.db import Database, Listing
from node.index.states import DeliveryState


@dataclass(frozen=True)
class ResultFile:
    """A result file to deliver, with what its writer knew of it (the dispatcher offers its SOP
    class and transfer syntax without opening it)."""

    path: Path
    sop_uid: str
    sop_class: str
    #: "": not known (a row an older radnode wrote): the dispatcher reads the file's meta
    transfer_syntax: str = ""


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
    ``node.run.lineage`` works them out; recorded with the job's end, in its transaction."""

    objects: Sequence[ResultObject]
    replaces: int | None = None
    version: int | None = None


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


def record_results(db: sqlite3.Connection, job_id: int, results: Sequence[ResultFile],
                   destinations: Sequence[str], lineage: Lineage | None, now: float) -> None:
    """A finished job's result files, their lineage and one pending delivery per destination,
    inside the caller's transaction (the job's end)."""
    if lineage is not None:
        _record_lineage(db, job_id, lineage)
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
             for dest in destinations],
        )


def result_objects(db: sqlite3.Connection, job_id: int) -> list[ResultObject]:
    rows = db.execute(
        "SELECT sop_uid, sop_class, series_uid, study_uid FROM result_objects WHERE job_id = ?"
        " ORDER BY sop_uid", (job_id,)).fetchall()
    return [ResultObject(**dict(r)) for r in rows]


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


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try of a delivery ("" error: sent). Kept across ``radnode retry``, which starts the
    delivery's count and window again, so that its history says what happened before."""

    at: float
    error: str


def _note_attempt(db: sqlite3.Connection, delivery_id: int, error: str) -> None:
    db.execute("INSERT INTO delivery_attempts(delivery_id, at, error) VALUES (?, ?, ?)",
               (delivery_id, time.time(), error[:500]))


@dataclass(frozen=True)
class DestinationCheck:
    """What the node last learnt of a destination, by a C-ECHO or a delivery: ``/health`` and the
    overview say from it whether the PACS is reachable, without trying it at request time."""

    destination: str
    ok: bool
    detail: str
    at: float
    #: when the current run of failures began (None while it answers)
    failing_since: float | None


class ResultIndex(Database):
    """Result files, what they replace, and the delivery machine."""

    def results(self, job_id: int) -> list[ResultFile]:
        rows = self._db.execute(
            "SELECT path, sop_uid, sop_class, transfer_syntax FROM results WHERE job_id = ? ORDER BY path",
            (job_id,)).fetchall()
        return [ResultFile(Path(r["path"]), r["sop_uid"], r["sop_class"], r["transfer_syntax"]) for r in rows]

    def result_objects(self, job_id: int) -> list[ResultObject]:
        return result_objects(self._db, job_id)

    def supersessions(self) -> dict[int, tuple[int, int]]:
        """{job: (the job it replaces, its version number)}."""
        rows = self._db.execute("SELECT job_id, replaces, version FROM supersessions").fetchall()
        return {r["job_id"]: (r["replaces"], r["version"]) for r in rows}

    def version(self, job_id: int) -> int:
        """1 for a first answer, n + 1 for one that replaces version n."""
        row = self._db.execute("SELECT version FROM supersessions WHERE job_id = ?", (job_id,)).fetchone()
        return 1 if row is None else int(row["version"])

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

    def deliveries_page(self, listing: Listing) -> list[Delivery]:
        """One page of deliveries, newest first (``Listing``; deliveries have no pipeline)."""
        tail, args = listing.page(pipeline_column=False)
        return self._deliveries(tail, args)

    def count_deliveries(self, listing: Listing) -> int:
        where, args = replace(listing, before_id=None).where(pipeline_column=False)
        return int(self._db.execute(f"SELECT COUNT(*) FROM deliveries {where}", args).fetchone()[0])

    def deliveries_of(self, job_id: int) -> list[Delivery]:
        """One job's deliveries (its page and ``radnode jobs --id``), through their unique key."""
        return self._deliveries("WHERE job_id = ? ORDER BY id", (job_id,))

    def record_destination_check(self, destination: str, ok: bool, detail: str) -> None:
        """The latest echo or delivery outcome of ``destination``; a failure keeps the time the
        failures began, so that people read how long the PACS has been unreachable."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO destination_checks(destination, ok, detail, at, failing_since)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(destination) DO UPDATE SET ok = excluded.ok,"
                " detail = excluded.detail, at = excluded.at,"
                " failing_since = CASE WHEN excluded.ok THEN NULL"
                " ELSE COALESCE(destination_checks.failing_since, excluded.at) END",
                (destination, int(ok), detail[:500], now, None if ok else now))

    def destination_checks(self) -> dict[str, DestinationCheck]:
        rows = self._db.execute("SELECT * FROM destination_checks").fetchall()
        return {r["destination"]: DestinationCheck(**{**dict(r), "ok": bool(r["ok"])}) for r in rows}

    def delivery_attempts(self, delivery_id: int) -> list[DeliveryAttempt]:
        rows = self._db.execute("SELECT at, error FROM delivery_attempts WHERE delivery_id = ? ORDER BY at",
                                (delivery_id,)).fetchall()
        return [DeliveryAttempt(r["at"], r["error"]) for r in rows]

    def delivery(self, delivery_id: int) -> Delivery | None:
        found = self._deliveries("WHERE id = ?", (delivery_id,))
        return found[0] if found else None

    def _deliveries(self, tail: str, args: tuple[Any, ...]) -> list[Delivery]:
        rows = self._db.execute(f"SELECT * FROM deliveries {tail}", args).fetchall()
        return [Delivery(**{**dict(r), "state": DeliveryState(r["state"])}) for r in rows]

    def mark_delivery_sent(self, delivery_id: int) -> None:
        with self._tx() as db:
            _note_attempt(db, delivery_id, "")
            states.apply(db, states.DELIVERIES, states.SEND, delivery_id, {
                "sent_at": time.time(), "attempts": states.Sql("attempts + 1"), "last_error": ""})

    def mark_delivery_failed(self, delivery_id: int, error: str, next_attempt_at: float | None) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` means give up (dead)."""
        with self._tx() as db:
            _note_attempt(db, delivery_id, error)
            values: dict[str, Any] = {"attempts": states.Sql("attempts + 1"), "last_error": error}
            if next_attempt_at is None:
                states.apply(db, states.DELIVERIES, states.GIVE_UP, delivery_id, values)
            else:
                states.apply(db, states.DELIVERIES, states.RETRY_LATER, delivery_id,
                             {**values, "next_attempt_at": next_attempt_at})

    def retry_dead_deliveries(self, delivery_id: int | None = None) -> int:
        with self._tx() as db:
            now = time.time()
            retried = states.apply(db, states.DELIVERIES, states.RETRY_DEAD, delivery_id, {
                "attempts": 0, "next_attempt_at": now, "retry_from": now})
        self._ring("deliveries")
        return retried
