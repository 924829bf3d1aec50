"""The DUL's PDU reader, with a PDU's length checked at its header and a deadline on its bytes.

pynetdicom's ``_read_pdu_data`` buffers whatever length a header claims and reads with no
deadline once the socket turns readable; a hostile peer could grow the receiver or hold its
threads for minutes. This reader aborts (Evt19) a PDU longer than ``pdu_limit`` before reading its
body, closes a connection whose PDU misses its deadline (the ARTIM timer before the association,
the network timeout after) and stops reading in Sta13, as dcmtk storescp and Orthanc do. P-DATA-TF
PDUs of an established association go to the receiver's P-DATA reader when one is configured.
The cases and measurements are in docs/receive-speed.md.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from node import logs

CONTROL_PDU_BYTES = 1024 * 1024
UNLIMITED_PDATA_BYTES = 64 * 1024 * 1024
_P_DATA_TF, _RELEASE_RQ = 0x04, 0x05
_PDU_TYPES = frozenset(range(0x01, 0x08))
_AWAITING_CLOSE = "Sta13"
_ESTABLISHED = "Sta6"
#: States before an A-ASSOCIATE-RQ was read: idle (the connection's event not yet handled) and
#: awaiting the request, when the ARTIM timer runs.
_BEFORE_REQUEST = frozenset({"Sta1", "Sta2"})


class _Stalled(Exception):
    """A PDU's bytes did not all arrive before its deadline."""


def pdu_limit(pdu_type: int, max_pdu: int) -> int:
    """The largest PDU length (the header's length field) the node reads for ``pdu_type``."""
    if pdu_type == _P_DATA_TF:
        return max_pdu if max_pdu > 0 else UNLIMITED_PDATA_BYTES
    return CONTROL_PDU_BYTES


#: Takes the body of a P-DATA-TF PDU of an established association (the receiver's streaming
#: reader, ``node.receive.pdata_stream.read``) instead of pynetdicom's decoder.
PDataReader = Callable[[DULServiceProvider, memoryview], None]


#: Called in the DUL thread when an A-RELEASE-RQ arrives, before pynetdicom sees it (and so
#: before the release is answered): the receiver commits its queued index rows there.
ReleaseHook = Callable[[DULServiceProvider], None]


@dataclass(frozen=True)
class _Settings:
    max_pdu: int = 0
    p_data: PDataReader | None = None
    before_release: ReleaseHook | None = None


_settings = _Settings()


def configure(max_pdu: int, p_data: PDataReader | None = None) -> None:
    """The limit on P-DATA-TF PDUs (the node's ``max_pdu``; 0: ``UNLIMITED_PDATA_BYTES``) and
    who reads their bodies (None: pynetdicom)."""
    global _settings
    _settings = _Settings(max_pdu, p_data, _settings.before_release)


def before_release(hook: ReleaseHook | None) -> None:
    """What runs when a peer asks to release its association, before it is answered."""
    global _settings
    _settings = _Settings(_settings.max_pdu, _settings.p_data, hook)


def read_pdu_data(dul: DULServiceProvider) -> None:
    """pynetdicom 3.0's reader (same events in the same cases) with the length check added."""
    max_pdu, p_data = _settings.max_pdu, _settings.p_data
    transport = dul.socket
    assert transport is not None
    if dul.state_machine.current_state == _AWAITING_CLOSE:
        transport.close()  # Evt17, as when the peer closes
        return
    deadline = _deadline(dul)
    try:
        header = _recv_exactly(transport, 6, deadline)
        if header is None:
            dul.event_queue.put("Evt17")  # transport closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
    except _Stalled as stalled:
        _close_stalled(dul, transport, str(stalled))
        return
    if pdu_type not in _PDU_TYPES:
        dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
        return
    limit = pdu_limit(pdu_type, max_pdu)
    if length > limit:
        logs.warning("association.pdu_too_long", address=_peer(transport),
                     pdu_type=f"0x{pdu_type:02X}", length=length, limit=limit)
        dul.event_queue.put("Evt19")
        return
    try:
        body = _recv_exactly(transport, length, deadline)
    except _Stalled as stalled:
        _close_stalled(dul, transport, str(stalled))
        return
    if body is None:
        dul.event_queue.put("Evt17")
        return
    _spoke(dul)
    if pdu_type == _P_DATA_TF and p_data is not None and dul.state_machine.current_state == _ESTABLISHED:
        p_data(dul, memoryview(body))
        return
    if pdu_type == _RELEASE_RQ and _settings.before_release is not None:
        _settings.before_release(dul)
    try:
        pdu, event = dul._decode_pdu(bytearray(header) + body)
    except Exception:
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _deadline(dul: DULServiceProvider) -> float:
    """When the PDU whose first bytes are readable must be whole (``time.monotonic``)."""
    if dul.state_machine.current_state in _BEFORE_REQUEST:
        seconds = dul.artim_timer.remaining  # its timeout, until the connection's event starts it
    else:
        seconds = dul.assoc.ae.network_timeout or 0.0
    return time.monotonic() + max(seconds, 0.0)


def _spoke(dul: DULServiceProvider) -> None:
    """The peer sent a whole PDU: the node's network timeout replaces a shorter idle limit."""
    dul._radnode_spoke_at = time.monotonic()  # type: ignore[attr-defined]  # read by node.dicomnet.reactor
    timeout = dul.assoc.ae.network_timeout
    if dul.state_machine.current_state not in _BEFORE_REQUEST and dul.assoc.network_timeout != timeout:
        dul.assoc.network_timeout = timeout


def _close_stalled(dul: DULServiceProvider, transport: AssociationSocket, progress: str) -> None:
    """Close a connection whose PDU missed its deadline (closing puts Evt17, as when the peer
    closes: the association, if any, is aborted and its slot given back)."""
    logs.warning("association.pdu_stalled", address=_peer(transport), state=dul.state_machine.current_state,
                 received=progress)
    transport.close()


def _recv_exactly(transport: AssociationSocket, length: int, deadline: float) -> bytearray | None:
    """``length`` bytes from the connection in as few reads as the kernel allows (pynetdicom
    reads 4 KiB at a time), or None if it closed or failed first; raises _Stalled (with the
    bytes received so far) when ``deadline`` passes first."""
    body = bytearray(length)
    raw = transport.socket
    try:
        waiting = raw.gettimeout() is None and not isinstance(raw, ssl.SSLSocket)  # type: ignore[union-attr]
    except AttributeError:
        return None
    receive = _receive_waiting if waiting else _receive_with_timeouts
    try:
        whole = receive(raw, memoryview(body), deadline)  # type: ignore[arg-type]
    except (OSError, AttributeError, ValueError):
        return None
    return body if whole else None


def _receive_waiting(raw: socket.socket, view: memoryview, deadline: float) -> bool:
    """Fill ``view`` from a blocking socket (a plain TCP connection): each read takes what has
    arrived without waiting, and only when nothing has does it wait, until ``deadline``. One
    system call per read: a socket with a timeout is polled before every read, and setting
    that timeout before each read switched its mode twice (two more calls)."""
    length = len(view)
    while view:
        try:
            got = raw.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Stalled(f"{length - len(view)} of {length} bytes") from None
            select.select([raw], [], [], left)
            continue
        if not got:
            return False
        view = view[got:]
    return True


def _receive_with_timeouts(raw: socket.socket, view: memoryview, deadline: float) -> bool:
    """Fill ``view`` from a socket with a timeout (a TLS connection), each read bounded by
    what is left until ``deadline``; the socket's own timeout is put back afterwards."""
    length = len(view)
    kept = raw.gettimeout()
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Stalled(f"{length - len(view)} of {length} bytes")
        raw.settimeout(left)
        try:
            got = raw.recv_into(view)
        except TimeoutError:
            continue
        if not got:
            return False
        view = view[got:]
    raw.settimeout(kept)
    return True


def _peer(transport: object) -> str:
    try:
        return str(transport.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError):
        return "unknown"
