"""The index's SQLite file: its schema (and how an index an older radnode made is brought to
it at open), how it is opened (WAL mode, owner only) and the one way a change is made.

Receivers, completion, the scheduler, workers and the dispatcher run in different processes and
talk only through this file. Each state change is one short ``BEGIN IMMEDIATE`` transaction, so two
processes never see half a change, and a restart finds every series, job and delivery where
it was left. Each concern of the index is a class over this ``Database`` (``node.index.store`` names
them); a part of the node that needs one concern takes that class, not the whole index.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from node.index import states
from node.index.doorbell import Topic, ring

#: Notification events are written by triggers, in the transaction of the state change they
#: tell of (``node.index.notifications``): a random id each (receivers deduplicate by it) and the time.
_EVENT_ID = "lower(hex(randomblob(16)))"
_NOW = "(julianday('now') - 2440587.5) * 86400.0"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_last_received ON studies(last_received);
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
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_received ON instances(received_at);
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
CREATE INDEX IF NOT EXISTS associations_closed ON associations(closed_at);
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
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_pipeline_id ON jobs(pipeline, id);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
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
CREATE INDEX IF NOT EXISTS deliveries_state_id ON deliveries(state, id);
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
CREATE INDEX IF NOT EXISTS route_notes_created ON route_notes(created_at);
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
CREATE TABLE IF NOT EXISTS notify_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    job_id INTEGER,
    delivery_id INTEGER,
    subject TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    episode TEXT UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event INTEGER NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.NOTIFICATIONS)},
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    tried_at REAL,
    UNIQUE (event, target)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(target, state, next_attempt_at);
CREATE TRIGGER IF NOT EXISTS notify_job_failed AFTER UPDATE OF state ON jobs
WHEN NEW.state = '{states.JobState.FAILED}' AND OLD.state <> '{states.JobState.FAILED}'
BEGIN
    INSERT INTO notify_events(event_id, kind, job_id, detail, created_at)
    VALUES ({_EVENT_ID}, 'job_failed', NEW.id, substr(NEW.outcome, 1, 500), {_NOW});
END;
CREATE TRIGGER IF NOT EXISTS notify_job_created_failed AFTER INSERT ON jobs
WHEN NEW.state = '{states.JobState.FAILED}'
BEGIN
    INSERT INTO notify_events(event_id, kind, job_id, detail, created_at)
    VALUES ({_EVENT_ID}, 'job_failed', NEW.id, substr(NEW.outcome, 1, 500), {_NOW});
END;
CREATE TRIGGER IF NOT EXISTS notify_delivery_ended AFTER UPDATE OF state ON deliveries
WHEN NEW.state IN ('{states.DeliveryState.SENT}', '{states.DeliveryState.DEAD}') AND OLD.state <> NEW.state
BEGIN
    INSERT INTO notify_events(event_id, kind, job_id, delivery_id, subject, detail, created_at)
    VALUES ({_EVENT_ID}, CASE NEW.state WHEN '{states.DeliveryState.SENT}' THEN 'result_delivered'
            ELSE 'delivery_dead' END, NEW.job_id, NEW.id, NEW.destination, NEW.last_error, {_NOW});
END;
CREATE TABLE IF NOT EXISTS destination_checks (
    destination TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    failing_since REAL
);
CREATE TABLE IF NOT EXISTS backfills (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL {states.schema_check(states.BACKFILLS)},
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL,
    not_found TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS backfill_studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    backfill_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    accession TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL {states.schema_check(states.RETRIEVES)},
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    found_at REAL NOT NULL,
    retrieve_started_at REAL,
    retrieved_at REAL,
    instances INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    UNIQUE (backfill_id, study_uid)
);
CREATE INDEX IF NOT EXISTS backfill_studies_study ON backfill_studies(study_uid);
CREATE INDEX IF NOT EXISTS backfill_studies_state ON backfill_studies(state, id);
CREATE TABLE IF NOT EXISTS problems (
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, subject, generation)
);
CREATE INDEX IF NOT EXISTS problems_at ON problems(at);
CREATE INDEX IF NOT EXISTS notify_events_job ON notify_events(job_id);
"""

#: Columns added after the first release: (table, column, definition). An index made by an
#: older radnode gets them at open, so an upgrade needs no manual step. A change to anything
#: else in a table (a state added to a machine, so its CHECK; a constraint) needs no entry:
#: opening the index rebuilds each table whose definition differs from the schema's
#: (``tables_to_rebuild``, ``Database._migrate``).
_ADDED_COLUMNS = (
    ("jobs", "traceback", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "summary", "TEXT NOT NULL DEFAULT '{}'"),
    ("deliveries", "retry_from", "REAL"),
    ("jobs", "lost_attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "transfer_syntax", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "heartbeat_at", "REAL"),
    ("jobs", "lane", "TEXT NOT NULL DEFAULT 'live'"),
    ("backfills", "not_found", "TEXT NOT NULL DEFAULT '[]'"),
)

#: The index holds patient-linked rows (UIDs, paths): owner only, whatever the umask.
INDEX_MODE = 0o600
#: How long opening the index and each change wait for another process's write lock (s).
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Listing:
    """Which rows of a long listing (jobs, deliveries) people asked for, newest first.

    A year of a busy site is 100,000 jobs: a listing reads one page of them through an index,
    never the table. ``before_id`` pages on (the rows older than that id), ``since`` keeps the
    rows created at or after that time, ``limit`` 0 reads them all.
    """

    state: str | None = None
    pipeline: str | None = None
    since: float | None = None
    before_id: int | None = None
    limit: int = 50

    def where(self, *, pipeline_column: bool = True) -> tuple[str, tuple[object, ...]]:
        """The SQL condition (with its leading WHERE, or empty) and its arguments."""
        terms = [("state = ?", self.state), ("created_at >= ?", self.since), ("id < ?", self.before_id)]
        if pipeline_column:
            terms.append(("pipeline = ?", self.pipeline))
        used = [(term, value) for term, value in terms if value is not None]
        if not used:
            return "", ()
        return "WHERE " + " AND ".join(term for term, _ in used), tuple(value for _, value in used)

    def page(self, *, pipeline_column: bool = True) -> tuple[str, tuple[object, ...]]:
        """``where`` with the newest-first order and the page's limit."""
        where, args = self.where(pipeline_column=pipeline_column)
        limit = f" LIMIT {int(self.limit)}" if self.limit > 0 else ""
        return f"{where} ORDER BY id DESC{limit}", args


class Database:
    """One connection to the index; create one per process (and per thread that writes)."""

    def __init__(self, path: Path, *, durable_commits: bool = True) -> None:
        """``durable_commits=False`` saves the disk flush of every commit; only the receiver uses
        it, because the rows it writes point at fsynced spool files and ``node.operate.reconcile`` writes
        them again after a power cut. Every other state change is fsynced when committed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        _restrict(path)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            _use_wal(self._db)
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Bring an index made by an older radnode to this schema: new tables, added columns,
        and tables whose definition changed rebuilt with their rows. Every change is checked
        again under the write lock: the node's processes and an administrator's command may open
        a new or older index at the same moment, and only the first may make it."""
        self._db.executescript(_SCHEMA)
        if _missing_columns(self._db):
            with self._tx():
                _add_missing_columns(self._db)
        if tables_to_rebuild(self._db):
            with _schema_change(self._db):
                # again under the write lock: another process opening the index may have rebuilt them
                for table in tables_to_rebuild(self._db):
                    _rebuild(self._db, table, _current_tables()[table])

    def close(self) -> None:
        self._db.close()

    def _ring(self, *topics: Topic) -> None:
        """After a commit: wake the node's loops that wait for it (``node.index.doorbell``)."""
        for topic in topics:
            ring(self.path, topic)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _missing_columns(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The added columns (table, column, definition) this index does not have yet."""
    return [(table, column, definition) for table, column, definition in _ADDED_COLUMNS
            if column not in _columns(db, table)]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, definition in _missing_columns(db):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the index in WAL mode (readers and the one writer do not block each other).

    Why the retry: on a new index the switch needs the file to itself, and SQLite answers
    "database is locked" at once, without waiting the busy timeout, while another process is
    opening the same new index (docs/index.md: how often). Once the file is in
    WAL mode, which SQLite keeps in the file, the pragma needs no lock.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class IndexSchemaError(RuntimeError):
    """The index holds rows this radnode's schema refuses, so a table could not be brought to it."""


@dataclass(frozen=True)
class _Table:
    """One table as this radnode's schema makes it."""

    #: its ``CREATE TABLE`` statement, added columns included, as SQLite stores it
    create: str
    columns: tuple[str, ...]
    #: the ``CREATE INDEX`` and ``CREATE TRIGGER`` statements on it (dropped with the table)
    companions: tuple[str, ...]


@cache
def _current_tables() -> dict[str, _Table]:
    """The tables a new index gets, read back from a scratch database made the way an index
    is (the schema, then the added columns), so that they compare with an index file's own
    ``sqlite_master`` text like for like: SQLite stores an added column inside the table's
    ``CREATE`` text."""
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.executescript(_SCHEMA)
        _add_missing_columns(scratch)
        rows = scratch.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                               " ORDER BY rowid").fetchall()
        return {name: _Table(sql, _columns(scratch, name),
                             tuple(s for kind, _, owner, s in rows if kind != "table" and owner == name))
                for kind, name, _, sql in rows if kind == "table" and name != "sqlite_sequence"}
    finally:
        scratch.close()


def tables_to_rebuild(db: sqlite3.Connection) -> list[str]:
    """The tables of an index file whose definition (columns, CHECKs, other constraints)
    differs from this radnode's schema. A table with a column this schema does not know was
    made by a newer radnode: it is left as it is, for a rebuild would drop that column."""
    stored = {r[0]: r[1] for r in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    return [name for name, table in _current_tables().items()
            if name in stored and _definition(stored[name]) != _definition(table.create)
            and set(_columns(db, name)) <= set(table.columns)]


def _definition(create: str) -> str:
    """A ``CREATE TABLE`` statement from its opening parenthesis on (a renamed table's name is
    stored quoted), whitespace evened out."""
    body = create[create.index("("):]
    return re.sub(r"\s*([(),])\s*", r"\1", re.sub(r"\s+", " ", body)).strip()


def _columns(db: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(r[1] for r in db.execute(f"PRAGMA table_info({table})"))


@contextmanager
def _schema_change(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction for rebuilding tables, the way SQLite's documentation gives for a
    schema change ALTER TABLE cannot make: foreign keys off meanwhile (a pragma that has no
    effect inside a transaction), and the rename of the new table leaving other tables'
    triggers alone (``legacy_alter_table``: a trigger that names the table would otherwise
    fail the rename while the old table is gone)."""
    foreign_keys = int(db.execute("PRAGMA foreign_keys").fetchone()[0])
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("PRAGMA legacy_alter_table=ON")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if foreign_keys and db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise IndexSchemaError("rebuilding the index's tables would break a foreign key; "
                                       "nothing was changed")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.execute("PRAGMA legacy_alter_table=OFF")
        db.execute(f"PRAGMA foreign_keys={foreign_keys}")


def _rebuild(db: sqlite3.Connection, name: str, table: _Table) -> None:
    """Bring one table to ``table``'s definition keeping every row: a new table, the rows
    copied, the old one dropped, the new one renamed, its indexes and triggers made again, and
    an AUTOINCREMENT counter kept where it was (a job's id is never given out twice). Runs in
    the caller's transaction."""
    scratch = f"{name}__rebuilt"
    kept = ", ".join(c for c in _columns(db, name) if c in table.columns)
    counter = _sequence(db, name)
    db.execute(f"CREATE TABLE {scratch} {table.create[table.create.index('('):]}")
    try:
        db.execute(f"INSERT INTO {scratch} ({kept}) SELECT {kept} FROM {name}")
    except sqlite3.IntegrityError as refused:
        raise IndexSchemaError(
            f"the index's table {name!r} holds rows this radnode's schema refuses ({refused}); "
            "it was probably written by a newer radnode: run that version again, or restore the "
            "index from before the upgrade") from refused
    db.execute(f"DROP TABLE {name}")
    db.execute(f"ALTER TABLE {scratch} RENAME TO {name}")
    for statement in table.companions:
        db.execute(statement)
    counters = [c for c in (counter, _sequence(db, name)) if c is not None]
    if counters:
        db.execute("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, max(counters)))


def _sequence(db: sqlite3.Connection, table: str) -> int | None:
    """The AUTOINCREMENT counter of ``table`` (None: it has none, or gave out no id yet)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() is None:
        return None
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return None if row is None else int(row[0])


def _restrict(path: Path) -> None:
    """Create the index (and chmod an older one) owner-only before SQLite opens it: SQLite gives
    its -wal and -shm files the database's mode. Another user's index is left as it is. The file
    is opened only when new (``O_EXCL``), never beside a live connection: closing any descriptor
    drops this process's POSIX locks on the file, SQLite's included, and another connection would
    then unlink the WAL under us. An existing file's mode is set by name (``chmod`` opens nothing).
    """
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
