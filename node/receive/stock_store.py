"""A received C-STORE taken from stock pynetdicom's chunked receiving, when the speed-ups are off.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each data set to a temporary file of its
own, behind its file meta, and hands the EVT_C_STORE handler its ``event.dataset_path``. Here the
data set moves into a spool part file behind the file meta the fast path writes, so the receiver
answers it as it answers a streamed one (``Receiver.answer_store``: checked, fsynced and renamed
into the spool before the status goes back) and the spool holds the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from node.receive.pdata_stream import Incoming
from node.receive.spool import PartFile, Spool, part10_header

#: pynetdicom's file: preamble, "DICM", then (0002,0000) UL, whose value is the rest of the group.
_GROUP_LENGTH = struct.Struct("<HH2sHI")
_PREAMBLE = 132
_COPY_BYTES = 1024 * 1024


def arrived(event: evt.Event, spool: Spool, has_room: Callable[[], bool]) -> Incoming:
    """The C-STORE of ``event`` as the fast path's ``Incoming``: its data set in a part file, or
    why it was not kept ("disk" below the watermark, or the write error)."""
    request, context = cast(C_STORE, event.request), event.context
    sop_class, sop_instance = str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or "")
    syntax = str(context.transfer_syntax)
    incoming = Incoming(int(context.context_id), str(context.abstract_syntax), syntax, sop_class, sop_instance,
                        None, 0, request)
    if not has_room():
        incoming.refused = "disk"
        return incoming
    header = part10_header(sop_class, sop_instance, syntax, event.assoc.requestor.ae_title)
    part = None
    try:
        part = spool.open_part()
        part.write(header)
        _move_data_set(Path(event.dataset_path), part)
    except OSError as error:
        if part is not None:
            part.discard()
        incoming.refused = error
        return incoming
    incoming.part, incoming.header_size = part, len(header)
    return incoming


def _move_data_set(path: Path, part: PartFile) -> None:
    """Append the data set of pynetdicom's file at ``path`` (after its file meta) to ``part``, and
    remove pynetdicom's file."""
    with open(path, "rb") as file:
        file.seek(_PREAMBLE)
        group, element, vr, _, length = _GROUP_LENGTH.unpack(file.read(_GROUP_LENGTH.size))
        if (group, element, vr) != (0x0002, 0x0000, b"UL"):
            raise OSError(f"pynetdicom's received file {path.name} has no file meta group length")
        file.seek(_PREAMBLE + _GROUP_LENGTH.size + length)
        while chunk := file.read(_COPY_BYTES):
            part.write(chunk)
    path.unlink(missing_ok=True)
