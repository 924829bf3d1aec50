"""An index filled with a busy site's bookkeeping (synthetic rows), for the year-of-traffic bench
(``bench/year_of_traffic.py``) and its small copy in CI (``tests/operate/test_year_of_traffic.py``).

Each study is one CT series with ``instances`` instance rows, one job of a shipped pipeline,
``results`` result rows and one sent delivery, spread evenly over ``days`` days up to now. The
studies of the last ``files_days`` days keep small header-only DICOM files in the spool (each
series' sample file), as retention leaves a site's recent studies; older studies keep only their
bookkeeping rows. Rows are written with plain SQL in one transaction per day: the node's own
writes are one transaction per instance, which would take hours for a year.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from node.index.store import Index

DAY = 86_400.0
#: The shipped pipelines the jobs are spread over, in turn.
PIPELINES = ("nodule-detection", "ct-denoise", "tumor-segmentation")


@dataclass(frozen=True)
class Traffic:
    """How much of a site's traffic to write (defaults: 200 studies a day for a year)."""

    days: int = 365
    studies_per_day: int = 200
    instances: int = 270
    results: int = 5
    files_days: int = 7

    @property
    def studies(self) -> int:
        return self.days * self.studies_per_day


def fill(index_path: Path, spool: Path, traffic: Traffic, now: float | None = None, first_day: int = 0) -> None:
    """Write ``traffic``'s rows into the index at ``index_path`` (made by ``Index`` first, so
    the schema is the node's own) and the recent studies' sample files under ``spool``; the days
    end at ``now`` and are numbered from ``first_day`` (a later day's studies get new UIDs)."""
    Index(index_path).close()
    now = time.time() if now is None else now
    db = sqlite3.connect(index_path, isolation_level=None)
    try:
        for day in range(traffic.days):
            db.execute("BEGIN")
            start = now - (traffic.days - day) * DAY
            recent = traffic.days - day <= traffic.files_days
            for k in range(traffic.studies_per_day):
                number = (first_day + day) * traffic.studies_per_day + k
                _study(db, spool, traffic, number, start + k * DAY / traffic.studies_per_day, recent)
            db.execute("COMMIT")
    finally:
        db.close()


def _study(db: sqlite3.Connection, spool: Path, traffic: Traffic, number: int, at: float, recent: bool) -> None:
    study, series = f"1.2.826.0.1.3680043.10.1.{number}", f"1.2.826.0.1.3680043.10.2.{number}"
    folder = spool / "instances" / study / series
    sample = folder / f"{series}.1.dcm"
    db.execute("INSERT INTO studies VALUES (?, ?, ?)", (study, at, at + 60))
    db.execute("INSERT INTO series(series_uid, study_uid, modality, state, generation, instance_count,"
               " first_received, last_received, completed_at, sample_path) VALUES (?, ?, 'CT', 'routed', 0, ?, ?, ?, ?, ?)",
               (series, study, traffic.instances, at, at + 60, at + 62, str(sample)))
    db.executemany(
        "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, 2048, ?, NULL)",
        [(f"{series}.{i}", series, study, CTImageStorage, ExplicitVRLittleEndian, str(folder / f"{series}.{i}.dcm"),
          at + 60 * i / traffic.instances) for i in range(1, traffic.instances + 1)])
    pipeline = PIPELINES[number % len(PIPELINES)]
    job = db.execute(
        "INSERT INTO jobs(route, pipeline, subject, study_uid, generation, inputs, destinations, state, attempts,"
        " outcome, created_at, started_at, finished_at, summary) VALUES (?, ?, ?, ?, 0, ?, '[\"pacs\"]', 'done', 1,"
        " 'done', ?, ?, ?, ?)",
        (pipeline, pipeline, series, study, json.dumps({"series": series}), at + 62, at + 63, at + 80,
         json.dumps({"device": "cpu", "seconds": {"load": 1.0, "inference": 15.0}}))).lastrowid
    db.executemany("INSERT INTO results(job_id, path, sop_uid, sop_class, transfer_syntax) VALUES (?, ?, ?, ?, ?)",
                   [(job, str(spool / "results" / str(job) / f"{r}.dcm"), f"{series}.9{r}", CTImageStorage,
                     ExplicitVRLittleEndian) for r in range(traffic.results)])
    db.execute("INSERT INTO deliveries(job_id, destination, state, attempts, next_attempt_at, created_at, sent_at)"
               " VALUES (?, 'pacs', 'sent', 1, ?, ?, ?)", (job, at + 80, at + 80, at + 82))
    if recent:
        sample_file(sample, study, series)


def sample_file(path: Path, study: str, series: str) -> None:
    """A header-only CT instance: what the studies page and the completion loop read of a series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"{series}.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{series}.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
    ds.StudyDescription, ds.SeriesDescription, ds.StudyDate = "CHEST", "LUNG 1.0", "20261126"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
