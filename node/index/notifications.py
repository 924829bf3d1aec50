"""Notification events and their sending to each ``[[notify]]`` target (``node.operate.notify``).

Events are an outbox: a job failing, a delivery sent or dead writes its event by a trigger of
the schema (``node.index.db``) in the very transaction of that state change, so no event is
lost to a crash and none is made for a change that rolled back. Conditions the node watches
(a destination unreachable for a while, the disk low) are one event per episode. Each target
takes the events after its cursor as notifications of its own, which move along the
notification machine (``node.index.states``) until the target answered 2xx or the retry window
closed: a receiver that was down gets each event later, once per event id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from node.index import states
from node.index.db import Database
from node.index.states import NotificationState

_CURSOR = "notify.cursor."


@dataclass(frozen=True)
class Event:
    """Something people are told of: ``kind`` is one of ``node.config.NOTIFY_EVENTS``."""

    id: int
    #: the id receivers deduplicate by (random, 32 hex digits)
    event_id: str
    kind: str
    job_id: int | None
    delivery_id: int | None
    #: the destination of a delivery or an unreachable destination; "spool" for the disk
    subject: str
    #: the error of a failed job or dead delivery, or what the watched condition measured
    detail: str
    created_at: float


@dataclass(frozen=True)
class Notification:
    """One event on its way to one target."""

    id: int
    event: Event
    target: str
    state: NotificationState
    attempts: int
    next_attempt_at: float
    last_error: str
    created_at: float
    sent_at: float | None


@dataclass(frozen=True)
class TargetState:
    """Where a target stands, for the web page, ``radnode notify`` and /health."""

    last_sent: float | None
    #: the error of the latest try, "" when it got through
    last_error: str
    last_error_at: float | None
    pending: int
    dead: int


class NotificationIndex(Database):
    """The event outbox and each target's notifications."""

    def record_event(self, kind: str, subject: str, detail: str, episode: str) -> bool:
        """A watched condition's event, once per ``episode`` (its subject and when it began);
        False: this episode had its event already."""
        with self._tx() as db:
            return db.execute(
                "INSERT OR IGNORE INTO notify_events(event_id, kind, subject, detail, episode, created_at)"
                " VALUES (lower(hex(randomblob(16))), ?, ?, ?, ?, ?)",
                (kind, subject, detail[:500], episode, time.time())).rowcount == 1

    def open_cursor(self, target: str) -> None:
        """A target new to the index starts at the latest event: it is told of what happens from
        now on. The node opens every target's cursor before any event can be written."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO node_state(key, value)"
                       " SELECT ?, COALESCE(MAX(id), 0) FROM notify_events", (_CURSOR + target,))

    def keep_cursors(self, targets: list[str]) -> None:
        """Forget the cursors of targets no longer configured, so that they hold back no clean-up
        (``forget_notifications``); one configured again starts from then."""
        with self._tx() as db:
            db.execute(f"DELETE FROM node_state WHERE key LIKE ? AND key NOT IN ({','.join('?' * len(targets))})",
                       (_CURSOR + "%", *(_CURSOR + name for name in targets)))

    def take_events(self, target: str, kinds: tuple[str, ...]) -> int:
        """The events after ``target``'s cursor that it asked for become its pending notifications,
        and the cursor moves past them, in one transaction; returns how many."""
        now = time.time()
        with self._tx() as db:
            newest = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM notify_events").fetchone()[0])
            row = db.execute("SELECT value FROM node_state WHERE key = ?", (_CURSOR + target,)).fetchone()
            cursor = int(row[0]) if row is not None else newest
            taken = 0
            if newest > cursor:
                taken = db.execute(
                    "INSERT OR IGNORE INTO notifications(event, target, state, next_attempt_at, created_at)"
                    f" SELECT id, ?, ?, ?, ? FROM notify_events WHERE id > ? AND id <= ?"
                    f" AND kind IN ({','.join('?' * len(kinds))})",
                    (target, states.NOTIFICATIONS.check_initial(NotificationState.PENDING), now, now,
                     cursor, newest, *kinds)).rowcount
            db.execute("INSERT INTO node_state(key, value) VALUES (?, ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (_CURSOR + target, str(newest)))
        return taken

    def due_notifications(self, target: str, now: float, limit: int) -> list[Notification]:
        return self._notifications("WHERE n.target = ? AND n.state IN (?, ?) AND n.next_attempt_at <= ?"
                                   " ORDER BY n.id LIMIT ?",
                                   (target, NotificationState.PENDING, NotificationState.RETRYING, now, limit))

    def notifications(self, target: str | None = None) -> list[Notification]:
        if target is None:
            return self._notifications("ORDER BY n.id", ())
        return self._notifications("WHERE n.target = ? ORDER BY n.id", (target,))

    def mark_notification_sent(self, notification_id: int) -> None:
        with self._tx() as db:
            states.apply(db, states.NOTIFICATIONS, states.NOTIFY_SEND, notification_id, {
                "sent_at": time.time(), "tried_at": time.time(), "attempts": states.Sql("attempts + 1"), "last_error": ""})

    def mark_notification_failed(self, notification_id: int, error: str, next_attempt_at: float | None) -> None:
        """Record a failed try; ``next_attempt_at=None``: the window closed (dead)."""
        values: dict[str, Any] = {"attempts": states.Sql("attempts + 1"), "last_error": error[:500], "tried_at": time.time(),
                                  "next_attempt_at": time.time() if next_attempt_at is None else next_attempt_at}
        transition = states.NOTIFY_GIVE_UP if next_attempt_at is None else states.NOTIFY_RETRY_LATER
        with self._tx() as db:
            states.apply(db, states.NOTIFICATIONS, transition, notification_id, values)

    def target_state(self, target: str) -> TargetState:
        counts = {r["state"]: r["n"] for r in self._db.execute(
            "SELECT state, COUNT(*) AS n FROM notifications WHERE target = ? GROUP BY state", (target,))}
        sent = self._db.execute("SELECT MAX(sent_at) FROM notifications WHERE target = ?", (target,)).fetchone()[0]
        latest = self._db.execute("SELECT last_error, tried_at FROM notifications WHERE target = ?"
                                  " AND tried_at IS NOT NULL ORDER BY tried_at DESC LIMIT 1", (target,)).fetchone()
        failing = latest is not None and latest["last_error"] != ""
        return TargetState(last_sent=sent, last_error=latest["last_error"] if failing else "",
                           last_error_at=latest["tried_at"] if failing else None,
                           pending=counts.get(NotificationState.PENDING, 0) + counts.get(NotificationState.RETRYING, 0),
                           dead=counts.get(NotificationState.DEAD, 0))

    def forget_notifications(self, before: float) -> int:
        """Sent and dead notifications older than ``before``, and the events of that age no target
        has still to take or send (every event, on a node without targets): the outbox does not
        grow with the years. Returns how many events went."""
        with self._tx() as db:
            db.execute("DELETE FROM notifications WHERE state IN (?, ?) AND created_at < ?",
                       (NotificationState.SENT, NotificationState.DEAD, before))
            return db.execute(
                "DELETE FROM notify_events WHERE created_at < ?"
                " AND id <= COALESCE((SELECT MIN(CAST(value AS INTEGER)) FROM node_state WHERE key LIKE ?), id)"
                " AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event = notify_events.id)",
                (before, _CURSOR + "%")).rowcount

    def _notifications(self, tail: str, args: tuple[Any, ...]) -> list[Notification]:
        rows = self._db.execute(
            "SELECT n.id, n.target, n.state, n.attempts, n.next_attempt_at, n.last_error, n.created_at,"
            " n.sent_at, e.id AS e_id, e.event_id, e.kind, e.job_id, e.delivery_id, e.subject, e.detail,"
            f" e.created_at AS e_created_at FROM notifications n JOIN notify_events e ON e.id = n.event {tail}",
            args).fetchall()
        return [Notification(
            id=r["id"], target=r["target"], state=NotificationState(r["state"]), attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"], last_error=r["last_error"], created_at=r["created_at"],
            sent_at=r["sent_at"],
            event=Event(id=r["e_id"], event_id=r["event_id"], kind=r["kind"], job_id=r["job_id"],
                        delivery_id=r["delivery_id"], subject=r["subject"], detail=r["detail"],
                        created_at=r["e_created_at"])) for r in rows]

