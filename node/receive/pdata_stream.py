"""C-STORE requests taken from P-DATA PDUs by the receiver itself, their data sets streamed into
spool files as they arrive.

The PDU guard (``node.dicomnet.pdu_guard``) hands ``read`` the body of each P-DATA-TF PDU of an
established association. A C-STORE request with a data set is written straight into a spool
part file and answered in that thread (``install``'s ``answer``), or, before the receiver has
handled the association's acceptance, queued for pynetdicom's association thread; anything else
goes to pynetdicom unchanged. Every message is bounded (``MAX_COMMAND_BYTES``,
``MAX_HANDED_DATA_BYTES``). Why and what it saves: docs/receive-speed.md.
"""

from __future__ import annotations

import collections
import io
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass

from node import logs
from node.dicomnet import command_sets
from node.receive.screening import uid_problem
from node.receive.spool import PartFile, Spool, part10_header

_C_STORE_RQ, _NO_DATA_SET = command_sets.C_STORE_RQ, command_sets.NO_DATA_SET
_COMMAND_FIELD, _DATA_SET_TYPE = 0x00000100, 0x00000800
_AFFECTED_SOP_CLASS, _AFFECTED_SOP_INSTANCE = 0x00000002, 0x00001000
_MESSAGE_ID, _PRIORITY = 0x00000110, 0x00000700
_MOVE_ORIGINATOR_AET, _MOVE_ORIGINATOR_ID = 0x00001030, 0x00001031
#: Command elements whose value is an US (PS3.7 E.1), read as numbers.
_US_TAGS = frozenset({_COMMAND_FIELD, _DATA_SET_TYPE, _MESSAGE_ID, _PRIORITY, _MOVE_ORIGINATOR_ID})


#: A command set is a dozen elements, a few hundred bytes; anything longer is not one.
MAX_COMMAND_BYTES = 64 * 1024
#: The data set of a message handed to pynetdicom, which keeps it in memory: a C-FIND
#: identifier is a few kilobytes, and the node takes no other message with a data set.
MAX_HANDED_DATA_BYTES = 1024 * 1024


class PDataError(ValueError):
    """A P-DATA-TF PDU whose items do not add up, or a message beyond its bound; the
    association is aborted (as pynetdicom does)."""


@dataclass
class Incoming:
    """One C-STORE data set on its way into the spool."""

    context_id: int
    #: The presentation context's abstract syntax (the SOP class the association agreed to).
    abstract_syntax: str
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    #: The file, from its file meta on; None when nothing is written (see ``refused``).
    part: PartFile | None
    #: Length of the file meta in front of the data set.
    header_size: int
    #: The C-STORE request: answered once the data set is complete, here or by pynetdicom.
    request: C_STORE
    #: Why the data set was not kept: "disk" (below the free-space watermark) or the write error.
    refused: str | OSError | None = None
    #: Why the command itself cannot be taken (a UID pynetdicom refuses): the data set is
    #: written all the same, to be kept in quarantine with this reason.
    command_problem: str | None = None


#: The C-STORE handler run where the last fragment arrived: the response's status (a code, or
#: a status data set with an ErrorComment), or None when it cannot answer on this association
#: yet (pynetdicom's association thread then calls its EVT_C_STORE handler instead).
Answer = Callable[[Association, "Incoming"], "int | Dataset | None"]

#: The status pynetdicom answers with when a C-STORE handler raises (PS3.4 B.2.3: failure).
HANDLER_FAILED = 0xC211


@dataclass(frozen=True)
class Settings:
    spool: Spool
    has_room: Callable[[], bool]
    answer: Answer | None


@dataclass
class _Stream:
    """The receiving side of one association."""

    settings: Settings
    #: The command fragments received so far, as presentation data values (control byte first).
    command: list[bytes] = field(default_factory=list)
    command_bytes: int = 0
    #: Bytes of the data set pynetdicom is assembling for the last message handed to it; None
    #: when that message has no data set (or its data set is complete).
    handed_data: int | None = None
    current: Incoming | None = None
    done: collections.deque[Incoming] = field(default_factory=collections.deque)
    lock: threading.Lock = field(default_factory=threading.Lock)


_settings: Settings | None = None


def install(spool: Spool, has_room: Callable[[], bool], answer: Answer | None = None) -> None:
    """Stream this process's C-STORE data sets into ``spool``; ``has_room`` says whether the
    disk is above its watermark (checked once per instance, before anything is written);
    ``answer``, when given, answers each complete C-STORE in the thread that read it."""
    global _settings
    _settings = Settings(spool, has_room, answer)


def enabled() -> bool:
    return _settings is not None


def read(dul: DULServiceProvider, body: memoryview) -> None:
    """The PDU guard's P-DATA reader: take one P-DATA-TF PDU, hand pynetdicom what is its, and
    abort the association (Evt19) on items that do not add up."""
    try:
        values = receive(dul, body)
    except PDataError:
        dul.event_queue.put("Evt19")
        return
    if values:
        to_pynetdicom(dul, values)


def receive(dul: DULServiceProvider, body: memoryview) -> list[list[int | bytes]]:
    """Take one P-DATA-TF PDU's items; returns the presentation data values for pynetdicom
    (empty: nothing for it in this PDU). Raises PDataError for items that do not add up."""
    stream = _stream_of(dul)
    passed: list[list[int | bytes]] = []
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            raise PDataError("truncated presentation data value item")
        length = int.from_bytes(body[pos:pos + 4], "big")
        if length < 2 or pos + 4 + length > end:
            raise PDataError("presentation data value item length does not fit its PDU")
        context_id, control = body[pos + 4], body[pos + 5]
        value = body[pos + 5:pos + 4 + length]  # the control byte and the fragment
        pos += 4 + length
        if control & 1:
            _add_command_fragment(stream, value)
            if control & 2 and not _command_complete(dul, stream, context_id):
                passed += [[context_id, fragment] for fragment in stream.command]
            if control & 2:
                stream.command.clear()
                stream.command_bytes = 0
            continue
        incoming = stream.current
        if incoming is None or incoming.context_id != context_id:
            passed.append([context_id, _handed_data(stream, value)])
            continue
        _write(stream, incoming, value[1:])
        if control & 2:
            stream.current = None
            if not _answered_here(dul, stream, incoming):
                _to_association_thread(dul, stream, incoming)
    return passed


def _add_command_fragment(stream: _Stream, value: memoryview) -> None:
    stream.command_bytes += len(value) - 1
    if stream.command_bytes > MAX_COMMAND_BYTES:
        raise _protocol_error(f"a command set longer than {MAX_COMMAND_BYTES} bytes")
    stream.command.append(bytes(value))


def _handed_data(stream: _Stream, value: memoryview) -> bytes:
    """A data set fragment for the message pynetdicom assembles, within its bound."""
    if stream.handed_data is None:
        raise _protocol_error("a data set fragment with no command before it on its presentation context")
    stream.handed_data += len(value) - 1
    if stream.handed_data > MAX_HANDED_DATA_BYTES:
        raise _protocol_error(f"a data set of more than {MAX_HANDED_DATA_BYTES} bytes "
                              "for a message the node does not store")
    if value[0] & 2:
        stream.handed_data = None
    return bytes(value)


def _protocol_error(reason: str) -> PDataError:
    logs.warning("association.message_refused", reason=reason)
    return PDataError(reason)


def _answered_here(dul: DULServiceProvider, stream: _Stream, incoming: Incoming) -> bool:
    """Answer a complete C-STORE in this (the DUL) thread; False when it cannot be answered
    here yet. The kernel is asked to start writing the data set to the disk first, so that the
    commit's flush, after the checks, waits for less: the flush no longer runs in one thread
    while the checks run in another, and without this the hand-offs saved were lost again."""
    answer = stream.settings.answer
    assoc = dul.assoc
    if answer is None or not assoc.is_established:
        return False
    if incoming.part is not None and incoming.refused is None:
        incoming.part.start_writeback()
    try:
        status = answer(assoc, incoming)
    except Exception as error:  # as pynetdicom answers for a handler that raised
        logs.error("store.failed", reason=f"handler raised {type(error).__name__}")
        status = HANDLER_FAILED
    if status is None:
        return False
    if incoming.part is not None:
        incoming.part.discard()  # what a handler that raised left; nothing once committed or kept aside
    if status == 0 and type(status) is int and _send_success(assoc, incoming):
        return True
    response = C_STORE()
    response.MessageIDBeingRespondedTo = incoming.request.MessageID
    response.AffectedSOPClassUID = incoming.request.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = incoming.request.AffectedSOPInstanceUID
    response = StorageServiceClass(assoc).validate_status(status, response)
    assoc.dimse.send_msg(response, incoming.context_id)  # sent by this thread after this PDU
    return True


def _send_success(assoc: Association, incoming: Incoming) -> bool:
    """Queue the success response of ``incoming`` for the DUL thread, encoded from its request
    (whose UIDs pynetdicom's setters already checked) without building a response primitive
    and validating its status; False when it would not fit one PDU (``send_msg`` then sends it)."""
    request = incoming.request
    if request.MessageID is None:
        return False
    command = command_sets.store_response(request.AffectedSOPClassUID, request.MessageID,
                                          request.AffectedSOPInstanceUID)
    limit = assoc.dimse.maximum_pdu_size
    if limit and len(command) + 12 > limit:
        return False
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[incoming.context_id, b"\x03" + command]]  # type: ignore[list-item]
    assoc.dimse.dul.send_pdu(pdata)
    return True


def _to_association_thread(dul: DULServiceProvider, stream: _Stream, incoming: Incoming) -> None:
    """Queue a complete C-STORE for pynetdicom's association thread, which calls its handler."""
    with stream.lock:
        stream.done.append(incoming)
    dul.assoc.dimse.msg_queue.put((incoming.context_id, incoming.request))
    if incoming.part is not None and incoming.refused is None:
        incoming.part.sync()  # while the handler, just woken, checks the data set


def to_pynetdicom(dul: DULServiceProvider, values: list[list[int | bytes]]) -> None:
    """Hand presentation data values to pynetdicom as its own PDU reader would (Evt10, DT-2)."""
    primitive = P_DATA()
    primitive.presentation_data_value_list = values  # type: ignore[assignment]
    dul._recv_pdu.put(_Received(primitive))  # type: ignore[arg-type]  # DT-2 only calls to_primitive
    dul.event_queue.put("Evt10")


def take(assoc: Association) -> Incoming | None:
    """The oldest completed data set of ``assoc`` (the C-STORE its handler is answering)."""
    stream: _Stream | None = getattr(assoc.dul, "_radnode_stream", None)
    if stream is None:
        return None
    with stream.lock:
        return stream.done.popleft() if stream.done else None


def discard(assoc: Association) -> None:
    """Remove the files of ``assoc`` that no handler took (an aborted or dropped association)."""
    stream: _Stream | None = getattr(assoc.dul, "_radnode_stream", None)
    if stream is None:
        return
    with stream.lock:
        left = list(stream.done) + ([stream.current] if stream.current is not None else [])
        stream.done.clear()
        stream.current = None
        for incoming in left:
            if incoming.part is not None:
                incoming.part.discard()


class _Received:
    """What DT-2 takes from ``dul._recv_pdu``: anything with ``to_primitive``."""

    def __init__(self, primitive: P_DATA) -> None:
        self._primitive = primitive

    def to_primitive(self) -> P_DATA:
        return self._primitive


def _stream_of(dul: DULServiceProvider) -> _Stream:
    stream: _Stream | None = getattr(dul, "_radnode_stream", None)
    if stream is None:
        assert _settings is not None, "pdata_stream.install() first"
        stream = _Stream(_settings)
        dul._radnode_stream = stream  # type: ignore[attr-defined]
    return stream


def _command_complete(dul: DULServiceProvider, stream: _Stream, context_id: int) -> bool:
    """A whole command set arrived: a C-STORE request with a data set on an accepted context
    starts a spool file (True); anything else is pynetdicom's to decode (False)."""
    if stream.current is not None:  # its data set never ended: a new message replaces it
        with stream.lock:
            if stream.current.part is not None:
                stream.current.part.discard()
            stream.current = None
    fields = command_sets.command_fields(b"".join(fragment[1:] for fragment in stream.command), _US_TAGS)
    stream.handed_data = None
    context = dul.assoc._accepted_cx.get(context_id)
    if (fields is None or context is None or fields.get(_COMMAND_FIELD) != _C_STORE_RQ
            or fields.get(_DATA_SET_TYPE) == _NO_DATA_SET):
        return _hand_over(stream, fields)
    taken = _request_of(fields)
    if taken is None:
        return _hand_over(stream, fields)  # pynetdicom refuses the message as it always did (an A-ABORT)
    request, problem = taken
    sop_class = _text(fields.get(_AFFECTED_SOP_CLASS))
    sop_instance = _text(fields.get(_AFFECTED_SOP_INSTANCE))
    syntax = str(context.transfer_syntax[0])
    incoming = Incoming(context_id, str(context.abstract_syntax), syntax, sop_class, sop_instance, None, 0,
                        request, command_problem=problem)
    stream.current = incoming
    if not stream.settings.has_room():
        incoming.refused = "disk"
        return True
    try:
        header = part10_header(sop_class, sop_instance, syntax, dul.assoc.requestor.ae_title)
    except (UnicodeError, struct.error):
        header = b""  # the command's own UIDs are wrong; the handler refuses and keeps the data
    try:
        incoming.part = stream.settings.spool.open_part()
        incoming.part.write(header)
        incoming.header_size = len(header)
    except OSError as error:
        _failed(incoming, error)
    return True


def _hand_over(stream: _Stream, fields: dict[int, bytes | int] | None) -> bool:
    """A command for pynetdicom to decode: count the data set it will assemble (False)."""
    if fields is not None and fields.get(_DATA_SET_TYPE, _NO_DATA_SET) != _NO_DATA_SET:
        stream.handed_data = 0
    return False


def _request_of(fields: dict[int, bytes | int]) -> tuple[C_STORE, str | None] | None:
    """The C-STORE request of a command and why it cannot be taken (None: it can), or None for a
    command pynetdicom is left to refuse. A UID the setters refuse is left out of the request
    (and so out of the response) and named as the problem."""
    try:
        return store_request(fields), None
    except (ValueError, TypeError, KeyError):
        pass
    for tag, name in ((_AFFECTED_SOP_CLASS, "AffectedSOPClassUID"),
                      (_AFFECTED_SOP_INSTANCE, "AffectedSOPInstanceUID")):
        problem = uid_problem(name, _text(fields.get(tag)))
        if problem is not None:
            try:
                return store_request({**fields, _AFFECTED_SOP_CLASS: b"", _AFFECTED_SOP_INSTANCE: b""}), \
                    f"C-STORE command: {problem}"
            except (ValueError, TypeError, KeyError):
                return None
    return None


def store_request(fields: dict[int, bytes | int]) -> C_STORE:
    """The C-STORE request primitive of a command's fields, set through pynetdicom's own
    setters (which validate as they do when pynetdicom decodes the message); no data set in
    it: the data set is in the spool part file."""
    request = C_STORE()
    request.MessageID = fields[_MESSAGE_ID]  # type: ignore[assignment]
    request.AffectedSOPClassUID = _text(fields.get(_AFFECTED_SOP_CLASS))
    request.AffectedSOPInstanceUID = _text(fields.get(_AFFECTED_SOP_INSTANCE))
    request.Priority = fields.get(_PRIORITY, 2)  # type: ignore[assignment]
    if _MOVE_ORIGINATOR_AET in fields:
        request.MoveOriginatorApplicationEntityTitle = _text(fields[_MOVE_ORIGINATOR_AET]).strip()
    if _MOVE_ORIGINATOR_ID in fields:
        request.MoveOriginatorMessageID = fields[_MOVE_ORIGINATOR_ID]  # type: ignore[assignment]
    request.DataSet = io.BytesIO()
    return request


def _write(stream: _Stream, incoming: Incoming, fragment: memoryview) -> None:
    if incoming.part is None or incoming.refused is not None:
        return
    with stream.lock:  # ``discard`` may close the file from the association's thread
        try:
            incoming.part.write(fragment)
        except (OSError, AssertionError) as error:
            _failed(incoming, error if isinstance(error, OSError) else OSError(str(error)))


def _failed(incoming: Incoming, error: OSError) -> None:
    """A write failed (the disk filled up): drop what was written, refuse at the handler."""
    incoming.refused = error
    if incoming.part is not None:
        incoming.part.discard()
        incoming.part = None


def _text(value: bytes | int | None) -> str:
    """A UI value of the command as text (PS3.5 6.2: padded with a trailing NUL)."""
    if not isinstance(value, bytes):
        return ""
    return value.rstrip(b"\x00 ").decode("latin-1")  # as pydicom decodes it, byte for byte
