"""The scheduler: claims queued jobs while the executor has room, and ends attempts past their
timeout.

Jobs wait queued in the index, not in the executor, so a busy or unreachable executor loses
nothing. The scheduler is the executor's only driver (submit, cancel, supervise), one round at a
time, in one thread of the node.
"""

from __future__ import annotations

import time

from node import logs
from node.config import Config
from node.index.store import Index, Job
from node.isolation import isolated
from node.retrieve.backfill import in_hours
from node.run.executor import Executor


class Scheduler:
    def __init__(self, config: Config, index: Index, executor: Executor) -> None:
        self.config = config
        self.index = index
        self.executor = executor

    def tick(self) -> None:
        """One round: time out, let the executor replace what died, claim. A job whose handling
        fails is logged and met again next round, after every other one."""
        isolated("scheduler", "job timeouts", self.enforce_timeouts, lambda _reason: None)
        isolated("scheduler", "executor", self.executor.supervise, lambda _reason: None)
        isolated("scheduler", "job submission", self.submit_jobs, lambda _reason: None)

    def submit_jobs(self) -> None:
        """Start attempts of queued jobs while the executor has room; the rest wait in the index."""
        backfill = in_hours(self.config.backfill.hours)
        while self.executor.has_room():
            job = self.index.claim_job(None, self.config.workers.job_timeout_seconds, backfill=backfill)
            if job is None:
                return
            logs.info("job.submitted", job=job.id, pipeline=job.pipeline, attempt=job.attempts,
                      engine=self.config.workers.engine, lane=job.lane)
            self.executor.submit(job)

    def enforce_timeouts(self) -> None:
        for job in self.index.overdue_jobs(time.time()):
            isolated("scheduler", f"job {job.id}", lambda: self._time_out(job), lambda _reason: None)

    def _time_out(self, job: Job) -> None:
        limit = self.config.workers.job_timeout_seconds
        if self.index.fail_job(job.id, f"timed out after {limit:g} s", attempt=job.attempts):
            logs.error("job.timeout", job=job.id, pipeline=job.pipeline, seconds=limit)
            self.executor.cancel(job)
