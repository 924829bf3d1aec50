"""Retention: the spool must not fill the disk with studies the node is done with.

Received instances are kept while anything may still read them (a series not yet routed, a job
queued or running) and for ``instances_days`` after the study last received an instance, so an
administrator can re-run a job on recent studies; refused datasets in the quarantine folder are
kept for ``instances_days`` too. Result files are kept until every destination
has them (a dead delivery keeps its files for ``radnode retry``), then for ``results_days``.
The PACS holds the long-term copy of both. The history of a job whose study and results are gone
(the job, its deliveries and their attempts), problems and closed associations go after
``history_days``, so that the index stays the same size from one month to the next.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from node import logs
from node.config import RetentionSettings
from node.index.store import Index
from node.isolation import isolated
from node.receive.spool import Spool

_DAY = 86_400.0
#: Sent and dead notifications (and the events no target waits to send) are kept this long.
NOTIFICATION_HISTORY_SECONDS = 30 * _DAY
#: Past jobs forgotten per transaction.
HISTORY_BATCH = 500


@dataclass(frozen=True)
class Swept:
    studies: int
    instance_files: int
    result_jobs: int
    quarantined: int = 0
    history_jobs: int = 0


class Retention:
    def __init__(self, settings: RetentionSettings, index: Index, spool: Spool) -> None:
        self.settings = settings
        self.index = index
        self.spool = spool

    def tick(self) -> Swept:
        """One sweep; the node's retention loop calls it every ``interval_minutes``."""
        return self.sweep(time.time())

    def sweep(self, now: float) -> Swept:
        """One pass; a study or job whose clean-up fails is logged and recorded, the rest go on
        (the next sweep tries it again)."""
        studies = files = jobs = 0
        if self.settings.instances_days > 0:
            for study_uid in self.index.settled_studies(now - self.settings.instances_days * _DAY):
                removed: list[int] = []
                if isolated("retention", study_uid, lambda: removed.append(self._forget_study(study_uid)),
                            lambda reason: self.index.record_problem("retention", study_uid, 0, reason)):
                    files += removed[0]
                    studies += 1
        if self.settings.results_days > 0:
            for job_id in self.index.delivered_jobs(now - self.settings.results_days * _DAY):
                if isolated("retention", f"job {job_id}", lambda: self._forget_results(job_id),
                            lambda reason: self.index.record_problem("retention", f"job {job_id}", 0, reason)):
                    jobs += 1
        quarantined = 0
        if self.settings.instances_days > 0:
            quarantined = self._sweep_quarantine(now - self.settings.instances_days * _DAY)
        self.index.forget_notifications(now - NOTIFICATION_HISTORY_SECONDS)
        history = self._forget_history(now - self.settings.history_days * _DAY) if self.settings.history_days > 0 else 0
        swept = Swept(studies, files, jobs, quarantined, history)
        if studies or jobs or quarantined or history:
            logs.info("retention.swept", studies=studies, instance_files=files, result_jobs=jobs,
                      quarantined=quarantined, history_jobs=history)
        return swept

    def _forget_history(self, before: float) -> int:
        """Forget past jobs a batch at a time (one short transaction each, so the receiver's commits
        never wait long), then the old problems, associations and routing notes."""
        forgotten = 0
        while batch := self.index.past_jobs(before, HISTORY_BATCH):
            self.index.forget_jobs(batch)
            forgotten += len(batch)
        self.index.forget_old_records(before)
        return forgotten

    def _forget_study(self, study_uid: str) -> int:
        paths = self.index.study_files(study_uid)
        removed = sum(_remove(p) for p in paths)
        _prune_empty_parents({p.parent for p in paths}, self.spool.instances)
        self.index.forget_study(study_uid)
        return removed

    def _sweep_quarantine(self, older_than: float) -> int:
        """Refused datasets (and their reasons) are kept as long as received instances are; an
        entry that cannot be removed is recorded and the others are still swept."""
        removed = 0
        for path in self.spool.quarantine.iterdir():
            subject = f"quarantine {path.name}"
            gone: list[bool] = []
            if isolated("retention", subject, lambda: gone.append(_remove_older(path, older_than)),
                        lambda reason: self.index.record_problem("retention", subject, 0, reason)) and gone[0]:
                removed += path.suffix == ".dcm"
        return removed

    def _forget_results(self, job_id: int) -> None:
        self.index.forget_results(job_id)
        shutil.rmtree(self.spool.result_dir(job_id), ignore_errors=True)


def _remove(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _remove_older(path: Path, older_than: float) -> bool:
    """Remove ``path`` if it is older than ``older_than``; True if this call removed it."""
    try:
        if path.stat().st_mtime >= older_than:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _prune_empty_parents(folders: set[Path], root: Path) -> None:
    """Remove series and study folders left empty, never ``root`` itself."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                break
            folder = folder.parent
