"""Association slots shared by every receiver process of the node (``max_associations``).

pynetdicom counts connections per process from the accept, idle and closed ones included; here a
slot is taken when an association is requested and given back when its connection closes. A slot
is an exclusive ``flock`` on one of ``max_associations`` files, so the limit holds across processes
and the kernel frees a dead process's slots. One address holds at most ``max_associations_per_peer``;
callers from addresses the allow-list does not name leave the last of those to the named ones.
Why: docs/receive-speed.md.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path


class SlotsFull(Exception):
    """No slot for this association; the message says which limit was reached."""


@dataclass(frozen=True)
class Slot:
    """A held node-wide slot and peer slot (file descriptors whose locks are the slots)."""

    node_fd: int
    peer_fd: int


class AssociationSlots:
    def __init__(self, folder: Path, count: int, per_peer: int) -> None:
        self.peers = folder / "peers"
        self.peers.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"{i}.slot" for i in range(count)]
        self.per_peer = per_peer

    def take(self, address: str, reserved: int = 0) -> Slot:
        """A slot for an association from ``address`` among all but the last ``reserved``
        node-wide slots; raises SlotsFull when the peer's or the node's are all taken."""
        name = re.sub(r"[^0-9A-Za-z.]", "_", address)
        peer_fd = _lock_one([self.peers / f"{name}-{i}.slot" for i in range(self.per_peer)])
        if peer_fd is None:
            raise SlotsFull("max_associations_per_peer reached")
        node_fd = _lock_one(self.paths[:max(len(self.paths) - reserved, 0)])
        if node_fd is None:
            os.close(peer_fd)
            raise SlotsFull("max_associations reached (node-wide)" if not reserved else
                            "max_associations reached for callers the allow-list does not name by address")
        return Slot(node_fd, peer_fd)

    @staticmethod
    def give_back(slot: Slot) -> None:
        os.close(slot.node_fd)  # closing a descriptor releases its flock
        os.close(slot.peer_fd)


def _lock_one(paths: list[Path]) -> int | None:
    """A descriptor holding the flock of the first free file among ``paths``, or None."""
    for path in paths:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd
    return None
