"""The job state machine: its states, the transitions allowed between them, and their guards.

    queued ──claim──> running ──finish──> done
      ^ │             │  │ └────fail────> failed ──requeue (admin)──> queued
      │ │             │  └─start (a worker takes the attempt: running -> running)
      │ └─cancel (admin)──────────────────> failed
      └──hand back────┘

Every transition is one guarded ``UPDATE`` inside the caller's transaction: it changes the row
only if the job is in a state the transition starts from and, for the end of an attempt, only if
the attempt is still the job's current one. ``attempts`` is that fencing token: a claim raises it,
so a result from an earlier attempt (a worker machine that came back, a Ray task the node had
given up on) finds a different number and is refused, whatever executor produced it. Starting,
finishing and failing an attempt must name it; only the node itself hands back every running
attempt at once (at start and stop, when none of them can still be running).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[str, ...]
    target: str
    #: about one attempt: the caller may name it (its number, the worker holding it) ...
    fenced: bool
    #: ... and must name its number (a result, a failure, a worker taking it).
    attempt_required: bool = False


CLAIM = Transition("claim", ("queued",), "running", fenced=False)
START = Transition("start", ("running",), "running", fenced=True, attempt_required=True)
FINISH = Transition("finish", ("running",), "done", fenced=True, attempt_required=True)
FAIL = Transition("fail", ("running",), "failed", fenced=True, attempt_required=True)
HAND_BACK = Transition("hand back", ("running",), "queued", fenced=True)
REQUEUE = Transition("requeue", ("failed",), "queued", fenced=False)
#: the administrator does not want a queued job run; it ends failed with the reason on record
#: (the states stay the four the design names) and ``requeue`` undoes it.
CANCEL = Transition("cancel", ("queued",), "failed", fenced=False)

TRANSITIONS = {t.name: t for t in (CLAIM, START, FINISH, FAIL, HAND_BACK, REQUEUE, CANCEL)}


@dataclass(frozen=True)
class Fence:
    """Which attempt a transition may end: its number, the worker process holding it, or both.
    ``Fence()`` (neither) is the node itself ending every running attempt, at start or stop."""

    attempt: int | None = None
    worker_pid: int | None = None


def apply(db: sqlite3.Connection, transition: Transition, job_id: int | None,
          values: dict[str, Any], fence: Fence = Fence(), extra_where: str = "",
          extra_args: tuple[Any, ...] = ()) -> int:
    """Move one job (or, with ``job_id=None``, every job the guards select) along
    ``transition``, setting ``values``; returns how many rows moved (0: refused by a guard).

    Must run inside the caller's ``BEGIN IMMEDIATE`` transaction, so that the check and the
    change are one step for every other process.
    """
    if transition.fenced is False and (fence.attempt is not None or fence.worker_pid is not None):
        raise ValueError(f"job transition {transition.name!r} starts no attempt's end: no fence")
    if transition.attempt_required and fence.attempt is None:
        raise ValueError(f"job transition {transition.name!r} must name the attempt it ends")
    sets = ", ".join(f"{column} = {expression}" for column, expression in _assignments(values))
    args: list[Any] = [v for _, v in values.items() if not _is_sql(v)]
    where = [f"state IN ({','.join('?' * len(transition.sources))})"]
    args += list(transition.sources)
    if job_id is not None:
        where.append("id = ?")
        args.append(job_id)
    if fence.attempt is not None:
        where.append("attempts = ?")
        args.append(fence.attempt)
    if fence.worker_pid is not None:
        where.append("worker_pid = ?")
        args.append(fence.worker_pid)
    if extra_where:
        where.append(extra_where)
        args += list(extra_args)
    sql = f"UPDATE jobs SET state = ?, {sets} WHERE {' AND '.join(where)}"
    return db.execute(sql, [transition.target, *args]).rowcount


class Sql(str):
    """A value that is an SQL expression (``attempts + 1``), not a parameter."""


def _is_sql(value: Any) -> bool:
    return isinstance(value, Sql)


def _assignments(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(column, str(v) if _is_sql(v) else "?") for column, v in values.items()]
