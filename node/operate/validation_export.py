"""The validation export of a backfill (``radnode backfill --report out.csv``, the backfills page):
one row per study and finding, to set beside the radiologists' reports.

The findings are read from the TID 1500 reports the pipelines wrote (``node.operate.findings``),
the model from the job's summary. The accession number is in the CSV because the site asked for
the export to match its reports; it is identifying, so it appears nowhere else (no log line, no
page). Patient name and ID are added only when asked (``--patient-data``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields

import pydicom
from pydicom.errors import InvalidDicomError

from node.index.backfills import BackfillStudy
from node.index.states import JobState, RetrieveState
from node.index.store import Index, Job
from node.operate.findings import FindingRecord, finding_records
from node.result_formats import format_of

#: units of a finding's size; any other measurement with a unit goes with the other values
_SIZE_UNITS = ("mm", "mm2", "mm3", "cm", "cm2", "cm3", "ml", "mL", "l")
_PATIENT = ("PatientName", "PatientID")
#: the export's column of a listed key the PACS did not know
_LISTED_COLUMN = {"AccessionNumber": "accession", "StudyInstanceUID": "study_uid"}


@dataclass(frozen=True)
class Row:
    """One line of the export: a finding of a study's job (a study without findings, or whose
    job did not run, has one line with the finding columns empty and the outcome saying why)."""

    backfill: str
    accession: str
    study_uid: str
    route: str
    pipeline: str
    job: str
    model: str
    model_sha256: str
    finding_id: str
    finding: str
    location: str
    size: str
    score: str
    other_values: str
    outcome: str
    retrieved_at: str
    job_started_at: str
    job_finished_at: str
    delivered_at: str


def columns(with_patient_data: bool = False) -> list[str]:
    names = [f.name for f in fields(Row)]
    return [*names[:2], *(_PATIENT if with_patient_data else ()), *names[2:]]


def rows(index: Index, backfill_id: int, with_patient_data: bool = False) -> Iterator[dict[str, str]]:
    """The export's rows, study by study in the order the query found them."""
    for study in index.backfill_studies(backfill_id):
        patient = _patient(index, study.study_uid) if with_patient_data else {}
        for row in _study_rows(index, study):
            yield {**vars(row), **patient}
    backfill = index.backfill(backfill_id)
    if backfill is None:
        return
    for keyword, value in backfill.not_found:  # the listed keys the PACS did not know, last
        row = _empty(dict(backfill=str(backfill_id), **{_LISTED_COLUMN[keyword]: value}), f"not found at {backfill.source}")
        yield {**vars(row), **(dict.fromkeys(_PATIENT, "") if with_patient_data else {})}


def write_csv(index: Index, backfill_id: int, with_patient_data: bool = False) -> str:
    """The whole export as CSV text (one header line, then the rows)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(with_patient_data), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(index, backfill_id, with_patient_data))
    return out.getvalue()


def _study_rows(index: Index, study: BackfillStudy) -> Iterator[Row]:
    base = dict(backfill=str(study.backfill_id), accession=study.accession, study_uid=study.study_uid,
                retrieved_at=_when(study.retrieved_at))
    jobs = [job for job_id in index.study_jobs(study.study_uid) if (job := index.job(job_id)) is not None]
    if not jobs:
        yield _empty(base, _not_run(study))
        return
    for job in jobs:
        found = _findings(index, job)
        about = dict(base, route=job.route, pipeline=job.pipeline, job=str(job.id),
                     model=" ".join(filter(None, [job.summary.model, job.summary.model_version])),
                     model_sha256=job.summary.model_sha256 or "", outcome=_outcome(job),
                     job_started_at=_when(job.started_at), job_finished_at=_when(job.finished_at),
                     delivered_at=_delivered(index, job))
        if not found:
            yield _empty(about, about["outcome"])
        for record in found:
            yield Row(**{**_blank(), **about, **_finding_columns(record)})


def _findings(index: Index, job: Job) -> list[FindingRecord]:
    if job.state != JobState.DONE:
        return []
    found: list[FindingRecord] = []
    for result in index.results(job.id):
        if format_of(result.sop_class) != "sr":
            continue
        try:
            found += finding_records(pydicom.dcmread(result.path))
        except (OSError, InvalidDicomError):
            continue  # removed by retention: the outcome still says what ran
    return found


def _finding_columns(record: FindingRecord) -> dict[str, str]:
    size = [m.text() for m in record.measurements if m.unit in _SIZE_UNITS]
    score = [m.text() for m in record.measurements if not m.unit]
    other = [v for v in record.values if v not in size and v not in score]
    return dict(finding_id=record.name, finding=record.finding, location=record.site, size="; ".join(size),
                score="; ".join(score), other_values="; ".join(other))


def _blank() -> dict[str, str]:
    return {f.name: "" for f in fields(Row)}


def _empty(about: dict[str, str], outcome: str) -> Row:
    return Row(**{**_blank(), **about, "outcome": outcome})


def _not_run(study: BackfillStudy) -> str:
    if study.state == RetrieveState.RETRIEVED:
        return "retrieved; no route ran for it (yet)"
    if study.state == RetrieveState.FAILED:
        return f"not retrieved: {study.last_error}"
    return f"not run: {study.state.value}"


def _outcome(job: Job) -> str:
    return f"{job.state.value}: {job.outcome}" if job.outcome else job.state.value


def _delivered(index: Index, job: Job) -> str:
    if job.state == JobState.DONE and not job.destinations:
        return "not delivered (deliver = false)"
    return _when(index.delivered_at(job.id))


def _when(moment: float | None) -> str:
    return "" if moment is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(moment))


def _patient(index: Index, study_uid: str) -> dict[str, str]:
    rows = index.series_of_study(study_uid)
    try:
        header = pydicom.dcmread(rows[0].sample_path, stop_before_pixels=True, specific_tags=list(_PATIENT))
    except (OSError, IndexError, InvalidDicomError):
        return dict.fromkeys(_PATIENT, "")
    return {k: str(header.get(k, "")) for k in _PATIENT}
