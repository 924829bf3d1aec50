"""The index's SQLite file: its schema, how it is opened (WAL mode, owner only) and the one way
a change is made.

Receivers, the scheduler, workers and the dispatcher run in different processes and talk only
through this file. Each state change is one short ``BEGIN IMMEDIATE`` transaction, so two
processes never see half a change, and a restart finds every series, job and delivery where
it was left. Each concern of the index is a class over this ``Database`` (``node.index.store`` names
them); a part of the node that needs one concern takes that class, not the whole index.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.index import states

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.SERIES)},
    generation INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    sample_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
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
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS node_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    calling_aet TEXT NOT NULL,
    address TEXT NOT NULL,
    receiver_pid INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL
);
CREATE TABLE IF NOT EXISTS association_series (
    association TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    PRIMARY KEY (association, series_uid)
);
CREATE INDEX IF NOT EXISTS association_series_series ON association_series(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    destinations TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL {states.schema_check(states.JOBS)},
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    deadline REAL,
    worker_pid INTEGER,
    UNIQUE (route, subject, generation)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority);
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    PRIMARY KEY (job_id, path)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.DELIVERIES)},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (job_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS result_objects (
    job_id INTEGER NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS supersessions (
    job_id INTEGER PRIMARY KEY,
    replaces INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS route_notes (
    route TEXT NOT NULL,
    subject TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    note TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (route, subject, generation)
);
CREATE TABLE IF NOT EXISTS forced_studies (
    study_uid TEXT PRIMARY KEY,
    forced_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    delivery_id INTEGER NOT NULL,
    at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_attempts_delivery ON delivery_attempts(delivery_id);
CREATE TABLE IF NOT EXISTS jobs_requeued (
    job_id INTEGER PRIMARY KEY,
    queued_at REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS job_queued_again AFTER UPDATE OF state ON jobs
WHEN NEW.state = '{states.JobState.QUEUED}' AND OLD.state <> '{states.JobState.QUEUED}'
BEGIN
    INSERT OR REPLACE INTO jobs_requeued(job_id, queued_at)
    VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TABLE IF NOT EXISTS destination_checks (
    destination TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    failing_since REAL
);
CREATE TABLE IF NOT EXISTS problems (
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, subject, generation)
);
"""

#: Columns added after the first release: (table, column, definition). An index made by an
#: older radnode gets them at open, so an upgrade needs no manual step.
_ADDED_COLUMNS = (
    ("jobs", "traceback", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "summary", "TEXT NOT NULL DEFAULT '{}'"),
    ("deliveries", "retry_from", "REAL"),
    ("jobs", "lost_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "transfer_syntax", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "heartbeat_at", "REAL"),
)

#: The index holds patient-linked rows (UIDs, paths): owner only, whatever the umask.
INDEX_MODE = 0o600


class Database:
    """One connection to the index; create one per process (and per thread that writes)."""

    def __init__(self, path: Path, *, durable_commits: bool = True) -> None:
        """``durable_commits=False`` saves the disk flush of every commit; only the receiver uses
        it, because the rows it writes point at fsynced spool files and ``node.operate.reconcile`` writes
        them again after a power cut. Every other state change is fsynced when committed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        _restrict(path)
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, column, definition in _ADDED_COLUMNS:
            present = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _restrict(path: Path) -> None:
    """Create the index (and chmod an older one) owner-only before SQLite opens it: SQLite gives
    its -wal and -shm files the database file's mode. An index this user does not own (an
    administrator reading another account's node) is left as it is.

    The file is opened here only when it does not exist yet (``O_EXCL``), never beside a live
    connection: on Linux, closing any descriptor of a file drops every POSIX lock this process
    holds on it, SQLite's shared lock included. Without that lock an admin command closing its
    own connection believes it is the last one, checkpoints and unlinks the WAL, and this
    process goes on committing into the deleted file. The mode of an existing file is set by
    its name (``chmod`` opens nothing)."""
    try:
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, INDEX_MODE))
        except FileExistsError:
            pass
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists() and name.stat().st_mode & 0o777 != INDEX_MODE:
                os.chmod(name, INDEX_MODE)
    except PermissionError:
        pass
