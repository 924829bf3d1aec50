"""The seam between the dispatcher's bookkeeping and a protocol: what one destination is sent,
and how each delivery ends.

The dispatcher (``node.deliver.dispatcher``) picks due deliveries, retries, backs off, gives up
and records every try in the index, the same for every destination; a ``Sender`` only moves
bytes: C-STORE (``node.deliver.cstore``) or STOW-RS (``node.deliver.stow``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from node.index.store import Delivery, ResultFile


@dataclass(frozen=True)
class Parcel:
    """One delivery and the result files its destination takes, in the study of its job."""

    delivery: Delivery
    files: Sequence[ResultFile]
    study_uid: str


@dataclass(frozen=True)
class Outcome:
    """How one parcel ended: sent (no error), or the error, and whether the destination said so
    (``local``: the error is ours, a result file gone or unreadable, and says nothing of it)."""

    error: str | None = None
    local: bool = False


#: what a sender calls as each parcel ends, before it sends the next
Settle = Callable[[Parcel, Outcome], None]


class Sender(Protocol):
    def send(self, parcels: Sequence[Parcel], settle: Settle) -> str | None:
        """Send ``parcels``, calling ``settle`` for each as it ends; returns why the rest could not
        be sent (the destination is unreachable), or None when every parcel was settled."""

    def probe(self) -> tuple[bool, str]:
        """Whether the destination answers (a C-ECHO, a DICOMweb request), and what it said."""
