"""The executor: the one interface between the scheduler (``node.run.scheduler``) and whatever
runs jobs.

It only runs attempts the scheduler claimed; each outcome is committed to the index under its
attempt number, so a late result of an earlier attempt is refused. ``local`` (worker processes,
``node.run.worker``) or ``ray`` (``node.run.ray_executor``): ``[workers] engine`` picks one and
nothing else in the node knows which.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from node import logs
from node.config import Config
from node.health import Check, Processes
from node.index.states import JobState
from node.index.store import Index, Job
from node.run.child import STALL_SECONDS, ChildLink

#: What a worker process runs: (config path, its link to the executor).
WorkerEntry = Callable[[str, ChildLink], None]


@dataclass
class _Child:
    """A worker or driver process, its link, and the attempt last submitted to it."""

    process: BaseProcess
    link: ChildLink
    #: (job id, attempt): it holds the child until that attempt is no longer running in the index
    holds: tuple[int, int] | None = None

    def ready(self) -> bool:
        """Alive and waiting for work (a worker that is still loading its pipelines is not)."""
        return self.process.is_alive() and self.link.seen.value > 0

    def wedged(self, before: float) -> bool:
        """Alive, ready once, and silent since ``before``: neither its loop turned nor did
        its attempt's heartbeat beat."""
        return self.process.is_alive() and 0 < self.link.seen.value < before


class Executor(ABC):
    """Runs job attempts. Driven by the scheduler's thread alone; ``health`` and ``checks`` are
    also read by the monitoring and web threads."""

    @abstractmethod
    def start(self) -> None:
        """Start what runs jobs (worker processes, a connection to the cluster)."""

    @abstractmethod
    def has_room(self) -> bool:
        """Whether a submitted attempt would start now; the scheduler claims only then, so that
        jobs wait queued in the index (not in the executor) while it is busy or unreachable."""

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run the attempt ``job.attempts`` of ``job`` (already claimed: running in the index).
        Its outcome reaches the index through ``Index.finish_job``/``fail_job`` fenced by that
        attempt number."""

    @abstractmethod
    def cancel(self, job: Job) -> None:
        """Stop an attempt the node has already ended in the index (timed out)."""

    @abstractmethod
    def supervise(self) -> None:
        """Called every round by the scheduler: restart what died and end its attempts."""

    @abstractmethod
    def stop(self, grace: float) -> None:
        """Let running attempts finish within ``grace`` seconds, then stop the rest; the node
        hands their jobs back to the queue."""

    @abstractmethod
    def health(self) -> dict[str, Processes]:
        """role -> processes alive and expected, for /health and /metrics."""

    def checks(self) -> dict[str, Check]:
        """Further /health checks by name: what jobs need beyond processes."""
        return {}


class ProcessExecutor(Executor):
    """Worker processes of this node, each fed attempts through a queue of its own; each worker
    records in the index which attempt it holds (its pid on the job, a heartbeat while it runs)
    and commits its result under the attempt number."""

    role = "worker"

    def __init__(self, config: Config, config_path: str, entry: WorkerEntry, index: Index,
                 processes: int) -> None:
        self.config = config
        self.config_path = config_path
        self.entry = entry
        self.index = index
        self.processes = processes
        self._mp = multiprocessing.get_context("spawn")
        self._children: list[_Child] = []

    def start(self) -> None:
        self._children = [self._spawn() for _ in range(self.processes)]

    def _spawn(self) -> _Child:
        link = ChildLink(self._mp.Queue(), self._mp.RawValue(ctypes.c_double, 0.0))
        process = self._mp.Process(target=self.entry, args=(self.config_path, link), name=f"radnode-{self.role}")
        process.start()
        return _Child(process, link)

    def _free(self) -> list[_Child]:
        """Children ready for work whose last attempt has ended in the index."""
        running = {(job.id, job.attempts) for job in self.index.running_jobs()}
        return [c for c in self._children if c.ready() and (c.holds is None or c.holds not in running)]

    def has_room(self) -> bool:
        return bool(self._free())

    def submit(self, job: Job) -> None:
        free = self._free()
        if not free:  # the scheduler asked has_room first; the attempt goes stale and back
            raise RuntimeError(f"no {self.role} free for job {job.id}")
        free[0].holds = (job.id, job.attempts)
        free[0].link.attempts.put((job.id, job.attempts))

    def cancel(self, job: Job) -> None:
        """Kill the worker still running the ended attempt, unless it has already moved on to
        another job (the attempt ended on its own just as the node ended it)."""
        if job.worker_pid is None:
            return  # no worker took it yet; the one that does finds it ended (start_attempt)
        if any(other.worker_pid == job.worker_pid for other in self.index.running_jobs()):
            return
        for child in self._children:
            if child.process.pid == job.worker_pid:
                self._kill(child)  # reaped here, so that no later round sees it free and gives it a job

    def supervise(self) -> None:
        """Replace children that stopped making progress, then those that died."""
        self._end_stalled(time.time() - STALL_SECONDS)
        for i, child in enumerate(self._children):
            if not child.process.is_alive():
                self._restart(i, child)

    def _end_stalled(self, before: float) -> None:
        """An attempt whose holder stopped beating, and an idle child whose loop stopped
        turning, are what a wedged or dead process leaves: kill it (it is replaced as dead)
        and give its attempt back, or fail it as the worker's crash."""
        for job in self.index.stalled_jobs(before):
            child = self._holder(job)
            reason = f"{self.role} process made no progress for {STALL_SECONDS:g} s"
            logs.error("node.child_stalled", role=self.role, job=job.id, attempt=job.attempts,
                       pid=None if child is None else child.process.pid)
            self._end_attempt(job, reason)
            if child is not None:
                self._kill(child)
        for child in self._children:
            if child.wedged(before):
                logs.error("node.child_stalled", role=self.role, pid=child.process.pid, job=None)
                self._kill(child)

    def _holder(self, job: Job) -> _Child | None:
        for child in self._children:
            if child.holds == (job.id, job.attempts) or (job.worker_pid and child.process.pid == job.worker_pid):
                return child
        return None

    def _holder_of_running(self, child: _Child) -> Job | None:
        """The running attempt submitted to ``child``, if it is still current."""
        if child.holds is None:
            return None
        job = self.index.job(child.holds[0])
        return job if job is not None and job.state == JobState.RUNNING and job.attempts == child.holds[1] else None

    @staticmethod
    def _kill(child: _Child) -> None:
        child.process.kill()
        child.process.join(timeout=10)

    def _restart(self, i: int, child: _Child) -> None:
        pid, code = child.process.pid, child.process.exitcode
        logs.error("node.child_died", role=self.role, pid=pid, exit_code=code)
        job = self._holder_of_running(child)
        if job is not None and job.worker_pid in (None, pid):
            self._end_attempt(job, f"{self.role} process died (exit code {code})")
        self._children[i] = self._spawn()

    def _end_attempt(self, job: Job, reason: str) -> None:
        """An attempt its process never took goes back to the queue, not the job's fault;
        one it held ends as the executor says (``worker_died``)."""
        if job.worker_pid is None:
            if self.index.hand_back_job(job.id, job.attempts, reason, lost=False):
                logs.error("job.handed_back", job=job.id, attempt=job.attempts, reason=reason)
            return
        self.worker_died(job, reason)

    def worker_died(self, job: Job, reason: str) -> None:
        """A crash of the local process that ran the job is the job's failure: a pipeline
        that kills its process would kill the next attempt too."""
        self.index.fail_job(job.id, reason, only_if_pid=job.worker_pid, attempt=job.attempts)

    def stop(self, grace: float) -> None:
        for child in self._children:
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + grace
        for child in self._children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join()

    def health(self) -> dict[str, Processes]:
        """A child counts while it is alive and its loop or its attempt's heartbeat is recent:
        a wedged one is not reported running (``supervise`` replaces it)."""
        before = time.time() - STALL_SECONDS
        alive = sum(1 for c in self._children if c.process.is_alive() and not c.wedged(before))
        return {self.role: Processes(alive, len(self._children))}
