"""Recording an attempt's outcome in the index: whoever ran it (a local worker, a Ray driver),
the result is committed here under its attempt number, so a late result of an earlier attempt
is refused and a result is delivered once.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Sequence

import pydicom

from node import logs
from node.config import Config
from node.index.states import JobState
from node.index.store import Index, Job, ResultFile
from node.result_formats import format_of
from node.run.lineage import replace_earlier
from pipelines.base import JobResult
from pipelines.writers.output import WrittenObject


def commit_result(job: Job, index: Index, result: JobResult, config: Config) -> bool:
    """Record the outcome of attempt ``job.attempts`` (files already durable in the job's result
    folder); False when that attempt is no longer the job's current one, and nothing changed.
    Every executor commits through here, so a result is delivered once whoever ran it, and only
    to the destinations whose formats take at least one of its files."""
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
                            attempt=job.attempts, lineage=lineage,
                            destinations=receiving_destinations(job, files, config))


def receiving_destinations(job: Job, files: Sequence[ResultFile], config: Config) -> list[str]:
    """The job's destinations that take at least one of ``files``: one that takes none gets no
    delivery at all, rather than one that sends nothing. A destination no longer in config.toml
    keeps its delivery, so that it fails where people look (``radnode deliveries``)."""
    configured = {d.name: d for d in config.destinations}
    receiving = [name for name in job.destinations if name not in configured
                 or any(configured[name].takes(f.sop_class) for f in files)]
    left_out = [name for name in job.destinations if name not in receiving]
    if left_out:
        logs.info("job.destinations_left_out", job=job.id, destinations=left_out,
                  formats=sorted({format_of(f.sop_class) for f in files}))
    return receiving


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
