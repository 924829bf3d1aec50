"""What an administrator reads and does: shared by the ``radnode`` command line and the web page.

Both faces of the node must tell the same story, so the queries behind a listing, the checks
behind an action and the message that reports its result live here once; ``node.operate.cli`` prints
them, ``node.operate.web`` renders them. Nothing here returns patient data: UIDs, states, counts, times.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.uid import UID

from node.config import Config, NotifyTarget
from node.index.notifications import TargetState
from node.index.states import DeliveryState, JobState
from node.index.store import Delivery, Index, Job, ResultFile
from node.operate.notify_channels import shown_url
from pipelines.base import JobSummary


def when(epoch: float | None) -> str:
    """A local time for people ("-" for a time that has not come)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


@dataclass(frozen=True)
class Outcome:
    """The result of an action: whether it changed anything, and the sentence that says so."""

    ok: bool
    message: str


def supersessions(index: Index) -> tuple[dict[int, str], dict[int, str]]:
    """Which job's results replaced which: "job 1 (v1)" beside job 2, "job 2 (v2)" beside job 1."""
    replaces: dict[int, str] = {}
    replaced_by: dict[int, str] = {}
    for job, (earlier, version) in index.supersessions().items():
        replaces[job] = f"job {earlier} (v{version - 1})"
        replaced_by[earlier] = f"job {job} (v{version})"
    return replaces, replaced_by


def queued_since(job: Job, requeued_at: dict[int, float]) -> float:
    """When the job's current attempt began to wait: its creation, or its last hand-back or
    retry (``Index.requeued_at``), so that a retry's wait does not count the earlier attempts."""
    return requeued_at.get(job.id, job.created_at)


def stage_seconds(job: Job, requeued_at: dict[int, float] | None = None) -> dict[str, float]:
    """Where a job's time went: waiting in the queue, then the pipeline's own stage laps
    (``summary.seconds``), or the whole run when the pipeline keeps no laps. A job waiting
    again (handed back at a stop, at boot, or retried) has no queue time yet: its ``started_at``
    is its previous attempt's."""
    stages: dict[str, float] = {}
    queued = queued_since(job, requeued_at or {})
    if job.started_at and job.state != JobState.QUEUED and job.started_at >= queued:
        stages["queued"] = round(job.started_at - queued, 3)
    if job.summary.seconds:
        stages.update(job.summary.seconds)
    elif job.started_at and job.finished_at:
        stages["run"] = round(job.finished_at - job.started_at, 3)
    return stages


def model_identity(job: Job) -> str:
    """The model a job ran with, as its summary names it: name or bundle, version, weights digest
    ("-" for pipelines without a model)."""
    summary = job.summary
    parts = [name for name in (summary.model, summary.bundle, summary.model_version) if name]
    if summary.model_sha256:
        parts.append(f"sha256 {summary.model_sha256[:12]}")
    return ", ".join(parts) or "-"


@dataclass(frozen=True)
class ResultGroup:
    """A job's result files of one object type in one folder: a derived series is hundreds of
    files, which people read as one line ("300 CT Image Storage in .../results/7")."""

    kind: str
    count: int
    folder: Path


def result_groups(results: Iterable[ResultFile]) -> list[ResultGroup]:
    """Results grouped by object type (the SOP class's name, not its UID) and folder."""
    counts: Counter[tuple[str, Path]] = Counter(
        (UID(r.sop_class).name, r.path.parent) for r in results)
    return [ResultGroup(kind, count, folder) for (kind, folder), count in sorted(counts.items())]


def summary_rows(summary: JobSummary) -> list[tuple[str, str]]:
    """A pipeline's summary as (name, value) rows for people, under the keys it is stored
    with: nested tables flattened to "seconds load", lists joined, instead of a JSON dump. Lists
    of findings are left to ``finding_tables``."""
    return _rows({k: v for k, v in summary.to_stored().items() if not _is_findings(v)})


@dataclass(frozen=True)
class FindingTable:
    """A summary's list of findings (one record each, e.g. ``nodules``) as a table for people:
    one row a finding, one column a measurement, its unit in the header."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


#: Key suffixes that name a unit, and how people write it.
_UNITS = {"mm": "mm", "mm3": "mm³", "ml": "mL", "hu": "HU", "lps": "LPS", "cm": "cm"}


def finding_tables(summary: JobSummary) -> list[FindingTable]:
    """Each list of records in the summary as a table, columns in the records' own key order."""
    tables = []
    for name, records in summary.to_stored().items():
        if not _is_findings(records):
            continue
        keys = list(dict.fromkeys(key for record in records for key in record))
        tables.append(FindingTable(name.replace("_", " "), tuple(_header(key) for key in keys),
                                   tuple(tuple(_cell(record.get(key)) for key in keys) for record in records)))
    return tables


def _is_findings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _header(key: str) -> str:
    """``diameter_mm`` as "diameter (mm)", ``volume_mm3`` as "volume (mm³)"."""
    words = key.split("_")
    if len(words) > 1 and words[-1].lower() in _UNITS:
        return f"{' '.join(words[:-1])} ({_UNITS[words[-1].lower()]})"
    return " ".join(words)


def _cell(value: object) -> str:
    """A measurement as people read it: 28.2, 5519, 0.999; "-" for none; lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple, dict)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key} {_cell(item)}" for key, item in value.items())
    if isinstance(value, int):
        return str(value)
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 1 else f"{value:.3f}"


def _rows(table: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_rows(value, f"{name} "))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(map(str, value)) or "-"))
        else:
            rows.append((name, str(value)))
    return rows


@dataclass(frozen=True)
class NotifyRow:
    """A ``[[notify]]`` target and where it stands (the web page, ``radnode notify``, /health)."""

    name: str
    kind: str
    #: the webhook's address without its query, or "smtp host:port -> recipients"
    where: str
    events: tuple[str, ...]
    state: TargetState


def notify_rows(config: Config, index: Index) -> list[NotifyRow]:
    return [NotifyRow(t.name, t.kind, _notify_where(t), t.events, index.target_state(t.name)) for t in config.notify]


def _notify_where(target: NotifyTarget) -> str:
    if target.url is not None:
        return shown_url(target.url)
    return f"smtp {target.smtp_host}:{target.smtp_port} -> {', '.join(target.to)}"


def notify_summary(row: NotifyRow) -> str:
    """One line: last sent, pending and dead, and the latest error while it lasts."""
    line = f"last sent {when(row.state.last_sent)}, {row.state.pending} pending, {row.state.dead} dead"
    if row.state.last_error:
        line += f"; failing since a try at {when(row.state.last_error_at)}: {row.state.last_error}"
    return line


# ---- actions ---------------------------------------------------------------------------------


def complete_series(index: Index, series_uid: str) -> Outcome:
    row = index.series(series_uid)
    if row is None:
        return Outcome(False, f"no series {series_uid} in the index")
    if not index.force_series_complete(series_uid):
        return Outcome(False, f"series {series_uid} is not receiving (it is {row.state}); nothing to complete")
    return Outcome(True, f"series {series_uid}: complete; the running node routes it within a second")


def complete_study(index: Index, study_uid: str) -> Outcome:
    if not index.series_of_study(study_uid):
        return Outcome(False, f"no study {study_uid} in the index")
    count = index.force_study(study_uid)
    return Outcome(True, f"study {study_uid}: {count} receiving series completed; its study routes decide now "
                         "(they run with the roles filled, or fail naming a missing required role)")


def retry_deliveries(index: Index, delivery_id: int | None = None) -> Outcome:
    """Every dead delivery, or one: a wrong id is told apart from a delivery that is not dead,
    so that the administrator knows whether to look again at the id or at the delivery."""
    if delivery_id is None:
        return Outcome(True, f"{index.retry_dead_deliveries()} dead deliveries queued again")
    delivery = index.delivery(delivery_id)
    if delivery is None:
        return Outcome(False, f"no delivery {delivery_id} (radnode deliveries lists them)")
    if not index.retry_dead_deliveries(delivery_id):
        return Outcome(False, f"delivery {delivery_id} is {delivery.state}, not dead: {_not_dead(delivery)}")
    return Outcome(True, f"delivery {delivery_id} to {delivery.destination} queued again")


def _not_dead(delivery: Delivery) -> str:
    if delivery.state == DeliveryState.SENT:
        return f"{delivery.destination} has its results since {when(delivery.sent_at)}; nothing to retry"
    return f"the node tries it again by itself at {when(delivery.next_attempt_at)}"


def retry_job(index: Index, job_id: int) -> Outcome:
    job = index.job(job_id)
    if job is None:
        return Outcome(False, f"no job {job_id} (radnode jobs lists them)")
    if not index.requeue_job(job_id):
        return Outcome(False, f"job {job_id} is {job.state}, not failed: only a failed job is queued again")
    return Outcome(True, f"job {job_id} queued again")


def cancel_job(index: Index, job_id: int) -> Outcome:
    if not index.cancel_job(job_id):
        return Outcome(False, f"job {job_id} is not queued (only a queued job can be cancelled)")
    return Outcome(True, f"job {job_id} cancelled (failed, 'cancelled by the administrator'); "
                         "retry re-queues it")


def cancel_backfill(index: Index, backfill_id: int) -> Outcome:
    """A backfill, its studies not yet retrieved and its queued jobs are cancelled."""
    jobs = index.cancel_backfill(backfill_id)
    if jobs is None:
        backfill = index.backfill(backfill_id)
        state = "does not exist" if backfill is None else f"has already ended ({backfill.state.value})"
        return Outcome(False, f"backfill {backfill_id} {state}")
    return Outcome(True, f"backfill {backfill_id} cancelled, with {jobs} queued jobs; studies already run "
                         "keep their results")


# ---- route test ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteVerdict:
    route: str
    matched: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class FileRoutes:
    """The routes one series (represented by its first file under the path) would take; ``error``
    says why a file was not read as DICOM."""

    path: Path
    series_uid: str = ""
    modality: str = ""
    description: str = ""
    verdicts: tuple[RouteVerdict, ...] = ()
    error: str = ""


def route_test(config: Config, path: Path, roots: Sequence[Path] | None = None) -> list[FileRoutes]:
    """Each series under ``path`` (a file or a folder) against every configured route. With
    ``roots`` (the web page), only files that really lie under one of them are read, so that a
    link inside a root does not lead elsewhere."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    readable = [f for f in files if not _index_file(config, f) and (roots is None or under_roots(f, roots))]
    return _route_test(config, ((file, file) for file in readable))


def under_roots(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path``, its links and ".." resolved, lies in one of ``roots``."""
    real = path.resolve()
    return any(real.is_relative_to(root.resolve()) for root in roots)


def _index_file(config: Config, path: Path) -> bool:
    """The node's own index (and its -wal, -shm, -journal) is never opened by a route test: in the
    node's process, closing any descriptor of that file drops SQLite's POSIX locks on it."""
    index = config.node.index_path.resolve()
    real = path.resolve()
    return real.parent == index.parent and real.name.startswith(index.name)


def route_test_uploads(config: Config, uploads: list[tuple[str, bytes]]) -> list[FileRoutes]:
    """The same verdicts for files a browser uploaded (name, bytes); they are read in memory and
    never written to the node's disk."""
    return _route_test(config, ((Path(name), io.BytesIO(data)) for name, data in uploads))


def _route_test(config: Config, sources: Iterable[tuple[Path, Path | BinaryIO]]) -> list[FileRoutes]:
    """The router's own ``check`` on the first header of each series: the page and ``radnode
    route-test`` say what the running node would decide."""
    from node.route.router import Router

    router = Router(config)
    seen: set[str] = set()
    found: list[FileRoutes] = []
    for name, source in sources:
        try:
            header = pydicom.dcmread(source, stop_before_pixels=True)
        except Exception as error:  # noqa: BLE001 (any unreadable file is an answer, not a crash)
            found.append(FileRoutes(name, error=f"not a DICOM file ({type(error).__name__}: {error})"))
            continue
        series = str(header.get("SeriesInstanceUID", ""))
        if series in seen:
            continue
        seen.add(series)
        verdicts = tuple(RouteVerdict(c.route, c.matched, tuple(c.reasons)) for c in router.check(header))
        found.append(FileRoutes(name, series, str(header.get("Modality", "?")),
                                str(header.get("SeriesDescription", "")), verdicts))
    return found
