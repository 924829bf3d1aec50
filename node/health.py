"""The verdicts ``/health`` shows, one type for every stage that reports one.

The executor (a cluster it must reach), the Ray probe and the monitoring server all answer
with a ``Check``; process counts travel as ``Processes``. Shared here so that run/ and operate/
speak the same record without run/ importing the web side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Check:
    """One named check of /health: whether it holds, and what a person should read."""

    ok: bool
    detail: str


class Processes(NamedTuple):
    """Processes of one role: how many run (and make progress), and how many should."""

    alive: int
    expected: int
