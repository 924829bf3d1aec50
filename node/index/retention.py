"""Retention's view of the index: what no stage will read again, and forgetting it."""

from __future__ import annotations

from pathlib import Path

from node.index.db import Database
from node.index.jobs import UNFINISHED
from node.index.states import DeliveryState, JobState, SeriesState


class RetentionIndex(Database):
    def settled_studies(self, received_before: float) -> list[str]:
        """Studies quiet since ``received_before`` whose every series is routed and every job
        has ended: nothing in the node will read their instances again."""
        rows = self._db.execute(
            "SELECT st.study_uid FROM studies st WHERE st.last_received < ?"
            " AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = st.study_uid"
            "                 AND s.state != ?)"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = st.study_uid"
            "                 AND j.state IN (?, ?))",
            (received_before, SeriesState.ROUTED, *UNFINISHED),
        ).fetchall()
        return [r["study_uid"] for r in rows]

    def study_files(self, study_uid: str) -> list[Path]:
        return [Path(r["path"]) for r in self._db.execute(
            "SELECT path FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()]

    def forget_study(self, study_uid: str) -> None:
        """Drop a study's instances and series from the index.

        Retention removes the files first and the rows after: a crash in between leaves rows
        that the next sweep removes, never unreferenced files, which ``node.operate.reconcile`` would
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

    def past_jobs(self, finished_before: float, limit: int = 1000) -> list[int]:
        """Ended jobs, finished before the cut-off, that nothing refers to any more: their study's
        instances and their result files are gone, and every delivery was sent (a dead delivery
        keeps its job for ``radnode retry``)."""
        rows = self._db.execute(
            "SELECT j.id FROM jobs j WHERE j.finished_at < ? AND j.state IN (?, ?)"
            " AND NOT EXISTS (SELECT 1 FROM studies st WHERE st.study_uid = j.study_uid)"
            " AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = j.id)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id AND d.state != ?)"
            " LIMIT ?",
            (finished_before, JobState.DONE, JobState.FAILED, DeliveryState.SENT, limit),
        ).fetchall()
        return [r["id"] for r in rows]

    def forget_jobs(self, job_ids: list[int]) -> None:
        """A job's history goes with its deliveries, their attempts and what the job wrote to the
        PACS (the list a later version would supersede); events still to be notified stay."""
        marks = ",".join("?" * len(job_ids))
        with self._tx() as db:
            db.execute(f"DELETE FROM delivery_attempts WHERE delivery_id IN"
                       f" (SELECT id FROM deliveries WHERE job_id IN ({marks}))", job_ids)
            for table in ("deliveries", "result_objects", "supersessions", "jobs_requeued"):
                db.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", job_ids)
            db.execute(f"DELETE FROM notify_events WHERE job_id IN ({marks}) AND NOT EXISTS"
                       f" (SELECT 1 FROM notifications n WHERE n.event = notify_events.id)", job_ids)
            db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", job_ids)

    def forget_old_records(self, before: float) -> None:
        """Problems, closed associations and routing notes older than the cut-off (the notes only
        of studies the node no longer holds)."""
        with self._tx() as db:
            db.execute("DELETE FROM problems WHERE at < ?", (before,))
            db.execute("DELETE FROM associations WHERE closed_at < ?", (before,))
            db.execute("DELETE FROM route_notes WHERE created_at < ? AND NOT EXISTS"
                       " (SELECT 1 FROM studies st WHERE st.study_uid = route_notes.study_uid)", (before,))
