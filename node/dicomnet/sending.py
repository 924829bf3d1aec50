"""Sending DIMSE messages with less work than pynetdicom: the same PDUs on the wire.

``send_msg`` (one replacement of ``DIMSEServiceProvider.send_msg``) encodes a C-STORE success
response from ``command_sets``, sends a C-STORE request whose data set is a file as the file's
bytes, and queues any other message's P-DATA for the DUL thread in batches; ``send_p_data`` and
``send_p_data_releasing`` (state machine actions DT-1 and AR-7) write a batch in one socket write.
``without_nagle`` sets TCP_NODELAY on requested associations. ``node.dicomnet.patches`` installs
them; why each exists and what would retire it is in its table.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from node.dicomnet import command_sets
from node.dicomnet.file_meta import HEAD_BYTES, file_meta

#: A DIMSE message's P-DATA requests are queued for the DUL thread in batches of this many bytes.
BATCH_BYTES = 4 * 1024 * 1024


class _PDUs(P_DATA):
    """Consecutive P-DATA requests of one DIMSE message, queued for the DUL thread as one:
    each presentation data value is sent as the P-DATA-TF PDU it was sized for."""


class _Encoded(P_DATA):
    """P-DATA-TF PDUs already encoded, queued for the DUL thread as one P-DATA request."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


def send_msg(dimse: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``: a C-STORE success response encoded lean, a C-STORE
    request of a file sent as its bytes, any other message's P-DATA queued in batches of
    ``BATCH_BYTES`` (one DUL wake-up and socket write instead of one per PDU)."""
    if _send_store_success(dimse, primitive, context_id) or _send_store_request(dimse, primitive, context_id):
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
    """Send a C-STORE request whose data set is a file's (``STORE_SEND_CHUNKED_DATASET``) as
    P-DATA-TF PDUs encoded here, the same PDUs pynetdicom sends: the command set from
    ``command_sets``, the file read ``BATCH_BYTES`` at a time and cut to the peer's PDU length.
    False (nothing sent) for any other message, or when a handler wants the EVT_DIMSE_SENT
    message object."""
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
        return _send_file(dimse, context_id, command, file, offset)


def _send_file(dimse: DIMSEServiceProvider, context_id: int, command: bytes, file: BinaryIO, offset: int) -> bool:
    """Queue a C-STORE request's command and the data set that starts at ``offset`` of ``file``
    as P-DATA-TF PDUs of the peer's length; False (nothing sent) when they would not fit."""
    fragment = dimse.maximum_pdu_size - 6
    left = os.fstat(file.fileno()).st_size - offset
    if len(command) > fragment or left <= 0:
        return False
    file.seek(offset)
    parts: list[bytes | memoryview] = [_pdu_header(context_id, 0x03, len(command)), command]
    step = max(1, BATCH_BYTES // fragment) * fragment
    while left:
        chunk = memoryview(file.read(min(step, left)))
        if not chunk:
            raise OSError(f"{file.name} shrank while it was sent")
        left -= len(chunk)
        for start in range(0, len(chunk), fragment):
            piece = chunk[start:start + fragment]
            last = not left and start + fragment >= len(chunk)
            parts += [_pdu_header(context_id, 0x02 if last else 0x00, len(piece)), piece]
        dimse.dul.send_pdu(_Encoded(b"".join(parts)))
        parts = []
    return True


def store_file(assoc: Association, context_id: int, message_id: int, path: Path) -> int | None:
    """C-STORE the PS3.10 file at ``path`` on ``context_id``; the response's status, or None
    (no valid response: the association is aborted, as pynetdicom does). ``send_c_store`` for a
    file without pydicom reading its file meta, nor a request primitive and status data set
    built and validated. ValueError (nothing sent): file meta not laid out as the node's writers
    write it. The reactor stays paused until ``resume_reactor``."""
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
        meta = file_meta(head)
        if meta.size + 8 > len(head):  # the file meta did not end inside ``head``
            raise ValueError(f"{path.name}: its file meta is longer than expected")
        offset = meta.size
        command = command_sets.store_request(meta.sop_class, message_id, 2, meta.sop_instance)  # priority medium
        _pause_reactor(assoc)
        if not _send_file(assoc.dimse, context_id, command, file, offset):
            raise ValueError(f"{path.name}: its command does not fit the peer's PDU length")
        _, response = assoc.dimse.get_msg(block=True)
    if response is None:
        assoc._handle_no_response()
        return None
    status = response.Status if response.is_valid_response else None
    if status is None:
        assoc.abort()
        return None
    return int(status)


def _pause_reactor(assoc: Association) -> None:
    """Pause the association's reactor, as ``send_c_store`` does, so that the caller takes the
    response; once for a whole batch of files, not for each (a hand-off between threads each)."""
    if assoc._reactor_checkpoint.is_set():
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)


def resume_reactor(assoc: Association) -> None:
    """Let the association's reactor run again after ``store_file`` (before a release)."""
    assoc._reactor_checkpoint.set()


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


def send_p_data(dul: DULServiceProvider) -> str:
    """DT-1 (Sta6 + Evt9): send the queued P-DATA request."""
    _send_queued_p_data(dul)
    return "Sta6"


def send_p_data_releasing(dul: DULServiceProvider) -> str:
    """AR-7 (Sta8 + Evt9): send the queued P-DATA request while the peer's release waits."""
    _send_queued_p_data(dul)
    return "Sta8"


def without_nagle(original: Any, transport: AssociationSocket, *args: Any, **kwargs: Any) -> socket.socket:
    sock: socket.socket = original(transport, *args, **kwargs)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send_store_success(dimse: DIMSEServiceProvider, primitive: Any, context_id: int) -> bool:
    """Send a C-STORE success response as one P-DATA-TF with one command fragment, encoded by
    ``store_success_response`` (the bytes pynetdicom would send, without a pydicom data set);
    False for any other message, when it would not fit one PDU, or when a handler wants the
    EVT_DIMSE_SENT message object."""
    command = store_success_response(primitive)
    limit = dimse.maximum_pdu_size
    if command is None or (limit and len(command) + 12 > limit) or dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return False
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
    dimse.dul.send_pdu(pdata)
    return True


def store_success_response(primitive: object) -> bytes | None:
    """The command set of a C-STORE response with status 0x0000 and nothing optional (implicit
    VR little endian, PS3.7 9.3.1.2), or None for any other message."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status != 0 or primitive.ErrorComment is not None
            or primitive.OffendingElement is not None):
        return None
    return command_sets.store_response(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                                       primitive.AffectedSOPInstanceUID)
