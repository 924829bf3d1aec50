"""The ``ray`` executor: job attempts run in actors on a Ray cluster; the node keeps the truth.

Each of the node's ``[workers] count`` Ray driver processes (children of the node, like local
workers) owns one actor per pipeline on the cluster; the actor loads its pipeline once (on a GPU
when ``num_gpus`` asks for one) and keeps it. For an attempt the driver ships the input series
to the actor through Ray's object store, gets the result files back, writes them into the node's
spool with the same durable write as local results and commits them under the attempt number
(``node.worker.commit_result``), so a result of an attempt the node gave up on is refused.

Faults: an actor whose machine died raises in the driver; the job goes back to the queue for
another attempt (``[workers.ray] max_attempts`` in all) and Ray restarts the actor where there
is room. A driver that dies (the Ray head went away) hands its attempt back the same way. The
actors belong to their driver, so a node killed with SIGKILL leaves nothing running on the
cluster, and the next start runs the job again under a new attempt number. While the head is
unreachable no attempt is submitted: jobs wait queued in the index, and /health says so.

Ray is imported only in the driver processes: the node itself needs no Ray to start.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import tempfile
import time
from multiprocessing import Queue
from pathlib import Path
from typing import Any

from node import logs
from node.config import Config, RaySettings, load_config
from node.executor import ProcessExecutor, die_with_parent
from node.spool import Spool
from node.store import Index, Job
from pipelines.base import JobResult

REACHABILITY_CACHE_SECONDS = 1.0
CONNECT_RETRY_SECONDS = 2.0
#: A file's name and bytes, as shipped to and from the actor.
Shipped = list[tuple[str, bytes]]


class RayExecutor(ProcessExecutor):
    role = "ray_driver"

    def __init__(self, config: Config, config_path: str, index: Index) -> None:
        super().__init__(config, config_path, ray_driver_main, index, config.workers.count)
        self._reachable = (0.0, False)

    def has_room(self) -> bool:
        return self.reachable() and super().has_room()

    def reachable(self) -> bool:
        """Whether the Ray head answers on its port (a TCP connect, cached for a second): jobs
        are claimed only then, so that they wait queued while the cluster is away."""
        checked, answer = self._reachable
        if time.monotonic() - checked > REACHABILITY_CACHE_SECONDS:
            answer = head_answers(self.config.workers.ray.address)
            self._reachable = (time.monotonic(), answer)
        return answer

    def worker_died(self, job: Job, reason: str) -> None:
        """A driver dies with its connection (the head went away), not because of the job."""
        hand_back_or_fail(self.index, job, f"Ray driver died: {reason}", self.config.workers.ray)

    def health(self) -> dict[str, tuple[int, int]]:
        return {**super().health(), "ray_head": (int(self.reachable()), 1)}


def head_answers(address: str) -> bool:
    host, port = head_endpoint(address)
    if host is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def head_endpoint(address: str) -> tuple[str | None, int]:
    """(host, port) of the head from ``host:port``, ``ray://host:port`` or ``auto`` (the
    cluster this machine joined, which ``ray start`` notes in /tmp/ray)."""
    if address == "auto":
        noted = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if not noted.exists():
            return None, 0
        address = noted.read_text().strip()
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def hand_back_or_fail(index: Index, job: Job, reason: str, settings: RaySettings) -> None:
    if job.attempts < settings.max_attempts:
        if index.hand_back_job(job.id, job.attempts, reason[:2000]):
            logs.error("job.handed_back", job=job.id, attempt=job.attempts, reason=reason[:500])
    elif index.fail_job(job.id, f"{reason} (attempt {job.attempts} of {settings.max_attempts})"[:2000],
                        attempt=job.attempts):
        logs.error("job.failed", job=job.id, pipeline=job.pipeline, reason=reason[:500])


# ---- the driver process (node side) ------------------------------------------------------

def ray_environment(settings: RaySettings) -> None:
    """Ray reads its token and TLS settings from the environment of every process it starts."""
    if settings.token_file is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(settings.token_file)
    if settings.tls_ca_cert is not None:
        os.environ["RAY_USE_TLS"] = "1"
        os.environ["RAY_TLS_CA_CERT"] = str(settings.tls_ca_cert)
        os.environ["RAY_TLS_SERVER_CERT"] = str(settings.tls_cert)
        os.environ["RAY_TLS_SERVER_KEY"] = str(settings.tls_key)


def ray_driver_main(config_path: str, attempts: "Queue[tuple[int, int]]") -> None:
    """Entry point of a driver process: run the attempts the executor submits on the cluster."""
    die_with_parent()
    logs.setup()
    config = load_config(Path(config_path))
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = Index(config.node.index_path)
    driver = Driver(config, index, Spool(config.node.spool))
    while not stopping:
        try:
            job_id, attempt = attempts.get(timeout=0.2)
        except queue.Empty:
            continue
        if not index.attempt_started(job_id, attempt, os.getpid()):
            continue
        job = index.job(job_id)
        assert job is not None
        driver.execute(job)
    index.close()


class Driver:
    """One connection to the cluster and this driver's actors, one per pipeline."""

    def __init__(self, config: Config, index: Index, spool: Spool) -> None:
        self.config = config
        self.index = index
        self.spool = spool
        self._actors: dict[str, Any] = {}

    def connect(self) -> None:
        import ray
        if ray.is_initialized():
            return
        ray_environment(self.config.workers.ray)
        ray.init(address=self.config.workers.ray.address, namespace=self.config.workers.ray.namespace,
                 log_to_driver=False, logging_level="warning")
        logs.info("ray.connected", address=self.config.workers.ray.address,
                  nodes=len([n for n in ray.nodes() if n["Alive"]]))

    def actor(self, pipeline: str) -> Any:
        """This driver's actor for ``pipeline``; Ray restarts it (another machine, a reload)
        when its machine dies, as often as needed."""
        if pipeline not in self._actors:
            import ray

            from node.ray_actor import PipelineActor
            table = self.config.pipelines.get(pipeline)
            options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0,
                                       "num_cpus": table.num_cpus if table else 1.0,
                                       "num_gpus": table.num_gpus if table else 0.0}
            if table is not None and table.memory_mb:
                options["memory"] = table.memory_mb * 2**20
            remote = ray.remote(PipelineActor).options(**options)
            self._actors[pipeline] = remote.remote(self.config.model_dump(mode="json"), pipeline)
        return self._actors[pipeline]

    def execute(self, job: Job) -> None:
        started = time.monotonic()
        logs.info("job.start", job=job.id, route=job.route, pipeline=job.pipeline, attempt=job.attempts,
                  engine="ray")
        try:
            self.connect()
            import ray
            series = {role: ship(self.index.instance_paths(uid)) for role, uid in job.inputs.items()}
            ref = self.actor(job.pipeline).run.remote(ray.put(series), str(job.id))
            shipped_at = time.monotonic()
            outcome = ray.get(ref)
        except Exception as error:
            self._attempt_failed(job, error)
            return
        result = self._keep(job, outcome)
        from node.worker import commit_result
        committed = commit_result(job, self.index, result)
        logs.info("job.end", job=job.id, pipeline=job.pipeline, engine="ray", committed=committed,
                  seconds=round(time.monotonic() - started, 3),
                  ship_seconds=round(shipped_at - started, 3),
                  actor_seconds=outcome.get("seconds"))

    def _attempt_failed(self, job: Job, error: Exception) -> None:
        import ray.exceptions as rex
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, (rex.RayActorError, rex.ActorUnavailableError, rex.NodeDiedError,
                              rex.ObjectLostError, ConnectionError)):
            hand_back_or_fail(self.index, job, reason, self.config.workers.ray)
            return
        cause = error.cause if isinstance(error, rex.RayTaskError) else error
        if self.index.fail_job(job.id, reason[:2000], attempt=job.attempts,
                               traceback=str(error)[-20000:]):
            logs.error("job.failed", job=job.id, pipeline=job.pipeline,
                       reason=f"{type(cause).__name__}: {cause}"[:500])

    def _keep(self, job: Job, outcome: dict[str, Any]) -> JobResult:
        """The actor's files, written durably into the job's result folder on the node."""
        folder = self.spool.result_dir(job.id)
        if not outcome["applicable"]:
            return JobResult(applicable=False, reason=outcome["reason"], summary=outcome["summary"])
        paths = []
        for name, data in outcome["files"]:
            path = folder / Path(name).name
            self.spool.write(path, data)
            paths.append(path)
        summary = {**outcome["summary"], "ray_node": outcome["node"]}
        return JobResult(outputs=paths, summary=summary)


def ship(paths: list[Path]) -> Shipped:
    return [(f"{i:05d}_{path.name}", path.read_bytes()) for i, path in enumerate(paths)]
