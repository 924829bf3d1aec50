"""Worker processes of the local executor: run the job attempts it submits.

Separate processes, so that a model that crashes, hangs or eats memory never stops the
receiver; the scheduler (``node.run.scheduler``) kills a worker whose job outlives its timeout.
Each worker loads a pipeline (and its model) once and keeps it for every later job.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from node import logs
from node.config import load_config
from node.index.store import Index, Job
from node.receive.spool import Spool
from node.retrieve.priors import for_job
from node.run.child import ChildLink, StopOnSigterm, die_with_parent, held_attempts
from node.run.invoke import PipelineCache, protect_patient_values, run_pipeline, where
from node.run.outcome import commit_result, is_disk_full

IDLE_POLL_SECONDS = 0.2
DISK_FULL_RETRY_SECONDS = 5.0


def execute(job: Job, index: Index, spool: Spool, pipelines: PipelineCache) -> None:
    """Run one claimed job and record its outcome; any exception becomes the job's reason, and
    its traceback is kept on the job (``radnode jobs --id N``) for the developer who fixes it.

    A full disk is not the job's fault: the worker waits and runs it again (the scheduler's
    job timeout still bounds the whole), so no job is lost to a disk that fills for a while.
    """
    started = time.monotonic()
    logs.info("job.start", job=job.id, route=job.route, pipeline=job.pipeline, attempt=job.attempts)
    while True:
        try:
            _run(job, index, spool, pipelines)
            break
        except Exception as error:
            if is_disk_full(error):
                logs.error("job.disk_full", job=job.id, pipeline=job.pipeline,
                           retry_in_seconds=DISK_FULL_RETRY_SECONDS)
                time.sleep(DISK_FULL_RETRY_SECONDS)
                continue
            reason = f"{type(error).__name__}: {error}"
            index.fail_job(job.id, reason[:2000], only_if_pid=os.getpid(), attempt=job.attempts,
                           traceback="".join(traceback.format_exception(error))[-20000:])
            logs.error("job.failed", job=job.id, pipeline=job.pipeline, reason=reason[:500],
                       where=where(error)[-8:])
            return
    logs.info("job.end", job=job.id, pipeline=job.pipeline, seconds=round(time.monotonic() - started, 3))


def _run(job: Job, index: Index, spool: Spool, pipelines: PipelineCache) -> None:
    series = {role: index.instance_paths(uid) for role, uid in job.inputs.items()}
    protect_patient_values(series)
    priors = for_job(pipelines.config, job, series)
    result = run_pipeline(pipelines.get(job.pipeline), series, spool.result_dir(job.id), str(job.id), priors)
    commit_result(job, index, result, pipelines.config)


def worker_main(config_path: str, link: ChildLink) -> None:
    """Entry point of a worker process of the local executor: run the attempts it submits
    until SIGTERM.

    SIGTERM lets the job in hand finish; the node's stop decides how long that may take.
    """
    die_with_parent()
    logs.setup()
    config = load_config(Path(config_path), check_site_pipelines=False)  # the node checked them
    stop = StopOnSigterm()
    index = Index(config.node.index_path)
    spool = Spool(config.node.spool)
    pipelines = PipelineCache(config)
    pipelines.preload([route.pipeline for route in config.routes])
    for job in held_attempts(link, index, stop, IDLE_POLL_SECONDS):
        execute(job, index, spool, pipelines)
    index.close()
