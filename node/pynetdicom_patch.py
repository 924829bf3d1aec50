"""A patch of pynetdicom internals: its reactor threads wait woken by their work instead of polling.

It replaces the ``time`` module that ``pynetdicom.association`` and ``pynetdicom.dul`` sleep
with and reads their private attributes; the receiver applies it with ``patch_reactor_sleep()``
and nothing else depends on it, so a pynetdicom upgrade that changes these internals is checked
here (and in ``node.pdu_guard``, the other patch: it replaces the DUL's PDU reader).

pynetdicom runs two threads per association, and both loop, calling ``time.sleep`` when there
is nothing to do: 1 ms in stock pynetdicom, which adds up to a millisecond to each step of every
C-STORE and caps one association at a few hundred images/s, while shorter sleeps burn CPU on
every idle association. pynetdicom has no setting for either loop, so the receiver gives those
two modules a ``time`` module whose ``sleep`` waits for what the sleeping thread waits for:

- the association thread of an accepted association waits on its DIMSE message queue, so a
  received C-STORE reaches the handler the moment its last fragment is decoded. Only there:
  on a requested association the caller's thread also blocks on that queue, and a wait here
  could take the wake-up meant for it;
- the DUL thread (a ``DULServiceProvider``) waits for its socket to become readable, so PDUs
  are read as they arrive. Its outgoing queue has nothing to wait on, so for ``BUSY_SECONDS``
  after data arrived it looks at that queue every ``SEND_POLL_SECONDS`` (a C-STORE response is
  sent within that of the handler's return) and then falls back to pynetdicom's own 1 ms; a
  connection still waiting for its A-ASSOCIATE-RQ has nothing to send and waits up to 50 ms.
"""

from __future__ import annotations

import select
import threading
import time
import types
import weakref
from typing import Any

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

SEND_POLL_SECONDS = 0.0002
BUSY_SECONDS = 0.05
#: A connection that has not sent its A-ASSOCIATE-RQ has nothing to send: its DUL thread waits
#: for data this long instead of 1 ms, so that 200 idle sockets do not wake 200,000 times a second.
AWAITING_REQUEST_SECONDS = 0.05
_AWAITING_REQUEST = "Sta2"

_last_data: weakref.WeakKeyDictionary[DULServiceProvider, float] = weakref.WeakKeyDictionary()


def patch_reactor_sleep() -> None:
    """Install the waiting ``sleep`` for this process's pynetdicom reactors."""
    shim = _Time("time")
    shim.sleep = _sleep  # type: ignore[attr-defined]
    pynetdicom.association.time = shim  # type: ignore[attr-defined]
    pynetdicom.dul.time = shim  # type: ignore[attr-defined]


class _Time(types.ModuleType):
    """``time``, except for the ``sleep`` set on it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, Association) and thread.is_acceptor:
        _wait_for_message(thread, seconds)
    elif isinstance(thread, DULServiceProvider):
        _wait_for_data(thread, seconds)
    else:
        time.sleep(seconds)


def _wait_for_message(assoc: Association, seconds: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages.queue:
            messages.not_empty.wait(seconds)


def _wait_for_data(dul: DULServiceProvider, seconds: float) -> None:
    now = time.monotonic()
    if now - _last_data.get(dul, -BUSY_SECONDS) < BUSY_SECONDS:
        seconds = min(seconds, SEND_POLL_SECONDS)
    elif dul.state_machine.current_state == _AWAITING_REQUEST:
        seconds = max(seconds, AWAITING_REQUEST_SECONDS)
    transport = dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if raw is None:
        time.sleep(seconds)
        return
    try:
        readable, _, _ = select.select([raw], [], [], seconds)
    except (OSError, ValueError):  # closed under us: the reactor notices on its next read
        time.sleep(seconds)
        return
    if readable:
        _last_data[dul] = time.monotonic()
