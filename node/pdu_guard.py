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
PDUs of an established association go to ``node.pdata_stream`` (when the receiver installed it),
which writes C-STORE data sets straight into the spool.
"""

from __future__ import annotations

import struct

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from node import logs, pdata_stream

CONTROL_PDU_BYTES = 1024 * 1024
UNLIMITED_PDATA_BYTES = 64 * 1024 * 1024
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
_AWAITING_CLOSE = "Sta13"
_ESTABLISHED = "Sta6"


def pdu_limit(pdu_type: int, max_pdu: int) -> int:
    """The largest PDU length (the header's length field) the node reads for ``pdu_type``."""
    if pdu_type == _P_DATA_TF:
        return max_pdu if max_pdu > 0 else UNLIMITED_PDATA_BYTES
    return CONTROL_PDU_BYTES


def install(max_pdu: int) -> None:
    """Replace this process's PDU reader with one that enforces ``pdu_limit``."""

    def read_pdu_data(dul: DULServiceProvider) -> None:
        _read_pdu_data(dul, max_pdu)

    DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign,assignment]


def _read_pdu_data(dul: DULServiceProvider, max_pdu: int) -> None:
    """pynetdicom 3.0's reader (same events in the same cases) with the length check added."""
    transport = dul.socket
    assert transport is not None
    if dul.state_machine.current_state == _AWAITING_CLOSE:
        transport.close()  # Evt17, as when the peer closes
        return
    try:
        header = transport.recv(6)
        pdu_type, _, length = struct.unpack(">BBL", header)
    except (OSError, TimeoutError, struct.error):
        dul.event_queue.put("Evt17")  # transport closed
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
    body = _recv_exactly(transport, length)
    if body is None:
        dul.event_queue.put("Evt17")
        return
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


def _recv_exactly(transport: AssociationSocket, length: int) -> bytearray | None:
    """``length`` bytes from the connection in as few reads as the kernel allows (pynetdicom
    reads 4 KiB at a time), or None if it closed or failed first."""
    body = bytearray(length)
    view = memoryview(body)
    raw = transport.socket
    try:
        while view:
            got = raw.recv_into(view)  # type: ignore[union-attr]
            if not got:
                return None
            view = view[got:]
    except (OSError, TimeoutError, AttributeError):
        return None
    return body


def _peer(transport: object) -> str:
    try:
        return str(transport.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError):
        return "unknown"
