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
