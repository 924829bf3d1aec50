"""The executor: the one interface between the node's scheduler and whatever runs jobs.

The node keeps every job in its index; an executor only runs attempts of them. The scheduler
claims a queued job (a new attempt, ``node.states``) when the executor has room, submits the
attempt, and learns its outcome from the index, where the attempt's result is committed under its
attempt number, so that a late result of an earlier attempt is refused. Two implementations:
``local`` (worker processes on this machine, ``node.worker``) and ``ray`` (actors on a Ray
cluster, ``node.ray_executor``); ``[workers] engine`` picks one and nothing else in the node knows
which.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess

from node import logs
from node.config import Config
from node.store import Index, Job

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Children must not outlive a supervisor killed with SIGKILL (they would hold the port,
    or run jobs the next start runs again)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class StopOnSigterm:
    """How a worker or driver process stops: SIGTERM lets the attempt in hand finish (the loop
    asks ``stopping`` between attempts; the supervisor decides how long it may take), and SIGINT,
    a terminal's Ctrl-C reaching the whole process group, is the supervisor's to handle."""

    def __init__(self) -> None:
        self.stopping = False
        self.install()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def install(self) -> None:
        """Make SIGTERM set the flag, again after a library installed its own handler (Ray's
        would kill the attempt in hand)."""
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True


def held_attempts(attempts: multiprocessing.Queue[tuple[int, int]], index: Index, stop: StopOnSigterm,
                  poll_seconds: float) -> Iterator[Job]:
    """The attempts the executor submits to this worker or driver process, each once this
    process holds it, until SIGTERM; one the node ended or handed back while it waited in the
    queue is passed over."""
    while not stop.stopping:
        try:
            job_id, attempt = attempts.get(timeout=poll_seconds)
        except queue.Empty:
            continue
        if not index.start_attempt(job_id, attempt, os.getpid()):
            continue
        job = index.job(job_id)
        if job is not None:
            yield job


#: What a worker process runs: (config path, queue of submitted attempts).
WorkerEntry = Callable[[str, "multiprocessing.Queue[tuple[int, int]]"], None]


class Executor(ABC):
    """Runs job attempts. Called from the node's threads only (scheduler and supervisor)."""

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
        """Called often by the supervisor: restart what died and end its attempts."""

    @abstractmethod
    def stop(self, grace: float) -> None:
        """Let running attempts finish within ``grace`` seconds, then stop the rest; the node
        hands their jobs back to the queue."""

    @abstractmethod
    def health(self) -> dict[str, tuple[int, int]]:
        """role -> (alive, expected), for /health and /metrics."""

    def checks(self) -> dict[str, tuple[bool, str]]:
        """Further /health checks, name -> (ok, detail): what jobs need beyond processes."""
        return {}


class ProcessExecutor(Executor):
    """Worker processes of this node, fed attempts through one queue; each worker records which
    attempt it holds (its pid on the job) and commits its result under the attempt number."""

    role = "worker"

    def __init__(self, config: Config, config_path: str, entry: WorkerEntry, index: Index,
                 processes: int) -> None:
        self.config = config
        self.config_path = config_path
        self.entry = entry
        self.index = index
        self.processes = processes
        self._mp = multiprocessing.get_context("spawn")
        self._attempts: multiprocessing.Queue[tuple[int, int]] = self._mp.Queue()
        self._workers: list[BaseProcess] = []

    def start(self) -> None:
        self._workers = [self._spawn() for _ in range(self.processes)]

    def _spawn(self) -> BaseProcess:
        process = self._mp.Process(target=self.entry, args=(self.config_path, self._attempts),
                                   name=f"radnode-{self.role}")
        process.start()
        return process

    def has_room(self) -> bool:
        return len(self.index.running_jobs()) < self.processes

    def submit(self, job: Job) -> None:
        self._attempts.put((job.id, job.attempts))

    def cancel(self, job: Job) -> None:
        """Kill the worker still running the ended attempt, unless it has already moved on to
        another job (the attempt ended on its own just as the node ended it)."""
        if job.worker_pid is None:
            return  # no worker took it yet; the one that does finds it ended (start_attempt)
        if any(other.worker_pid == job.worker_pid for other in self.index.running_jobs()):
            return
        for process in self._workers:
            if process.pid == job.worker_pid:
                process.kill()

    def supervise(self) -> None:
        for i, process in enumerate(self._workers):
            if not process.is_alive():
                self._restart(i, process)

    def _restart(self, i: int, process: BaseProcess) -> None:
        pid, code = process.pid, process.exitcode
        logs.error("node.child_died", role=self.role, pid=pid, exit_code=code)
        for job in self.index.running_jobs():
            if job.worker_pid == pid:
                self.worker_died(job, f"worker process died (exit code {code})")
        self._workers[i] = self._spawn()

    def worker_died(self, job: Job, reason: str) -> None:
        """A crash of the local process that ran the job is the job's failure: a pipeline
        that kills its process would kill the next attempt too."""
        self.index.fail_job(job.id, reason, only_if_pid=job.worker_pid, attempt=job.attempts)

    def stop(self, grace: float) -> None:
        for process in self._workers:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self._workers:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

    def health(self) -> dict[str, tuple[int, int]]:
        alive = sum(1 for p in self._workers if p.is_alive())
        return {self.role: (alive, len(self._workers))}


def make_executor(config: Config, config_path: str, index: Index) -> Executor:
    """The executor ``[workers] engine`` names."""
    if config.workers.engine == "ray":
        from node.ray_executor import RayExecutor  # imports nothing of Ray until used
        return RayExecutor(config, config_path, index)
    from node.worker import worker_main
    return ProcessExecutor(config, config_path, worker_main, index, config.workers.count)
