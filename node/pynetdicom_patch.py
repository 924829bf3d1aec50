"""A patch of pynetdicom internals: its reactor threads wait woken by their work instead of polling.

It replaces the ``time`` module that ``pynetdicom.association`` and ``pynetdicom.dul`` sleep
with, wraps three constructors and reads private attributes; the receiver and the dispatcher
apply it with ``patch_reactor_sleep()`` and nothing else depends on it, so a pynetdicom upgrade
that changes these internals is checked here (and in ``node.pdu_guard``, the other patch: it
replaces the DUL's PDU reader).

pynetdicom runs two threads per association, and both loop, calling ``time.sleep`` when there
is nothing to do: 1 ms in stock pynetdicom, which adds up to a millisecond to each step of every
C-STORE and caps one association at a few hundred images/s, while shorter sleeps burn CPU on
every idle association. pynetdicom has no setting for either loop, so the patch gives those
two modules a ``time`` module whose ``sleep`` waits for what the sleeping thread waits for:

- the DUL thread (a ``DULServiceProvider``) waits until its socket is readable or something is
  put on its queues (a PDU to send, an event): both queues wake it through an eventfd, so a
  C-STORE response leaves the moment the handler returns and a request the moment the SCU
  sends it, with no polling in between (``IDLE_WAIT_SECONDS`` bounds a wait, for its timers);
- the association thread of an accepted association waits on its DIMSE message queue, so a
  received C-STORE reaches the handler the moment its last fragment is decoded. Only there:
  on a requested association the caller's thread also blocks on that queue, and a wait here
  could take the wake-up meant for it;
- the association thread of a requested association (the dispatcher's) waits for the caller
  to ask it to pause: each ``send_c_store`` asks, and polled until the reactor had slept its
  millisecond out.

P-DATA is sent leaner too: the state machine's DT-1 action (send a P-DATA-TF PDU) builds the
PDU's bytes directly from the primitive's presentation data values (PS3.8 9.3.5) instead of
building PDU and item objects to encode them, the same bytes with less work; the dispatcher
sends a CT image to a PACS as about 32 such PDUs.

And the socket of a requested association sets TCP_NODELAY (the receiver's accepted sockets
already do): pynetdicom sends each P-DATA-TF PDU with its own ``send``, and with Nagle's
algorithm the last short segment of each C-STORE waited for the peer's delayed ACK, about
40 ms an image (the dispatcher delivered 33 images/s to an Orthanc that takes 127 from storescu).
"""

from __future__ import annotations

import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import types
from typing import Any

import pynetdicom.association
import pynetdicom.dul
import pynetdicom.fsm
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

#: The longest a DUL thread waits with nothing readable and nothing queued: its timers (ARTIM)
#: are looked at this often. Everything it has to act on wakes it at once.
IDLE_WAIT_SECONDS = 0.05

_installed = False


def patch_reactor_sleep() -> None:
    """Install the waiting ``sleep`` for this process's pynetdicom reactors (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    shim = _Time("time")
    shim.sleep = _sleep  # type: ignore[attr-defined]
    pynetdicom.association.time = shim  # type: ignore[attr-defined]
    pynetdicom.dul.time = shim  # type: ignore[attr-defined]
    _wrap(DULServiceProvider, "__init__", _with_wake)
    _wrap(DULServiceProvider, "run_reactor", _closing_wake)
    _wrap(DULServiceProvider, "kill_dul", _waking)
    _wrap(Association, "__init__", _with_checkpoint)
    _wrap(AssociationSocket, "_create_socket", _without_nagle)
    description, _, next_state = pynetdicom.fsm.ACTIONS["DT-1"]
    pynetdicom.fsm.ACTIONS["DT-1"] = (description, _send_p_data, next_state)


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


def _wrap(cls: type, name: str, wrapper: Any) -> None:
    original = getattr(cls, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(original, self, *args, **kwargs)

    method.__doc__ = original.__doc__
    setattr(cls, name, method)


def _with_wake(original: Any, dul: DULServiceProvider, *args: Any, **kwargs: Any) -> None:
    original(dul, *args, **kwargs)
    wake = _Wake()
    dul._radnode_wake = wake  # type: ignore[attr-defined]
    dul.event_queue = _WakingQueue(wake)
    dul.to_provider_queue = _WakingQueue(wake)


def _closing_wake(original: Any, dul: DULServiceProvider) -> None:
    try:
        original(dul)
    finally:
        dul._radnode_wake.close()  # type: ignore[attr-defined]


def _waking(original: Any, dul: DULServiceProvider) -> None:
    original(dul)
    dul._radnode_wake.signal()  # type: ignore[attr-defined]


def _with_checkpoint(original: Any, assoc: Association, *args: Any, **kwargs: Any) -> None:
    original(assoc, *args, **kwargs)
    assoc._reactor_checkpoint = _Checkpoint()
    assoc._reactor_checkpoint.set()


def _send_p_data(dul: DULServiceProvider) -> str:
    """DT-1 (Sta6 + Evt9): send the queued P-DATA request as a P-DATA-TF PDU."""
    primitive = dul.to_provider_queue.get(False)
    assert isinstance(primitive, P_DATA)  # DT-1 is Evt9: a P-DATA request
    items = b"".join(struct.pack(">IB", len(value) + 1, context_id) + value
                     for context_id, value in primitive.presentation_data_value_list)
    if dul.socket is not None:
        dul.socket.send(struct.pack(">BBI", 0x04, 0x00, len(items)) + items)
    return "Sta6"


def _without_nagle(original: Any, transport: AssociationSocket, *args: Any, **kwargs: Any) -> socket.socket:
    sock: socket.socket = original(transport, *args, **kwargs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        _wait_for_work(thread, seconds)
    elif isinstance(thread, Association) and thread.is_acceptor:
        _wait_for_message(thread, seconds)
    elif isinstance(thread, Association) and isinstance(thread._reactor_checkpoint, _Checkpoint):
        thread._reactor_checkpoint.pause_asked.wait(seconds)
    else:
        time.sleep(seconds)


def _wait_for_message(assoc: Association, seconds: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages.queue:
            messages.not_empty.wait(seconds)


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
