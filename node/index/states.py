"""The index's state machines (series, job, delivery, notification, backfill): their states, the
transitions allowed between them, and the one function that applies a transition. Each machine's
drawing sits above its transition table.

Every transition is one guarded ``UPDATE`` inside the caller's transaction, so two processes
racing for a row cannot both move it; ``apply`` refuses a transition its table does not hold (a
bug, raised at once). A job's ``attempts`` is a fencing token a claim raises: a result from an
earlier attempt (a worker that came back, a Ray task given up on) is refused. Only the node
itself hands back every running attempt at once (at start and stop, when none can be running).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar


class SeriesState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTED = "routed"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    DEAD = "dead"


class NotificationState(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    DEAD = "dead"


class BackfillState(StrEnum):
    QUERYING = "querying"
    RETRIEVING = "retrieving"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RetrieveState(StrEnum):
    """One study of a backfill, on its way from the PACS."""

    FOUND = "found"
    RETRIEVING = "retrieving"
    RETRIEVED = "retrieved"
    FAILED = "failed"
    CANCELLED = "cancelled"


State = SeriesState | JobState | DeliveryState | NotificationState | BackfillState | RetrieveState
S = TypeVar("S", SeriesState, JobState, DeliveryState, NotificationState, BackfillState, RetrieveState)


def named(states: type[S], text: str) -> S | None:
    """The state called ``text`` (a page's or command's filter), or None: the machine has none."""
    return states(text) if text in {s.value for s in states} else None


class IllegalTransition(ValueError):
    """A transition its machine's table does not hold: a bug in the node, never bad input."""


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[State, ...]
    target: State
    #: about one job attempt: the caller may name it (its number, the worker holding it) ...
    fenced: bool = False
    #: ... and must name its number (a result, a failure, a worker taking it).
    attempt_required: bool = False


@dataclass(frozen=True)
class Machine:
    """One table's states and its transition table."""

    table: str
    key: str
    states: type[StrEnum]
    transitions: tuple[Transition, ...]
    #: the states a row may be created in (a job that cannot run is created failed, with why)
    initial: tuple[State, ...]

    def check_initial(self, state: State) -> State:
        if self._own(state) not in self.initial:
            raise IllegalTransition(f"a row of {self.table} is not created {state.value!r};"
                                    f" it starts {' or '.join(s.value for s in self.initial)}")
        return state

    def _own(self, state: State) -> State:
        if not isinstance(state, self.states):
            raise IllegalTransition(f"{state!r} is not a state of the {self.table} machine")
        return state


# ---- series --------------------------------------------------------------------------------
#
# A late instance re-opens a series, with a new generation::
#
#     receiving ──complete──> complete ──route──> routed
#       │  ^  └───────────set aside──────────────> │
#       │  └──────────────re-open──────────────────┘ (and from complete)

COMPLETE = Transition("complete", (SeriesState.RECEIVING,), SeriesState.COMPLETE)
ROUTE = Transition("route", (SeriesState.COMPLETE,), SeriesState.ROUTED)
#: completion cannot complete or route it: it leaves the queue (no jobs), the reason recorded
SET_ASIDE = Transition("set aside", (SeriesState.RECEIVING, SeriesState.COMPLETE), SeriesState.ROUTED)
#: a late instance (``node.index.store`` does it in the receive upsert, raising the generation)
REOPEN = Transition("re-open", (SeriesState.COMPLETE, SeriesState.ROUTED), SeriesState.RECEIVING)

SERIES = Machine("series", "series_uid", SeriesState, (COMPLETE, ROUTE, SET_ASIDE, REOPEN),
                 initial=(SeriesState.RECEIVING,))

# ---- jobs ----------------------------------------------------------------------------------
#
#     queued ──claim──> running ──finish──> done
#       ^ │             │  │ └────fail────> failed ──requeue (admin)──> queued
#       │ │             │  └─start (a worker takes the attempt: running -> running)
#       │ └─cancel (admin)──────────────────> failed
#       └──hand back────┘

CLAIM = Transition("claim", (JobState.QUEUED,), JobState.RUNNING)
START = Transition("start", (JobState.RUNNING,), JobState.RUNNING, fenced=True, attempt_required=True)
FINISH = Transition("finish", (JobState.RUNNING,), JobState.DONE, fenced=True, attempt_required=True)
FAIL = Transition("fail", (JobState.RUNNING,), JobState.FAILED, fenced=True, attempt_required=True)
HAND_BACK = Transition("hand back", (JobState.RUNNING,), JobState.QUEUED, fenced=True)
REQUEUE = Transition("requeue", (JobState.FAILED,), JobState.QUEUED)
#: the administrator does not want a queued job run; it ends failed with the reason on record
#: (the states stay the four the design names) and ``requeue`` undoes it.
CANCEL = Transition("cancel", (JobState.QUEUED,), JobState.FAILED)

JOBS = Machine("jobs", "id", JobState, (CLAIM, START, FINISH, FAIL, HAND_BACK, REQUEUE, CANCEL),
               initial=(JobState.QUEUED, JobState.FAILED))

# ---- deliveries ----------------------------------------------------------------------------
#
#     pending ──send──> sent
#       │  └──fail──> retrying ──send──> sent
#       │              │  ^ └──fail──┘ (retrying -> retrying)
#       └──give up─────┴──┴─> dead ──retry (admin)──> pending

SEND = Transition("send", (DeliveryState.PENDING, DeliveryState.RETRYING), DeliveryState.SENT)
RETRY_LATER = Transition("retry later", (DeliveryState.PENDING, DeliveryState.RETRYING),
                         DeliveryState.RETRYING)
GIVE_UP = Transition("give up", (DeliveryState.PENDING, DeliveryState.RETRYING), DeliveryState.DEAD)
#: ``radnode retry``: a dead delivery gets a new window of attempts
RETRY_DEAD = Transition("retry dead", (DeliveryState.DEAD,), DeliveryState.PENDING)

DELIVERIES = Machine("deliveries", "id", DeliveryState, (SEND, RETRY_LATER, GIVE_UP, RETRY_DEAD),
                     initial=(DeliveryState.PENDING,))

# ---- notifications -------------------------------------------------------------------------
#
# One event for one ``[[notify]]`` target; the same drawing as a delivery's, without the retry::
#
#     pending ──send──> sent
#       │  └──fail──> retrying ──send──> sent
#       │              │  ^ └──fail──┘
#       └──give up─────┴──┴─> dead

_UNSENT = (NotificationState.PENDING, NotificationState.RETRYING)
NOTIFY_SEND = Transition("send", _UNSENT, NotificationState.SENT)
NOTIFY_RETRY_LATER = Transition("retry later", _UNSENT, NotificationState.RETRYING)
NOTIFY_GIVE_UP = Transition("give up", _UNSENT, NotificationState.DEAD)

NOTIFICATIONS = Machine("notifications", "id", NotificationState, (NOTIFY_SEND, NOTIFY_RETRY_LATER, NOTIFY_GIVE_UP),
                        initial=(NotificationState.PENDING,))

MACHINES = (SERIES, JOBS, DELIVERIES, NOTIFICATIONS)

# ---- backfills (``node.index.backfills``) ----------------------------------------------------
#
# Backfill::
#
#     querying ──found──> retrieving ──finish──> done
#        │  └──query failed──> failed
#        └──────────┴──cancel──> cancelled
#
# A study of a backfill::
#
#     found ──take──> retrieving ──arrived──> retrieved
#       ^               │  └──give up──> failed
#       └──try again────┘
#     found, retrieving ──cancel──> cancelled

FOUND = Transition("found", (BackfillState.QUERYING,), BackfillState.RETRIEVING)
QUERY_FAILED = Transition("query failed", (BackfillState.QUERYING,), BackfillState.FAILED)
FINISH_BACKFILL = Transition("finish", (BackfillState.RETRIEVING,), BackfillState.DONE)
CANCEL_BACKFILL = Transition("cancel", (BackfillState.QUERYING, BackfillState.RETRIEVING),
                             BackfillState.CANCELLED)

BACKFILLS = Machine("backfills", "id", BackfillState, (FOUND, QUERY_FAILED, FINISH_BACKFILL, CANCEL_BACKFILL),
                    initial=(BackfillState.QUERYING,))

TAKE = Transition("take", (RetrieveState.FOUND,), RetrieveState.RETRIEVING)
ARRIVED = Transition("arrived", (RetrieveState.RETRIEVING,), RetrieveState.RETRIEVED)
TRY_AGAIN = Transition("try again", (RetrieveState.RETRIEVING,), RetrieveState.FOUND)
GIVE_UP_RETRIEVE = Transition("give up", (RetrieveState.RETRIEVING,), RetrieveState.FAILED)
CANCEL_RETRIEVE = Transition("cancel", (RetrieveState.FOUND, RetrieveState.RETRIEVING), RetrieveState.CANCELLED)

RETRIEVES = Machine("backfill_studies", "id", RetrieveState,
                    (TAKE, ARRIVED, TRY_AGAIN, GIVE_UP_RETRIEVE, CANCEL_RETRIEVE), initial=(RetrieveState.FOUND,))


@dataclass(frozen=True)
class Fence:
    """Which job attempt a transition may end: its number, the worker process holding it, or
    both. ``Fence()`` (neither) is the node itself ending every running attempt, at start or
    stop, and the only fence of series and delivery transitions."""

    attempt: int | None = None
    worker_pid: int | None = None


def apply(db: sqlite3.Connection, machine: Machine, transition: Transition, key: Any,
          values: dict[str, Any], fence: Fence = Fence(), extra_where: str = "",
          extra_args: tuple[Any, ...] = ()) -> int:
    """Move one row (or, with ``key=None``, every row the guards select) along ``transition``,
    setting ``values``; returns how many rows moved (0: refused by a guard).

    Must run inside the caller's ``BEGIN IMMEDIATE`` transaction, so that the check and the
    change are one step for every other process.
    """
    if transition not in machine.transitions:
        raise IllegalTransition(f"{transition.name!r} ({', '.join(s.value for s in transition.sources)}"
                                f" -> {transition.target.value}) is not a transition of the"
                                f" {machine.table} machine")
    if transition.fenced is False and (fence.attempt is not None or fence.worker_pid is not None):
        raise IllegalTransition(f"transition {transition.name!r} starts no attempt's end: no fence")
    if transition.attempt_required and fence.attempt is None:
        raise IllegalTransition(f"transition {transition.name!r} must name the attempt it ends")
    sets = "".join(f", {column} = {expression}" for column, expression in _assignments(values))
    args: list[Any] = [v for _, v in values.items() if not _is_sql(v)]
    where = [f"state IN ({','.join('?' * len(transition.sources))})"]
    args += [s.value for s in transition.sources]
    if key is not None:
        where.append(f"{machine.key} = ?")
        args.append(key)
    if fence.attempt is not None:
        where.append("attempts = ?")
        args.append(fence.attempt)
    if fence.worker_pid is not None:
        where.append("worker_pid = ?")
        args.append(fence.worker_pid)
    if extra_where:
        where.append(extra_where)
        args += list(extra_args)
    sql = f"UPDATE {machine.table} SET state = ?{sets} WHERE {' AND '.join(where)}"
    return db.execute(sql, [transition.target.value, *args]).rowcount


def schema_check(machine: Machine) -> str:
    """The schema's ``CHECK`` of a machine's state column, from its enum."""
    return f"CHECK (state IN ({', '.join(repr(s.value) for s in machine.states)}))"


class Sql(str):
    """A value that is an SQL expression (``attempts + 1``), not a parameter."""


def _is_sql(value: Any) -> bool:
    return isinstance(value, Sql)


def _assignments(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(column, str(v) if _is_sql(v) else "?") for column, v in values.items()]
