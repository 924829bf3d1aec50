"""The index: every piece of state that must survive a crash, in one SQLite file (WAL mode,
``node.index.db``), split by concern into small classes over one connection: ``SeriesIndex``
(here: instances, series, studies, completion, routing), ``JobIndex``, ``ResultIndex``,
``RetentionIndex``, ``Bookkeeping``, ``NotificationIndex`` and ``BackfillIndex``.

``Index`` is all of them on one connection. A method named for a thing reads
(``series_to_route()``); one named for an action changes state (``route_series()``), and every
change of a series, job or delivery state goes through ``node.index.states.apply``. Rows that
leave the index are typed records (``InstanceRow``, ``SeriesRow``, ``Job``), read by attribute.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.index import states
from node.index.backfills import BackfillIndex
from node.index.bookkeeping import Bookkeeping, Problem, RouteNote, insert_problem
from node.index.db import INDEX_MODE, Database
from node.index.jobs import Job, JobIndex, JobSpec, insert_job
from node.index.notifications import NotificationIndex
from node.index.results import Delivery, Lineage, ResultFile, ResultIndex, ResultObject
from node.index.retention import RetentionIndex
from node.index.states import SeriesState

__all__ = ["INDEX_MODE", "Bookkeeping", "Delivery", "Index", "InstanceRecord", "Job", "JobIndex", "JobSpec",
           "InstanceRow", "Lineage", "Problem", "ResultFile", "ResultIndex", "ResultObject", "RetentionIndex", "RouteNote",
           "SeriesIndex", "SeriesRow"]


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
    def from_header(cls, header: Any, transfer_syntax: str, path: Path, size: int) -> InstanceRecord:
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
class InstanceRow:
    """An indexed instance as the index holds it: where its file lies and when it came."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class: str
    transfer_syntax: str
    path: Path
    size: int
    received_at: float
    #: the association (or STOW-RS request) that brought it; None for one a reconcile re-indexed
    association: str | None


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


class SeriesIndex(Database):
    """Instances as they arrive, their series and studies, and the series machine."""

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
        self._ring("series")  # its series' settle time starts now

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

    def record_instance(self, rec: InstanceRecord, assoc_id: str | None) -> Path | None:
        """Index a stored instance; a SOP Instance UID sent again replaces the earlier copy and
        counts once. Returns the earlier copy's path when it lay elsewhere (another study or
        series): the caller removes that file, so no reconcile keeps two copies. A late instance
        of a complete series re-opens it with a new generation, for its route to decide again."""
        return self.record_instances([(rec, assoc_id)])[0]

    def record_instances(self, rows: Sequence[tuple[InstanceRecord, str | None]]) -> list[Path | None]:
        """``record_instance`` for several instances in one transaction (the receiver's group
        commit): one earlier copy's path, or None, per row."""
        now = time.time()
        with self._tx() as db:
            return [_record(db, rec, assoc_id, now) for rec, assoc_id in rows]

    def oldest_open_association(self, receiver_pids: Sequence[int] | None = None) -> float | None:
        """When the oldest association still open (of these receivers, or of any) was opened."""
        where, args = "", tuple[int, ...]()
        if receiver_pids is not None:
            where, args = f" AND receiver_pid IN ({','.join('?' * len(receiver_pids))})", tuple(receiver_pids)
        row = self._db.execute(f"SELECT MIN(opened_at) FROM associations WHERE closed_at IS NULL{where}",
                               args).fetchone()
        return None if row[0] is None else float(row[0])

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

    def series_to_route(self) -> list[SeriesRow]:
        """Complete series, waiting for the router."""
        return self._series_rows("WHERE s.state = ?", (SeriesState.COMPLETE,))

    def route_series(self, series_uid: str, generation: int, jobs: Sequence[JobSpec]) -> None:
        """complete -> routed and the jobs it needs, in one transaction."""
        with self._tx() as db:
            for job in jobs:
                insert_job(db, job)
            states.apply(db, states.SERIES, states.ROUTE, series_uid, {},
                         extra_where="generation = ?", extra_args=(generation,))
        if jobs:
            self._ring("jobs")

    def set_aside_series(self, series_uid: str, generation: int, reason: str) -> None:
        """A series completion cannot complete or route leaves the queue (state ``routed``,
        no jobs) with the reason recorded; a late instance re-opens it for another try."""
        with self._tx() as db:
            states.apply(db, states.SERIES, states.SET_ASIDE, series_uid, {},
                         extra_where="generation = ?", extra_args=(generation,))
            insert_problem(db, "series", series_uid, generation, reason)

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

    def studies(self, since: float = 0.0) -> list[tuple[str, float]]:
        """(StudyInstanceUID, last instance received) of the studies that received anything at
        or after ``since`` (default: every study the index holds), newest first."""
        rows = self._db.execute("SELECT study_uid, last_received FROM studies WHERE last_received >= ?"
                                " ORDER BY last_received DESC", (since,))
        return [(r["study_uid"], r["last_received"]) for r in rows.fetchall()]

    def instance(self, sop_uid: str) -> InstanceRow | None:
        row = self._db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return None if row is None else InstanceRow(**{**dict(row), "path": Path(row["path"])})

    def count_instances(self) -> int:
        """The instances indexed, as their series count them (``record_instance`` keeps each
        series' count): a sum over series, not a count over a year's instance rows per scrape."""
        return int(self._db.execute("SELECT COALESCE(SUM(instance_count), 0) FROM series").fetchone()[0])

    def association_counts(self, prefix: str, since: float) -> tuple[int, int]:
        """(associations, instances) since ``since`` whose association id starts with ``prefix``:
        how much one receiver took (the STOW-RS receiver's requests are "stow-" associations)."""
        pattern = prefix.replace("%", "").replace("_", "") + "%"
        associations = self._db.execute("SELECT COUNT(*) FROM associations WHERE id LIKE ? AND opened_at >= ?",
                                        (pattern, since)).fetchone()[0]
        instances = self._db.execute("SELECT COUNT(*) FROM instances WHERE association LIKE ? AND received_at >= ?",
                                     (pattern, since)).fetchone()[0]
        return int(associations), int(instances)

    # ---- forced completion -----------------------------------------------------------------

    def force_series_complete(self, series_uid: str) -> bool:
        """receiving -> complete now, on the administrator's word (``radnode complete``)."""
        with self._tx() as db:
            forced = states.apply(db, states.SERIES, states.COMPLETE, series_uid,
                                  {"completed_at": time.time()}) == 1
        self._ring("series")
        return forced

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
        self._ring("series")
        return count

    def forced_at(self, study_uid: str) -> float | None:
        row = self._db.execute("SELECT forced_at FROM forced_studies WHERE study_uid = ?",
                               (study_uid,)).fetchone()
        return None if row is None else float(row["forced_at"])


def _record(db: sqlite3.Connection, rec: InstanceRecord, assoc_id: str | None, now: float) -> Path | None:
    """One instance's rows (``SeriesIndex.record_instance``), in the caller's transaction."""
    old = db.execute(
        "SELECT series_uid, path FROM instances WHERE sop_uid = ?", (rec.sop_uid,)
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
    _count_moved(db, old, rec)
    if assoc_id is not None:
        db.execute(
            "INSERT OR IGNORE INTO association_series(association, series_uid) VALUES (?, ?)",
            (assoc_id, rec.series_uid),
        )
    return Path(old["path"]) if old is not None and old["path"] != str(rec.path) else None


def _count_moved(db: sqlite3.Connection, old: sqlite3.Row | None, rec: InstanceRecord) -> None:
    """Series counts after ``record_instance``: a new instance counts once in its series; one
    sent again under another series moves its count, and a moved file's old series takes its
    header from a file it still has."""
    if old is None or old["series_uid"] != rec.series_uid:
        db.execute("UPDATE series SET instance_count = instance_count + 1 WHERE series_uid = ?",
                   (rec.series_uid,))
    if old is not None and old["series_uid"] != rec.series_uid:
        db.execute("UPDATE series SET instance_count = instance_count - 1 WHERE series_uid = ?",
                   (old["series_uid"],))
    if old is not None and old["path"] != str(rec.path):
        db.execute(
            "UPDATE series SET sample_path = COALESCE((SELECT path FROM instances"
            " WHERE series_uid = ? LIMIT 1), sample_path) WHERE series_uid = ? AND sample_path = ?",
            (old["series_uid"], old["series_uid"], old["path"]),
        )


class Index(SeriesIndex, JobIndex, ResultIndex, RetentionIndex, Bookkeeping, NotificationIndex, BackfillIndex):
    """Every concern of the index on one connection; create one per process (and per thread
    that writes)."""
