"""An index file an older radnode made opens in this one with every row, under this schema.

The files are written with sqlite3 directly, the way the older release's schema made them, so
the tests do not depend on how this radnode would write them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.index.db import IndexSchemaError, tables_to_rebuild
from node.index.states import JobState
from node.index.store import Index

#: The first release's tables, but with a jobs CHECK that lacks ``failed``: the schema of a
#: release from before a state was added to the jobs machine. CREATE statements as written then.
OLDER_SCHEMA = """
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE TABLE series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete', 'routed')),
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    sample_path TEXT NOT NULL
);
CREATE INDEX series_state ON series(state);
CREATE INDEX series_study ON series(study_uid);
CREATE TABLE instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    association TEXT
);
CREATE INDEX instances_series ON instances(series_uid);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    destinations TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    deadline REAL,
    worker_pid INTEGER,
    UNIQUE (route, subject, generation)
);
CREATE INDEX jobs_state ON jobs(state, priority);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'retrying', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (job_id, destination)
);
"""

#: the jobs CHECK of the first release, which had all four states
FIRST_RELEASE_JOB_STATES = "('queued', 'running', 'done', 'failed')"

SERIES_UID, STUDY_UID = "1.2.3.4", "1.2.3"
INSTANCE_UIDS = ("1.2.3.4.1", "1.2.3.4.2")


def job_row(job_id: int, state: str) -> tuple[object, ...]:
    return (job_id, "route-a", "threshold", f"{SERIES_UID}.{job_id}", STUDY_UID, 0, "{}", '["pacs"]',
            state, 100.0 + job_id)


def write_older_index(path: Path, schema: str = OLDER_SCHEMA) -> None:
    """An index as the older release left it: a routed series of two instances, a done job
    delivered, a queued job, and a third job since removed (the jobs counter stands at 3)."""
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute("INSERT INTO studies VALUES (?, 1.0, 2.0)", (STUDY_UID,))
    db.execute("INSERT INTO series (series_uid, study_uid, modality, state, generation, instance_count,"
               " first_received, last_received, completed_at, sample_path)"
               " VALUES (?, ?, 'CT', 'routed', 0, 2, 1.0, 2.0, 3.0, '/spool/1.dcm')", (SERIES_UID, STUDY_UID))
    for number, uid in enumerate(INSTANCE_UIDS, 1):
        db.execute("INSERT INTO instances VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1',"
                   " ?, 1000, ?, NULL)", (uid, SERIES_UID, STUDY_UID, f"/spool/{number}.dcm", float(number)))
    jobs = "INSERT INTO jobs (id, route, pipeline, subject, study_uid, generation, inputs, destinations," \
           " state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for job_id, state in ((1, "done"), (2, "queued"), (3, "queued")):
        db.execute(jobs, job_row(job_id, state))
    db.execute("DELETE FROM jobs WHERE id = 3")
    db.execute("INSERT INTO deliveries (job_id, destination, state, next_attempt_at, created_at, sent_at)"
               " VALUES (1, 'pacs', 'sent', 5.0, 4.0, 5.0)")
    db.commit()
    db.close()


def jobs_counter(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()[0])
    finally:
        db.close()


def root_pages(path: Path) -> dict[str, int]:
    """Each table's first page: a rebuilt table gets a new one, a table left alone keeps its own."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'").fetchall())
    finally:
        db.close()


def rebuilt_at_open(path: Path) -> set[str]:
    """The tables that opening the index with this radnode rebuilt."""
    before = root_pages(path)
    Index(path).close()
    after = root_pages(path)
    return {name for name, page in before.items() if after[name] != page}


def rebuild_pending(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return tables_to_rebuild(db)
    finally:
        db.close()


def test_the_older_check_refuses_failed_which_is_what_the_migration_must_change(tmp_path):
    path = tmp_path / "index.sqlite"
    write_older_index(path)
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        db.execute("UPDATE jobs SET state = 'failed' WHERE id = 2")
    db.close()


def test_an_index_whose_jobs_check_lacks_failed_keeps_its_rows_and_takes_failed_after_open(tmp_path):
    path = tmp_path / "index.sqlite"
    write_older_index(path)
    assert rebuilt_at_open(path) == {"jobs"}  # the other tables, as the first release made them, match

    index = Index(path)
    try:
        assert [(j.id, j.state) for j in index.jobs()] == [(1, JobState.DONE), (2, JobState.QUEUED)]
        queued = index.job(2)
        assert queued is not None and (queued.subject, queued.destinations, queued.created_at) == (
            f"{SERIES_UID}.2", ["pacs"], 102.0)
        assert queued.traceback == "" and queued.lost_attempts == 0  # added columns, defaults
        series = index.series(SERIES_UID)
        assert series is not None and series.instance_count == 2
        assert all(index.instance(uid) is not None for uid in INSTANCE_UIDS)
        assert [(d.job_id, d.state) for d in index.deliveries()] == [(1, "sent")]

        assert index.cancel_job(2)  # queued -> failed: the state the older CHECK refused
        assert index.job(2).state == JobState.FAILED
        assert index.requeue_job(2)  # failed -> queued: the rebuilt table's trigger notes it
        assert 2 in index.requeued_at()
        indexes = {r[0] for r in index._db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'jobs'")}
        assert {"jobs_state", "job_queued_again"} <= indexes
    finally:
        index.close()
    assert jobs_counter(path) == 3, "a rebuilt table must not give out the id of a removed job again"
    assert rebuild_pending(path) == []  # the next open rebuilds nothing


def test_an_index_of_the_first_release_opens_without_a_table_rebuilt(tmp_path):
    """An upgrade of a site rewrites no table (the instances may be millions of rows): a table
    the first release made, with the columns added since, matches this schema."""
    path = tmp_path / "index.sqlite"
    write_older_index(path, OLDER_SCHEMA.replace("('queued', 'running', 'done')", FIRST_RELEASE_JOB_STATES))
    assert rebuilt_at_open(path) == set()
    assert rebuild_pending(path) == []


def test_rows_in_a_state_this_schema_lacks_stop_the_open_with_what_to_do_and_change_nothing(tmp_path):
    """An index a newer radnode wrote, with a job state this one does not know."""
    path = tmp_path / "index.sqlite"
    newer = OLDER_SCHEMA.replace("('queued', 'running', 'done')", "('queued', 'running', 'done', 'failed', 'paused')")
    write_older_index(path, newer)
    db = sqlite3.connect(path)
    db.execute("UPDATE jobs SET state = 'paused' WHERE id = 2")
    db.commit()
    db.close()
    with pytest.raises(IndexSchemaError, match="newer radnode: run that version again"):
        Index(path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT id, state FROM jobs ORDER BY id").fetchall() == [(1, "done"), (2, "paused")]
        assert "'paused'" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    finally:
        db.close()


def test_a_table_with_a_column_this_schema_lacks_is_left_as_it_is(tmp_path):
    """A newer radnode's column would be lost in a rebuild; the table keeps it, and its rows."""
    path = tmp_path / "index.sqlite"
    write_older_index(path)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE deliveries ADD COLUMN newer_column TEXT NOT NULL DEFAULT 'kept'")
    db.commit()
    db.close()
    index = Index(path)
    try:
        row = index._db.execute("SELECT newer_column FROM deliveries WHERE job_id = 1").fetchone()
        assert row[0] == "kept"
    finally:
        index.close()
