"""A PDU's length is checked at its header, before its body is read (pynetdicom reads it whole).

pynetdicom's ``DULServiceProvider._read_pdu_data`` reads the 6-byte PDU header and then asks the
socket for as many bytes as the header claims, buffering them all: a header claiming 0xFFFFFFF0
bytes grows the receiver by as much as the peer cares to stream, before any association exists.
dcmtk storescp and Orthanc drop such a connection at once. The receiver installs this reader in
its process: a PDU longer than its limit is answered with an A-ABORT (the state machine's
event for an invalid PDU) and its body is never read.

Limits: a P-DATA-TF PDU may not exceed the maximum length the node offers (``max_pdu``,
PS3.8 D.1; ``max_pdu = 0`` means no negotiated limit, and then ``UNLIMITED_PDATA_BYTES``
applies); every other PDU (association, release, abort) may not exceed ``CONTROL_PDU_BYTES``,
far above what 128 presentation contexts need.

Once the node has aborted (or released) an association it waits for the peer to close the
connection (state Sta13), and pynetdicom goes on reading whatever still comes, answering every
6 bytes that are not a PDU with another A-ABORT: a peer streaming random bytes kept its
connection, and a thread busy, for as long as it kept streaming (256 KiB took over 10 s). Here
anything the peer sends after that is not read: the connection is closed at once, as dcmtk
storescp and Orthanc do.

A PDU's body is read into one buffer with as few reads as the kernel allows, and the P-DATA-TF
PDUs of an established association go to ``node.receive.pdata_stream`` (when the receiver installed it),
which writes C-STORE data sets straight into the spool.

Every read of a PDU has a deadline, and the connection is closed when it passes. pynetdicom reads
a PDU with blocking reads and no timeout once the socket turns readable, and its timers (ARTIM,
the network timeout) are looked at only between PDUs: one byte, a half header or half an
A-ASSOCIATE-RQ held the socket and both threads of the connection for minutes (1,000 of them made
2,000 threads), and a PDU stalled mid-body kept them after the association was aborted and its
slot freed. Before the association, the A-ASSOCIATE-RQ must be whole by the end of the ARTIM timer
the receiver set (5 s from the connection); after it, each PDU must be whole within the network
timeout of its first byte.

An association's first PDU after its A-ASSOCIATE-AC ends its idle limit: the receiver gives an
accepted association a network timeout shorter than the node's until it has said something
(node.receive.scp), and the reader puts the node's back the moment it does.

This replaces a private pynetdicom 3.0 method (``node.receive.pynetdicom_internals`` checks at
import that it is still the one expected). What pynetdicom would need to offer for it to go: a
hook for the PDU reader, or in its own reader a bound on a received PDU's length (it offers a
maximum in the association but does not enforce it on what it reads), a deadline for a PDU's
bytes once its first one arrived, and closing in Sta13 instead of reading on.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from node import logs
from node.receive import pdata_stream, pynetdicom_internals
from node.receive.pynetdicom_internals import replacing

pynetdicom_internals.require()

CONTROL_PDU_BYTES = 1024 * 1024
UNLIMITED_PDATA_BYTES = 64 * 1024 * 1024
_P_DATA_TF = 0x04
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


def install(max_pdu: int) -> None:
    """Replace this process's PDU reader with one that enforces ``pdu_limit``."""

    def read_pdu_data(dul: DULServiceProvider) -> None:
        _read_pdu_data(dul, max_pdu)

    DULServiceProvider._read_pdu_data = replacing(  # type: ignore[method-assign,assignment]
        DULServiceProvider._read_pdu_data, read_pdu_data)


def _read_pdu_data(dul: DULServiceProvider, max_pdu: int) -> None:
    """pynetdicom 3.0's reader (same events in the same cases) with the length check added."""
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
    if pdu_type == _P_DATA_TF and pdata_stream.enabled() and dul.state_machine.current_state == _ESTABLISHED:
        try:
            values = pdata_stream.receive(dul, memoryview(body))
        except pdata_stream.PDataError:
            dul.event_queue.put("Evt19")
            return
        if values:
            pdata_stream.to_pynetdicom(dul, values)
        return
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
    dul._radnode_spoke_at = time.monotonic()  # type: ignore[attr-defined]  # read by pynetdicom_ext
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
