"""A patch of pynetdicom internals: its reactor threads wait woken by their work instead of polling.

It replaces the ``time`` module that ``pynetdicom.association`` and ``pynetdicom.dul`` sleep
with, wraps three constructors and reads private attributes; the receiver and the dispatcher
apply it with ``patch_reactor_sleep()`` and nothing else depends on it. The other patches are
``node.receive.pdu_guard`` (the DUL's PDU reader) and ``node.receive.pdata_stream`` (P-DATA
streamed to disk); all three stay in node/receive, are written against pynetdicom 3.0
(pyproject.toml pins ``pynetdicom>=3.0,<3.1``), and ``node.receive.pynetdicom_internals`` checks
at import that the internals they replace or read are still the ones they expect.
``patch_reactor_sleep`` says what pynetdicom would need to offer for each part to go.

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
  received C-STORE reaches the handler the moment its last fragment is decoded, and is woken
  as well when the DUL hands it the peer's release or abort or ends; otherwise it looks at its
  network timeout every millisecond while the peer sends and every ``IDLE_WAIT_SECONDS`` when
  it has been quiet for ``BUSY_SECONDS`` (``_wait_for_message``). Only there: on a requested
  association the caller's thread also blocks on that queue, and a wait here could take the
  wake-up meant for it;
- the association thread of a requested association (the dispatcher's) waits for the caller
  to ask it to pause: each ``send_c_store`` asks, and polled until the reactor had slept its
  millisecond out.

A response that the reactor of a requested association takes by the race in pynetdicom's
reactor pause goes back to the caller waiting for it instead of being dropped.

P-DATA is sent leaner too. The state machine's DT-1 and AR-7 actions (send a P-DATA-TF PDU)
build the PDU's bytes directly from the primitive's presentation data values (PS3.8 9.3.5)
instead of building PDU and item objects to encode them, the same bytes with less work. And
``send_msg`` queues a message's PDUs for the DUL thread in batches instead of one at a time:
the dispatcher sends a CT image to a PACS as about 32 PDUs, now one queued item and one socket
write; the PDUs on the wire are the same.

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
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from node.receive import command_sets, pynetdicom_internals
from node.receive.pynetdicom_internals import replacing

pynetdicom_internals.require()

#: A DIMSE message's P-DATA requests are queued for the DUL thread in batches of this many bytes.
BATCH_BYTES = 4 * 1024 * 1024

#: The longest a DUL thread waits with nothing readable and nothing queued: its timers (ARTIM)
#: are looked at this often. Everything it has to act on wakes it at once.
IDLE_WAIT_SECONDS = 0.05
#: An accepted association whose peer sent a PDU this recently keeps pynetdicom's 1 ms reactor
#: wait (see ``_wait_for_message``).
BUSY_SECONDS = 1.0

_installed = False


def patch_reactor_sleep() -> None:
    """Install the waiting ``sleep`` for this process's pynetdicom reactors (once), with the
    leaner P-DATA sending and TCP_NODELAY described above.

    Each part stands in for something pynetdicom 3.0 does not offer, and can go once it does:

    - the ``time`` shims and the wrapped DUL and association constructors, ``run_reactor`` and
      ``kill_dul``: an event-driven reactor wait (the DUL thread woken by its socket and its
      queues, an accepted association's thread by its message queue), or at least a setting for
      the reactor sleep: ``_run_loop_delay`` is private and the association thread's 1 ms has
      none. Upstream knows the trade-off (https://github.com/pydicom/pynetdicom/issues/650 made
      the DUL sleep only when idle) and ``DULServiceProvider.__init__`` carries a TODO to make
      the loop event based;
    - ``_serve_request``: a reactor pause that cannot hand a response to the wrong thread (the
      race ``_handing_back_responses`` describes);
    - ``send_msg`` and the DT-1/AR-7 actions: ``send_msg`` queuing a message's PDUs for the DUL
      together, and a P-DATA-TF encoded without its PDU and item objects;
    - ``_create_socket``: a TCP_NODELAY option (or socket options) for requested associations;
      pynetdicom has no API for socket options (https://github.com/pydicom/pynetdicom/pull/565).
    """
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
    _wrap(Association, "_serve_request", _handing_back_responses)
    _wrap(AssociationSocket, "_create_socket", _without_nagle)
    DIMSEServiceProvider.send_msg = replacing(DIMSEServiceProvider.send_msg, _send_msg)  # type: ignore[method-assign,assignment]
    for action, send in (("DT-1", _send_p_data), ("AR-7", _send_p_data_releasing)):
        description, original, next_state = pynetdicom.fsm.ACTIONS[action]
        pynetdicom.fsm.ACTIONS[action] = (description, replacing(original, send), next_state)


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
    setattr(cls, name, replacing(original, method))


def _with_wake(original: Any, dul: DULServiceProvider, *args: Any, **kwargs: Any) -> None:
    original(dul, *args, **kwargs)
    wake = _Wake()
    dul._radnode_wake = wake  # type: ignore[attr-defined]
    dul.event_queue = _WakingQueue(wake)
    dul.to_provider_queue = _WakingQueue(wake)
    dul.to_user_queue = _NudgingQueue(dul)
    dul._radnode_user_puts = 0  # type: ignore[attr-defined]


def _closing_wake(original: Any, dul: DULServiceProvider) -> None:
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


def _waking(original: Any, dul: DULServiceProvider) -> None:
    original(dul)
    dul._radnode_wake.signal()  # type: ignore[attr-defined]


def _with_checkpoint(original: Any, assoc: Association, *args: Any, **kwargs: Any) -> None:
    original(assoc, *args, **kwargs)
    assoc._reactor_checkpoint = _Checkpoint()
    assoc._reactor_checkpoint.set()


def _handing_back_responses(original: Any, assoc: Association, msg: Any, context_id: int) -> None:
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


class _PDUs(P_DATA):
    """Consecutive P-DATA requests of one DIMSE message, queued for the DUL thread as one:
    each presentation data value is sent as the P-DATA-TF PDU it was sized for."""


class _Encoded(P_DATA):
    """P-DATA-TF PDUs already encoded, queued for the DUL thread as one P-DATA request."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


def _send_msg(dimse: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``, queuing the message's P-DATA requests in batches of
    ``BATCH_BYTES`` rather than one by one: a CT image is about 32 PDUs, and each queued alone
    cost a wake-up of the DUL thread, a pass through the state machine and a socket write."""
    if _send_store_request(dimse, primitive, context_id):
        return
    if primitive.MessageIDBeingRespondedTo is None:
        message = _RQ_TO_MESSAGE[type(primitive)]()
    else:
        message = _RSP_TO_MESSAGE[type(primitive)]()
    message.primitive_to_message(primitive)
    message.context_id = context_id
    evt.trigger(dimse.assoc, evt.EVT_DIMSE_SENT, {"message": message})
    batch, size = _PDUs(), 0
    for pdata in message.encode_msg(context_id, dimse.maximum_pdu_size):
        batch.presentation_data_value_list.extend(pdata.presentation_data_value_list)
        size += sum(len(value) for _, value in pdata.presentation_data_value_list)
        if size >= BATCH_BYTES:
            dimse.dul.send_pdu(batch)
            batch, size = _PDUs(), 0
    if batch.presentation_data_value_list:
        dimse.dul.send_pdu(batch)


def _send_store_request(dimse: DIMSEServiceProvider, primitive: Any, context_id: int) -> bool:
    """Send a C-STORE request whose data set is a file's (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``,
    which the dispatcher uses) as P-DATA-TF PDUs encoded here: the command set by
    ``node.receive.command_sets``, the data set read from the file ``BATCH_BYTES`` at a time and
    cut into fragments of the peer's maximum PDU length, the same PDUs pynetdicom sends. Its
    message objects, its pydicom command set and a P-DATA object per fragment were a quarter
    of the dispatcher's time per image. False (nothing sent) for any other message, or when a
    handler wants the EVT_DIMSE_SENT message object: ``send_msg`` then sends it as before."""
    where = getattr(primitive, "_dataset_path", None)
    fragment = dimse.maximum_pdu_size - 6
    if (type(primitive) is not C_STORE or where is None or fragment <= 0
            or primitive.MessageIDBeingRespondedTo is not None
            or primitive.MoveOriginatorApplicationEntityTitle is not None
            or primitive.MoveOriginatorMessageID is not None or primitive.MessageID is None
            or dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return False
    command = command_sets.store_request(primitive.AffectedSOPClassUID, primitive.MessageID,
                                         primitive.Priority, primitive.AffectedSOPInstanceUID)
    path, offset = where
    with open(path, "rb") as file:
        left = os.fstat(file.fileno()).st_size - offset
        if len(command) > fragment or left <= 0:
            return False
        file.seek(offset)
        parts: list[bytes | memoryview] = [_pdu_header(context_id, 0x03, len(command)), command]
        step = max(1, BATCH_BYTES // fragment) * fragment
        while left:
            chunk = memoryview(file.read(min(step, left)))
            if not chunk:
                raise OSError(f"{path} shrank while it was sent")
            left -= len(chunk)
            for start in range(0, len(chunk), fragment):
                piece = chunk[start:start + fragment]
                last = not left and start + fragment >= len(chunk)
                parts += [_pdu_header(context_id, 0x02 if last else 0x00, len(piece)), piece]
            dimse.dul.send_pdu(_Encoded(b"".join(parts)))
            parts = []
    return True


def _pdu_header(context_id: int, control: int, length: int) -> bytes:
    """The header of a P-DATA-TF PDU holding one presentation data value of ``length`` bytes."""
    return struct.pack(">BBIIBB", 0x04, 0x00, length + 6, length + 2, context_id, control)


def _p_data_tf(values: list[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU carrying ``values`` (PS3.8 9.3.5)."""
    items = b"".join(struct.pack(">IB", len(value) + 1, context_id) + value for context_id, value in values)
    return struct.pack(">BBI", 0x04, 0x00, len(items)) + items


def _send_queued_p_data(dul: DULServiceProvider) -> None:
    """Send the queued P-DATA request: a ``_PDUs`` batch as one PDU per value, in one write."""
    primitive = dul.to_provider_queue.get(False)
    assert isinstance(primitive, P_DATA)  # DT-1 and AR-7 are Evt9: a P-DATA request
    values = primitive.presentation_data_value_list
    if isinstance(primitive, _Encoded):
        data = primitive.data
    elif isinstance(primitive, _PDUs):
        data = b"".join(_p_data_tf([value]) for value in values)
    else:
        data = _p_data_tf(values)
    if dul.socket is not None:
        dul.socket.send(memoryview(data))  # type: ignore[arg-type]  # sliced on partial sends: no copies


def _send_p_data(dul: DULServiceProvider) -> str:
    """DT-1 (Sta6 + Evt9): send the queued P-DATA request."""
    _send_queued_p_data(dul)
    return "Sta6"


def _send_p_data_releasing(dul: DULServiceProvider) -> str:
    """AR-7 (Sta8 + Evt9): send the queued P-DATA request while the peer's release waits."""
    _send_queued_p_data(dul)
    return "Sta8"


def _without_nagle(original: Any, transport: AssociationSocket, *args: Any, **kwargs: Any) -> socket.socket:
    sock: socket.socket = original(transport, *args, **kwargs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


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
    have looked before it came) makes it return at once.

    An idle association's thread woke a thousand times a second (3 % of a core each). While
    images arrive it still does: waiting longer then saved 6 % of the receiver's CPU per image
    but cost 30 % of one association's images/s on the loaded 2-core development machine
    (bench/ingest_profile.py --baseline, 4 sends in turns, load 15), for a reason not found."""
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
