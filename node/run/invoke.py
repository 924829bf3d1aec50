"""Loading and calling a pipeline, the same in a local worker process and in a Ray actor: what
the node's config gives a pipeline, its load (timed, since torch and a model are most of a
start), a run into a clean output folder, and the patient values the log scrubber must know.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom

from node import logs
from node.config import Config, PipelineConfig
from pipelines.base import JobInput, JobResult, NotApplicable, Pipeline, PipelineOptions, PipelineSettings
from pipelines.priors import Priors
from pipelines.registry import load_class, resolve_entry


def pipeline_settings(config: Config, name: str, station_name: str | None = None) -> tuple[str, PipelineSettings]:
    """The ``module:Class`` of pipeline ``name`` and what the node's config gives it: all a
    process needs to load it, here or on a cluster machine (``node.run.ray_actor``)."""
    table = config.pipelines.get(name)
    return resolve_entry(name, table.entry if table else None), PipelineSettings(
        name=name,
        model=table.model if table else None,
        device=table.device if table else "auto",
        uid_root=config.node.uid_root,
        options=_options(table),
        station_name=station_name,
    )


def _options(table: PipelineConfig | None) -> PipelineOptions | dict[str, Any]:
    """The options object the config check validated; the raw table where it did not check them."""
    if table is None:
        return {}
    return table.validated_options if table.validated_options is not None else dict(table.options)


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
                 job_id: str, priors: Priors | None = None) -> JobResult:
    """Run one pipeline into a clean output folder; NotApplicable becomes a normal result."""
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a rerun after a crash must not deliver stale files
    output_dir.mkdir(parents=True)
    try:
        return pipeline.run(JobInput(series=series, output_dir=output_dir, job_id=job_id, priors=priors))
    except NotApplicable as reason:
        return JobResult(applicable=False, reason=str(reason))


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
