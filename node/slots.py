"""Association slots shared by every receiver process of the node (``max_associations``).

pynetdicom counts an association from the moment a TCP connection is accepted, including
connections that never send an A-ASSOCIATE-RQ and connections already closed whose thread is
still waiting, and it counts per process: 65 idle sockets locked every sender out for a minute,
and the real limit depended on how connections spread over the receivers. Here a slot is taken
only when an association is requested and given back when its connection closes. A slot is an
exclusive ``flock`` on one of ``max_associations`` files, so the limit holds across processes
and the kernel frees the slot of a process that dies.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AssociationSlots:
    def __init__(self, folder: Path, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"{i}.slot" for i in range(count)]

    def take(self) -> int | None:
        """A held slot (a file descriptor to pass to ``give_back``), or None when all are taken."""
        for path in self.paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    @staticmethod
    def give_back(fd: int) -> None:
        os.close(fd)  # closing the descriptor releases its flock
