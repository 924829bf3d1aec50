"""The index rows of acknowledged instances, committed together: the receiver's group commit.

A success status promises what the spool holds: the instance's file fsynced and renamed into its
series folder, and the folder fsynced. Its index row follows within ``DELAY_SECONDS``, committed
in one SQLite transaction with the others that came meanwhile (one commit per image was a third
of the receiver's system calls). An association's rows are committed before it is marked closed,
so completion never settles a series without them; a receiver that dies first leaves files
without rows, which ``node.operate.reconcile.reindex_open_associations`` indexes again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node import logs
from node.index.store import Index, InstanceRecord

#: How long a row may wait for others before it is committed.
DELAY_SECONDS = 0.05
#: Rows committed at once, whatever the delay (bounds one transaction).
MOST_ROWS = 100


class RowBatch:
    """The rows one receiver process has acknowledged but not yet committed. The thread that adds
    a row commits the batch once its oldest row is due, and a thread of its own commits a batch
    that nothing followed. ``lock`` guards the process's index connection (its other writes too)."""

    def __init__(self, index: Index, lock: threading.RLock, on_replaced: Callable[[Path], None]) -> None:
        self.index = index
        self.lock = lock
        self._on_replaced = on_replaced
        self._rows: list[tuple[InstanceRecord, str | None]] = []
        self._oldest = 0.0  # when the oldest queued row was queued (time.monotonic)
        self._failing = False
        self._due = threading.Event()
        threading.Thread(target=self._commit_when_due, name="index-rows", daemon=True).start()

    def add(self, record: InstanceRecord, association: str | None) -> None:
        """Queue one instance's row. While the index refuses commits (or once ``MOST_ROWS`` wait)
        it is committed now, and a refusal raises: the caller refuses that instance."""
        row, now = (record, association), time.monotonic()
        with self.lock:
            if not self._rows:
                self._oldest = now
                self._due.set()
            self._rows.append(row)
            if not self._failing and len(self._rows) < MOST_ROWS and now - self._oldest < DELAY_SECONDS:
                return
            try:
                self.commit()
            except sqlite3.Error:
                self._rows.remove(row)
                raise

    def commit(self) -> None:
        """Commit every queued row now (raises sqlite3.Error; the rows stay queued)."""
        with self.lock:
            rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                replaced = self.index.record_instances(rows)
            except sqlite3.Error:
                self._rows[:0] = rows
                self._failing = True
                raise
            self._failing = False
        for path in replaced:
            if path is not None:
                self._on_replaced(path)

    def commit_logged(self) -> None:
        """``commit``, a refusal logged: the rows wait for the next commit (or a reconcile)."""
        try:
            self.commit()
        except (sqlite3.Error, OSError) as error:
            logs.error("store.failed", reason=f"index: {error}")

    def _commit_when_due(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            time.sleep(DELAY_SECONDS)
            with self.lock:
                due = bool(self._rows) and time.monotonic() - self._oldest >= DELAY_SECONDS
            if due:
                self.commit_logged()
            with self.lock:
                if self._rows and self._failing:
                    self._due.set()  # tried again after the next delay
