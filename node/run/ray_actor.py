"""The Ray actor of the ``ray`` executor: one pipeline, loaded once, run on shipped series.

It runs on a machine of the cluster, which holds no spool, no index and no config: the node
gives it the pipeline's settings (``node.run.invoke.pipeline_settings``: the node's UID root and
host name, so that outputs identify the node, not the worker host), the series arrive as bytes
and go to a scratch folder for the pipeline, and the result files go back as bytes for the node
to keep.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from node import logs
from node.run.invoke import load_pipeline, protect_patient_values, run_pipeline
from pipelines.base import JobSummary, PipelineSettings
from pipelines.priors import Priors
from pipelines.writers.output import WrittenObject

#: A file's name and bytes, as shipped to and from the actor.
Shipped = list[tuple[str, bytes]]


@dataclass(frozen=True)
class ActorOutcome:
    """What one run on the cluster sends back to the node's driver (pickled by Ray).

    The summary travels as the pipeline's own typed subclass; a shipped pipeline declares it
    in its torch-free ``contract`` module, so the driver unpickles it without loading a model.
    """

    applicable: bool
    #: why the pipeline found the job not applicable ("" when it was)
    reason: str
    summary: JobSummary
    #: the result files, for the node to keep
    files: Shipped
    #: what the writer knew of each file, at its path on the cluster machine
    objects: list[WrittenObject]
    #: host:pid of the actor's process
    ran_on: str
    #: seconds of the whole task on the actor (the driver's ``job.end`` log line)
    seconds: float


class PipelineActor:
    def __init__(self, entry: str, settings: PipelineSettings) -> None:
        logs.setup()  # Ray keeps a worker's stderr in the cluster's log files: scrubbed as on the node
        self.pipeline = load_pipeline(entry, settings)  # the model, once per actor

    def ready(self) -> str:
        """Answers once the pipeline is loaded: the job's timeout counts from then."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def run(self, series: dict[str, Shipped], job_id: str, priors: Priors | None = None) -> ActorOutcome:
        """Run the pipeline on the shipped series; the result files come back as bytes."""
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix=f"radnode-job{job_id}-"))
        try:
            inputs = {role: _unpack(files, scratch / "in" / role) for role, files in series.items()}
            protect_patient_values(inputs)
            result = run_pipeline(self.pipeline, inputs, scratch / "out", job_id, priors)
            files = [(path.name, path.read_bytes()) for path in result.outputs]
            return ActorOutcome(applicable=result.applicable, reason=result.reason,
                                summary=result.summary,
                                files=files, objects=result.objects, ran_on=self.ready(),
                                seconds=round(time.monotonic() - started, 3))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _unpack(files: Shipped, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for name, data in files:
        path = folder / Path(name).name
        path.write_bytes(data)
        paths.append(path)
    return paths
