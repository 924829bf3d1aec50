"""The ``ray`` executor: job attempts run in actors on a Ray cluster; the node keeps the truth.

Each of the node's ``[workers] count`` driver processes owns one actor per pipeline, which loads
its pipeline once; the driver ships an attempt's series to it, writes the result files back into
the spool and commits them under the attempt number, so a given-up attempt's result is refused.
A lost machine, a timeout, a head outage or a refusing cluster each end or hand back the attempt
as docs/ray-executor.md describes. Ray is imported only in the driver and probe processes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node import logs
from node.config import Config, RaySettings, load_config
from node.health import Check, Processes
from node.index.states import JobState
from node.index.store import Index, Job
from node.receive.spool import Spool
from node.retrieve.priors import for_job
from node.run.child import ChildLink, StopOnSigterm, die_with_parent, held_attempts
from node.run.executor import ProcessExecutor
from node.run.invoke import pipeline_settings
from node.run.outcome import commit_result
from node.run.ray_internals import RELEASE, RayMismatch, require
from node.run.ray_probe import ClusterProbe, head_answers, is_token_refusal, ray_environment
from pipelines.base import JobResult

if TYPE_CHECKING:  # the actor's module is imported where the actor is made
    from node.run.ray_actor import ActorOutcome, Shipped

REACHABILITY_CACHE_SECONDS = 1.0
#: How often a driver waiting for its actor checks that its attempt is still the current one.
FENCE_POLL_SECONDS = 0.25
#: How long an attempt may wait for its actor (the connect, room on the cluster, the model's
#: load) before its own timeout starts: the node ends it when both have passed.
ACTOR_START_SECONDS = 600.0
#: How often an idle driver with actors asks the cluster whether another actor waits for room.
RELEASE_CHECK_SECONDS = 2.0
#: Ray colours the tracebacks it forwards; the job's reason is read in a terminal or a page.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class RayExecutor(ProcessExecutor):
    role = "ray_driver"

    def __init__(self, config: Config, config_path: str, index: Index) -> None:
        super().__init__(config, config_path, ray_driver_main, index, config.workers.count)
        self._reachable = (float("-inf"), False)
        self._head_was_away = False
        self.probe = ClusterProbe(config_path)

    def start(self) -> None:
        self.reachable()  # /health's first answer is about the head, not a guess
        self.probe.start()
        super().start()

    def has_room(self) -> bool:
        """Jobs are claimed only while the head answers and the probe found that the cluster
        accepts this node: otherwise they wait queued, with /health saying why."""
        return self.reachable() and self.probe.accepted() and super().has_room()

    def reachable(self) -> bool:
        """Whether the Ray head answers on its port (a TCP connect, cached for a second): the
        quick sign that the cluster went away, between two verdicts of the probe."""
        checked, answer = self._reachable
        if time.monotonic() - checked > REACHABILITY_CACHE_SECONDS:
            answer = head_answers(self.config.workers.ray.address)
            self._reachable = (time.monotonic(), answer)
        return answer

    def cancel(self, job: Job) -> None:
        """Nothing to kill on the node: the driver holding the attempt sees within
        ``FENCE_POLL_SECONDS`` that it ended and kills its actor, which stops the task."""
        logs.info("job.cancel_requested", job=job.id, attempt=job.attempts, engine="ray")

    def supervise(self) -> None:
        """Also: take in the probe's verdicts; when the head is back after an outage, replace
        the drivers before any job is claimed: their connections lead to the cluster that went
        away."""
        self.probe.supervise()
        if not self.reachable():
            self._head_was_away = True
        elif self._head_was_away:
            self._head_was_away = False
            self._replace_drivers()
        super().supervise()

    def stop(self, grace: float) -> None:
        super().stop(grace)
        self.probe.stop()

    def _replace_drivers(self) -> None:
        logs.info("ray.reconnecting", address=self.config.workers.ray.address, drivers=len(self._children))
        for i, child in enumerate(self._children):
            child.process.terminate()  # SIGTERM: the attempt in hand, if any, ends first
            child.process.join(timeout=10)
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            for job in self.index.running_jobs():
                if job.worker_pid == child.process.pid or child.holds == (job.id, job.attempts):
                    self.index.hand_back_job(job.id, job.attempts, "the Ray head went away", lost=False)
            self._children[i] = self._spawn()

    def worker_died(self, job: Job, reason: str) -> None:
        """A driver dies with its connection: while the head is away that is not the job's
        fault; otherwise its attempt counts as lost (its machine, or the driver, died)."""
        if not self.reachable():
            if self.index.hand_back_job(job.id, job.attempts, f"the Ray head went away ({reason})"[:2000],
                                        lost=False):
                logs.error("job.handed_back", job=job.id, attempt=job.attempts, reason="the Ray head went away")
            return
        hand_back_or_fail(self.index, job, f"Ray driver died: {reason}", self.config.workers.ray)

    def health(self) -> dict[str, Processes]:
        return {**super().health(), "ray_probe": Processes(int(self.probe.alive()), 1)}

    def checks(self) -> dict[str, Check]:
        """From cached answers only (the supervisor refreshes them): the page never waits on
        the cluster."""
        address = self.config.workers.ray.address
        if not self._reachable[1]:
            return {"ray_cluster": Check(False, f"Ray head {address} does not answer: jobs wait queued until "
                                                "it is back; receiving and delivery go on")}
        verdict = self.probe.verdict()
        if verdict is None:
            return {"ray_cluster": Check(False, f"Ray head {address} answers; whether it accepts this node is "
                                                "being checked: jobs wait queued until then")}
        return {"ray_cluster": verdict if verdict.ok else Check(False, f"{verdict.detail}; jobs wait queued until then")}


def hand_back_or_fail(index: Index, job: Job, reason: str, settings: RaySettings) -> None:
    """An attempt lost with the machine that ran it: run the job again, on another actor,
    until ``max_attempts`` attempts are lost."""
    lost = job.lost_attempts + 1
    if lost < settings.max_attempts:
        if index.hand_back_job(job.id, job.attempts, reason[:2000], lost=True):
            logs.error("job.attempt_lost", job=job.id, attempt=job.attempts, lost=lost,
                       max_attempts=settings.max_attempts, reason=reason[:500])
    elif index.fail_job(job.id, f"{reason} ({lost} of {settings.max_attempts} attempts lost)"[:2000],
                        attempt=job.attempts):
        logs.error("job.failed", job=job.id, pipeline=job.pipeline, reason=reason[:500])


# ---- the driver process (node side) ------------------------------------------------------

def ray_driver_main(config_path: str, link: ChildLink) -> None:
    """Entry point of a driver process: run the attempts the executor submits on the cluster,
    until SIGTERM (the attempt in hand finishes) or until its connection to the cluster breaks
    (the executor starts a fresh driver)."""
    die_with_parent()
    logs.setup()
    config = load_config(Path(config_path))
    ray_environment(config.workers.ray)  # before Ray is imported, which reads them on import
    stop = StopOnSigterm()
    index = Index(config.node.index_path)
    driver = Driver(config, index, Spool(config.node.spool), socket.gethostname(), stop)
    for job in held_attempts(link, index, stop, poll_seconds=0.2, idle=driver.idle):
        if not driver.execute(job):
            break  # the connection to the cluster broke: the executor starts a fresh driver
    index.close()
    sys.stderr.flush()
    os._exit(0)  # not Ray's exit handlers: they wait for a cluster that may be gone


class Driver:
    """One connection to the cluster and this driver's actors, one per pipeline."""

    def __init__(self, config: Config, index: Index, spool: Spool, station_name: str,
                 stop: StopOnSigterm) -> None:
        self.stop = stop
        self.config = config
        self.index = index
        self.spool = spool
        self.station_name = station_name
        self._actors: dict[str, Any] = {}
        self._release_checked = 0.0
        self._can_release: bool | None = None

    def connect(self) -> None:
        import ray
        if ray.is_initialized():
            return
        settings = self.config.workers.ray
        ray.init(address=settings.address, namespace=settings.namespace, log_to_driver=False,
                 logging_level=logging.WARNING)
        self.stop.install()  # over Ray's own SIGTERM handler
        logs.info("ray.connected", address=settings.address,
                  nodes=len([n for n in ray.nodes() if n["Alive"]]))  # type: ignore[no-untyped-call]

    def actor(self, pipeline: str) -> Any:
        """This driver's actor for ``pipeline``, created (its pipeline loaded) on first use and
        after the last one was lost or cancelled."""
        if pipeline not in self._actors:
            import ray

            from node.run.ray_actor import PipelineActor
            table = self.config.pipelines.get(pipeline)
            options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0,
                                       "num_cpus": table.num_cpus if table else 1.0,
                                       "num_gpus": table.num_gpus if table else 0.0}
            if table is not None and table.memory_mb:
                options["memory"] = table.memory_mb * 2**20
            remote = ray.remote(PipelineActor).options(**options)
            self._actors[pipeline] = remote.remote(*pipeline_settings(self.config, pipeline, self.station_name))
        return self._actors[pipeline]

    def forget(self, pipeline: str) -> None:
        """Kill this pipeline's actor (a running task with it) so the next attempt gets a new one."""
        import ray
        actor = self._actors.pop(pipeline, None)
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as error:  # already dead with its machine
                logs.info("ray.actor_gone", pipeline=pipeline, reason=f"{type(error).__name__}")

    def idle(self) -> None:
        """Between jobs: kill this driver's actors when another actor of this pipeline class
        waits for room on the cluster (a retry after a machine died, another driver's first
        job), so it starts on the resources they hold; otherwise they stay, models loaded."""
        if not self._actors or time.monotonic() - self._release_checked < RELEASE_CHECK_SECONDS:
            return
        self._release_checked = time.monotonic()
        if not self._release_fits():
            return
        if not head_answers(self.config.workers.ray.address):
            return  # nothing waits on a cluster without its head; Ray replaces this driver
        try:
            waiting = self._others_waiting()
        except Exception as error:  # the head went away just now
            logs.info("ray.release_check_failed", reason=f"{type(error).__name__}")
            return
        if waiting:
            logs.info("ray.actors_released", pipelines=sorted(self._actors), waiting=waiting)
            for pipeline in list(self._actors):
                self.forget(pipeline)

    def _release_fits(self) -> bool:
        """Whether this Ray has the actor table ``_others_waiting`` reads; if not, said once, and
        idle actors keep their room (a waiting one starts when a driver's actor dies)."""
        if self._can_release is None:
            try:
                require(RELEASE)
                self._can_release = True
            except RayMismatch as error:
                logs.error("ray.release_unavailable", detail=str(error))
                self._can_release = False
        return self._can_release

    def _others_waiting(self) -> int:
        """How many pipeline actors that are not this driver's wait to be placed (Ray's actor
        table, from the head: no dashboard needed)."""
        import ray._private.state
        ours = {actor._actor_id.hex() for actor in self._actors.values()}
        pending = ray._private.state.actors(actor_state_name="PENDING_CREATION")
        return sum(1 for actor_id, info in pending.items()
                   if info["ActorClassName"].endswith("PipelineActor") and actor_id not in ours)

    def execute(self, job: Job) -> bool:
        """Run one attempt and record its outcome; False: the connection to the cluster broke
        and this driver must be replaced (the attempt went back to the queue)."""
        started = time.monotonic()
        logs.info("job.start", job=job.id, route=job.route, pipeline=job.pipeline, attempt=job.attempts,
                  engine="ray")
        timeout = self.config.workers.job_timeout_seconds
        self.index.restart_deadline(job.id, job.attempts, ACTOR_START_SECONDS + timeout)
        try:
            self.connect()
        except Exception as error:
            return self._unreachable(job, error)
        import ray
        try:
            actor = self.actor(job.pipeline)
            if self._wait(job, actor.ready.remote()) is None:
                return True
            self.index.restart_deadline(job.id, job.attempts, timeout)
            ready = time.monotonic()
            paths = {role: self.index.instance_paths(uid) for role, uid in job.inputs.items()}
            priors = for_job(self.config, job, paths)  # looked up here: the cluster need not reach the PACS
            series = {role: ship(files) for role, files in paths.items()}
            ref = actor.run.remote(ray.put(series), str(job.id), priors)
            shipped = time.monotonic()
            outcome = self._wait(job, ref)
        except Exception as error:
            return self._attempt_failed(job, error)
        if outcome is None:
            return True
        try:
            committed = self._commit(job, outcome)
        except Exception as error:
            self._fail(job, f"{type(error).__name__}: {error}", error)
            return True
        logs.info("job.end", job=job.id, pipeline=job.pipeline, engine="ray", committed=committed,
                  seconds=round(time.monotonic() - started, 3), actor_ready_seconds=round(ready - started, 3),
                  ship_seconds=round(shipped - ready, 3),
                  actor_seconds=outcome.seconds, ran_on=outcome.ran_on)
        return True

    def _wait(self, job: Job, ref: Any) -> Any:
        """What the actor's task returns, or None when the node ended the attempt first (its
        timeout): then the actor is killed, which cancels the task on the cluster."""
        import ray
        while True:
            ready, _ = ray.wait([ref], timeout=FENCE_POLL_SECONDS)
            if ready:
                return ray.get(ref)
            current = self.index.job(job.id)
            if current is None or current.state != JobState.RUNNING or current.attempts != job.attempts:
                self.forget(job.pipeline)
                logs.warning("job.cancelled_on_cluster", job=job.id, attempt=job.attempts,
                             state=None if current is None else current.state)
                return None

    def _attempt_failed(self, job: Job, error: Exception) -> bool:
        import ray.exceptions as rex
        reason = _COLOUR.sub("", f"{type(error).__name__}: {error}")
        if isinstance(error, rex.RayTaskError):  # the pipeline raised: the job's own failure
            self._fail(job, _COLOUR.sub("", f"{type(error.cause).__name__}: {error.cause}"), error)
            return True
        if isinstance(error, (rex.RayActorError, rex.NodeDiedError, rex.ObjectLostError,
                              rex.WorkerCrashedError)):  # the machine or process running it died
            self.forget(job.pipeline)
            if not head_answers(self.config.workers.ray.address):  # with the head: not the job's loss
                return self._unreachable(job, error)
            hand_back_or_fail(self.index, job, reason, self.config.workers.ray)
            return True
        if isinstance(error, (rex.RaySystemError, rex.RpcError, rex.GetTimeoutError, ConnectionError)):
            return self._unreachable(job, error)
        self._fail(job, reason, error)
        return True

    def _unreachable(self, job: Job, error: Exception) -> bool:
        """The cluster could not be reached, or refused this node: not the job's fault, so no
        attempt is counted; the probe stops further claims while the cluster refuses."""
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        if is_token_refusal(error):
            reason = f"the Ray cluster refused this node's token ([workers.ray] token_file): {cause}"
        else:
            reason = f"Ray cluster unreachable: {cause}"
        if self.index.hand_back_job(job.id, job.attempts, reason[:2000], lost=False):
            logs.error("job.handed_back", job=job.id, attempt=job.attempts, reason=reason[:500])
        return False

    def _fail(self, job: Job, reason: str, error: Exception) -> None:
        if self.index.fail_job(job.id, reason[:2000], attempt=job.attempts, traceback=_COLOUR.sub("", str(error))[-20000:]):
            logs.error("job.failed", job=job.id, pipeline=job.pipeline, reason=reason[:500])

    def _commit(self, job: Job, outcome: ActorOutcome) -> bool:
        """The actor's files, written durably into this attempt's own folder of the job's
        results (a stale attempt can never overwrite the current one's files), committed
        under the attempt number."""
        summary = outcome.summary.model_copy(update={"ran_on": outcome.ran_on})
        if not outcome.applicable:
            return commit_result(job, self.index, JobResult(applicable=False, reason=outcome.reason,
                                                            summary=summary), self.config)
        folder = self.spool.result_dir(job.id) / f"attempt-{job.attempts}"
        paths = []
        for name, data in outcome.files:
            path = folder / Path(name).name
            self.spool.write(path, data)
            paths.append(path)
        # what the writer on the cluster knew of each file, at its place here: no read back
        objects = [replace(o, path=folder / o.path.name) for o in outcome.objects]
        return commit_result(job, self.index, JobResult(outputs=paths, summary=summary, objects=objects),
                             self.config)


def ship(paths: list[Path]) -> Shipped:
    """A series' files as (name, bytes), in the index's order (names kept unique)."""
    return [(f"{i:05d}_{path.name}", path.read_bytes()) for i, path in enumerate(paths)]
