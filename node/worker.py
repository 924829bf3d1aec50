"""Worker processes of the local executor: run the job attempts it submits.

Workers are separate processes so that a model that crashes, hangs or eats memory never stops
the receiver; the supervisor in ``node.service`` kills a worker whose job outlives its timeout
and records why. Each worker loads a pipeline (and its model) once and keeps it for every
later job.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from node import logs
from node.config import Config, load_config
from node.executor import ChildLink, StopOnSigterm, die_with_parent, held_attempts
from node.spool import Spool
from node.states import JobState
from node.store import Index, Job, ResultFile
from node.supersede import replace_earlier
from pipelines.base import JobInput, JobResult, NotApplicable, Pipeline, PipelineSettings
from pipelines.registry import load_class, resolve_entry
from pipelines.writers.output import WrittenObject

IDLE_POLL_SECONDS = 0.2
DISK_FULL_RETRY_SECONDS = 5.0


def pipeline_settings(config: Config, name: str, station_name: str | None = None) -> tuple[str, PipelineSettings]:
    """The ``module:Class`` of pipeline ``name`` and what the node's config gives it: all a
    process needs to load it, here or on a cluster machine (``node.ray_actor``)."""
    table = config.pipelines.get(name)
    return resolve_entry(name, table), PipelineSettings(
        name=name,
        model=table.model if table else None,
        device=table.device if table else "auto",
        uid_root=config.node.uid_root,
        options=dict(table.options) if table else {},
        station_name=station_name,
    )


def load_pipeline(entry: str, settings: PipelineSettings) -> Pipeline:
    started = time.monotonic()  # before the import: torch and MONAI are most of the load
    pipeline = load_class(entry)(settings)
    logs.info("pipeline.loaded", pipeline=settings.name, seconds=round(time.monotonic() - started, 3))
    return pipeline


class PipelineCache:
    """Pipelines by name, each constructed (model loaded) the first time a job needs it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loaded: dict[str, Pipeline] = {}

    def get(self, name: str) -> Pipeline:
        if name not in self._loaded:
            self._loaded[name] = load_pipeline(*pipeline_settings(self.config, name))
        return self._loaded[name]

    def preload(self, names: Sequence[str]) -> None:
        """Load these pipelines now, so that the first study does not wait for a model load.

        A pipeline that cannot load is logged and left for its first job, which then fails
        with the reason on the job, where an administrator looks.
        """
        for name in dict.fromkeys(names):
            try:
                self.get(name)
            except Exception as error:
                logs.error("pipeline.load_failed", pipeline=name, reason=f"{type(error).__name__}: {error}",
                           where=where(error))


def run_pipeline(pipeline: Pipeline, series: Mapping[str, Sequence[Path]], output_dir: Path,
                 job_id: str) -> JobResult:
    """Run one pipeline into a clean output folder; NotApplicable becomes a normal result."""
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a rerun after a crash must not deliver stale files
    output_dir.mkdir(parents=True)
    try:
        return pipeline.run(JobInput(series=series, output_dir=output_dir, job_id=job_id))
    except NotApplicable as reason:
        return JobResult(applicable=False, reason=str(reason))


def written_objects(result: JobResult) -> list[WrittenObject]:
    """What the pipeline's writer knew of each output; an output it gave no record for (a site
    pipeline writing its files its own way) has its header read, once."""
    known = {o.path: o for o in result.objects}
    out = []
    for path in result.outputs:
        if path not in known:
            known[path] = WrittenObject.of(pydicom.dcmread(path, stop_before_pixels=True), path)
        out.append(known[path])
    return out


def where(error: BaseException) -> list[str]:
    """The frames of an exception as "file:line in function", innermost last."""
    return [f"{frame.filename}:{frame.lineno} in {frame.name}"
            for frame in traceback.extract_tb(error.__traceback__)]


def protect_patient_values(series: Mapping[str, Sequence[Path]]) -> None:
    """Tell the log scrubber this job's patient values (one header per input series)."""
    values: list[object] = []
    for paths in series.values():
        if paths:
            header = pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=list(logs.PHI_FIELDS))
            values += [header.get(keyword) for keyword in logs.PHI_FIELDS]
    logs.protect(values)


def execute(job: Job, index: Index, spool: Spool, pipelines: PipelineCache) -> None:
    """Run one claimed job and record its outcome; any exception becomes the job's reason, and
    its traceback is kept on the job (``radnode jobs --id N``) for the developer who fixes it.

    A full disk is not the job's fault: the worker waits and runs it again (the supervisor's
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
    result = run_pipeline(pipelines.get(job.pipeline), series, spool.result_dir(job.id), str(job.id))
    commit_result(job, index, result)


def commit_result(job: Job, index: Index, result: JobResult) -> bool:
    """Record the outcome of attempt ``job.attempts`` (files already durable in the job's result
    folder); False when that attempt is no longer the job's current one, and nothing changed.
    Every executor commits through here, so a result is delivered once whoever ran it."""
    current = index.job(job.id)
    if current is None or current.state != JobState.RUNNING or current.attempts != job.attempts:
        logs.warning("job.stale_result", job=job.id, attempt=job.attempts,
                     current_attempt=None if current is None else current.attempts)
        return False
    if not result.applicable:
        return index.finish_job(job.id, [], f"not applicable: {result.reason}",
                                summary=result.summary, attempt=job.attempts)
    written = written_objects(result)
    lineage = replace_earlier(index, job, written)
    files = [ResultFile(o.path, o.sop_uid, o.sop_class, o.transfer_syntax) for o in written]
    return index.finish_job(job.id, files, f"{len(files)} objects", summary=result.summary,
                            attempt=job.attempts, lineage=lineage)


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite's "database or disk is full", anywhere in the chain."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def worker_main(config_path: str, link: ChildLink) -> None:
    """Entry point of a worker process of the local executor: run the attempts it submits
    until SIGTERM.

    SIGTERM lets the job in hand finish; the supervisor decides how long that may take.
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
