"""Waking a sleeping loop of the node when another thread or process commits work for it.

Completion, the scheduler and the dispatcher read their work from the index in passes and
sleep between them; a pass that starts only on its interval adds up to that interval to each hop
of a study (series complete -> job claimed -> results delivered). So a commit that makes work for
one of them rings its doorbell: a datagram to a Unix socket in Linux's abstract namespace, named
after the index file and the topic, on which the loop waits with its interval as the longest
sleep. A ring is a hint, never the record: one that is lost (no loop listening, a full socket
buffer, a process in another network namespace) costs at most the interval, as before.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
from pathlib import Path
from typing import Literal

#: what changed, and so which loop is rung: completion (series released or forced complete),
#: the scheduler (jobs queued, or a worker freed) and the dispatcher (deliveries due)
Topic = Literal["series", "jobs", "deliveries"]


def _address(index_path: Path, topic: Topic) -> bytes:
    digest = hashlib.sha256(os.path.realpath(index_path).encode()).hexdigest()[:24]
    return f"\0radnode-{digest}-{topic}".encode()


def ring(index_path: Path, topic: Topic) -> None:
    """Wake the loop of ``topic`` of the node whose index is ``index_path``, if one listens;
    never blocks and never fails (a full buffer means the loop is rung already)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bell:
        bell.setblocking(False)
        try:
            bell.sendto(b"!", _address(index_path, topic))
        except OSError:
            pass


class Doorbell:
    """The listening end: ``wait`` sleeps until rung or ``timeout``. Rings that come while the
    loop works stay queued in the socket, so none between two waits is missed."""

    def __init__(self, index_path: Path, topic: Topic) -> None:
        self.index_path, self.topic = index_path, topic
        self._socket: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._poll = select.poll()  # not select(): it fails on a descriptor numbered over 1023
        try:
            self._socket.bind(_address(index_path, topic))
        except OSError:  # another Node object of this index in this process listens: sleep the interval
            self._socket.close()
            self._socket = None
        else:
            self._socket.setblocking(False)
            self._poll.register(self._socket, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when rung (every ring so far is taken)."""
        self._poll.poll(max(0.0, timeout) * 1000)
        if self._socket is None:
            return False
        rung = False
        while True:
            try:
                self._socket.recv(16)
                rung = True
            except BlockingIOError:
                return rung

    def ring(self) -> None:
        ring(self.index_path, self.topic)

    def close(self) -> None:
        if self._socket is not None:
            self._poll.unregister(self._socket)
            self._socket.close()
            self._socket = None
