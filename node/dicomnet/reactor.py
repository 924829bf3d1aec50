"""pynetdicom's reactor threads wait woken by their work instead of polling every millisecond.

pynetdicom's DUL and association threads loop on ``time.sleep(0.001)`` when idle, which adds up
to a millisecond to each step of a C-STORE and burns CPU on idle associations. ``TIME`` replaces
the ``time`` module those two modules sleep with: a DUL thread waits on its socket and an eventfd
its queues signal, an accepted association's thread on its DIMSE message queue, a requested
association's thread until a pause is asked. ``node.dicomnet.patches`` installs the wrappers
here; the measurements are in docs/receive-speed.md.
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import threading
import time
import types
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: The longest a DUL thread waits with nothing readable and nothing queued: its timers (ARTIM)
#: are looked at this often. Everything it has to act on wakes it at once.
IDLE_WAIT_SECONDS = 0.05
#: An accepted association whose peer sent a PDU this recently keeps pynetdicom's 1 ms reactor
#: wait (see ``_wait_for_message``).
BUSY_SECONDS = 1.0


class _Time(types.ModuleType):
    """``time``, except for the ``sleep`` set on it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _Wake:
    """An eventfd that a DUL thread waits on beside its socket; closed only by that thread, when
    its reactor ends, so a late ``signal`` never writes to a descriptor reused by a file."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        #: Set while the DUL thread waits: only then does a ``put`` need to wake it.
        self.waiting = False

    def signal(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A DUL's queue whose ``put`` wakes the DUL thread."""

    def __init__(self, wake: _Wake) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if self._wake.waiting:
            self._wake.signal()


class _Checkpoint(threading.Event):
    """An association's reactor checkpoint that also says when it was cleared (a pause asked)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause_asked = threading.Event()

    def clear(self) -> None:
        super().clear()
        self.pause_asked.set()

    def set(self) -> None:
        self.pause_asked.clear()
        super().set()


def with_wake(original: Any, dul: DULServiceProvider, *args: Any, **kwargs: Any) -> None:
    original(dul, *args, **kwargs)
    wake = _Wake()
    dul._radnode_wake = wake  # type: ignore[attr-defined]
    dul.event_queue = _WakingQueue(wake)
    dul.to_provider_queue = _WakingQueue(wake)
    dul.to_user_queue = _NudgingQueue(dul)
    dul._radnode_user_puts = 0  # type: ignore[attr-defined]


def closing_wake(original: Any, dul: DULServiceProvider) -> None:
    try:
        original(dul)
    finally:
        dul._radnode_wake.close()  # type: ignore[attr-defined]
        _nudge(dul)  # an accepted association's thread ends when its DUL has


class _NudgingQueue(queue.Queue):  # type: ignore[type-arg]
    """A DUL's queue to its user (the peer's release or abort) whose ``put`` wakes an accepted
    association's thread waiting for a message (``_wait_for_message``)."""

    def __init__(self, dul: DULServiceProvider) -> None:
        super().__init__()
        self._dul = dul

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        _nudge(self._dul)


def _nudge(dul: DULServiceProvider) -> None:
    """Count a change an accepted association's reactor must look at, and wake it."""
    dimse = getattr(dul.assoc, "dimse", None)
    if dimse is None or not dul.assoc.is_acceptor:
        return
    with dimse.msg_queue.not_empty:
        dul._radnode_user_puts += 1  # type: ignore[attr-defined]
        dimse.msg_queue.not_empty.notify_all()


def waking(original: Any, dul: DULServiceProvider) -> None:
    original(dul)
    dul._radnode_wake.signal()  # type: ignore[attr-defined]


def with_checkpoint(original: Any, assoc: Association, *args: Any, **kwargs: Any) -> None:
    original(assoc, *args, **kwargs)
    assoc._reactor_checkpoint = _Checkpoint()
    assoc._reactor_checkpoint.set()


def handing_back_responses(original: Any, assoc: Association, msg: Any, context_id: int) -> None:
    """A response the reactor of a requested association took goes back to the caller waiting
    for it. ``send_c_store`` pauses the reactor by clearing its checkpoint and waiting for
    ``_is_paused``, which still says True from the last pause while the reactor, released a
    moment ago, has not yet run: that reactor then takes the next response, stock pynetdicom
    drops it ("Received unexpected C-STORE service message"), and the delivery waits out its
    DIMSE timeout and is aborted."""
    if assoc.is_requestor and not msg.is_valid_request:
        assoc.dimse.msg_queue.put((context_id, msg))
        return
    original(assoc, msg, context_id)


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        _wait_for_work(thread, seconds)
    elif isinstance(thread, Association) and thread.is_acceptor and not thread._kill:
        _wait_for_message(thread, seconds)  # its reactor; once killed, it waits for its DUL to end
    elif isinstance(thread, Association) and isinstance(thread._reactor_checkpoint, _Checkpoint):
        thread._reactor_checkpoint.pause_asked.wait(seconds)
    else:
        time.sleep(seconds)


def _wait_for_message(assoc: Association, seconds: float) -> None:
    """Wait until a message arrives, the peer releases or aborts (``_nudge``) or the DUL ends, or
    for the network timeout: ``seconds`` (pynetdicom's 1 ms) while the peer is sending, else
    ``IDLE_WAIT_SECONDS``. Whatever was nudged since the last wait returned (the reactor may
    have looked before it came) makes it return at once. Why 1 ms while busy:
    docs/receive-speed.md."""
    messages = assoc.dimse.msg_queue
    dul = assoc.dul
    if time.monotonic() - getattr(dul, "_radnode_spoke_at", 0.0) > BUSY_SECONDS:
        seconds = IDLE_WAIT_SECONDS
    with messages.not_empty:
        seen = getattr(assoc, "_radnode_seen", None)
        puts = getattr(dul, "_radnode_user_puts", None)
        if not messages.queue and seen == puts and dul.is_alive():
            messages.not_empty.wait(seconds)
        assoc._radnode_seen = getattr(dul, "_radnode_user_puts", None)  # type: ignore[attr-defined]


def _wait_for_work(dul: DULServiceProvider, seconds: float) -> None:
    """Wait until the socket is readable or a queue was put to (or ``IDLE_WAIT_SECONDS``)."""
    wake: _Wake | None = getattr(dul, "_radnode_wake", None)
    transport = dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if wake is None or wake.fd < 0 or raw is None:
        time.sleep(seconds)
        return
    wake.waiting = True  # before looking at the queues: a put from now on signals
    try:
        if not dul.event_queue.empty() or not dul.to_provider_queue.empty():
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes already buffered: select would not see them
        try:
            readable, _, _ = select.select([raw, wake.fd], [], [], IDLE_WAIT_SECONDS)
        except (OSError, ValueError):  # closed under us: the reactor notices on its next read
            time.sleep(seconds)
            return
    finally:
        wake.waiting = False
    if wake.fd in readable:
        wake.drain()


TIME = _Time("time")
TIME.sleep = _sleep  # type: ignore[attr-defined]
