"""C-STORE requests taken from P-DATA PDUs by the receiver itself, their data sets streamed
into spool files as they arrive.

pynetdicom turns every P-DATA-TF PDU into PDU, item and primitive objects, walks them through
its state machine, copies each fragment into an in-memory buffer and decodes the command set
with pydicom; the receiver then copied the data set again to write the file: for a CT image
that was most of the receiver's time. Here the receiver's PDU reader (``node.receive.pdu_guard``)
hands the body of each P-DATA-TF PDU of an established association to ``receive``, which
splits it into its presentation data values (PS3.8 9.3.5) and:

- gathers the command fragments and reads the command's fields itself (PS3.7 E.1: implicit
  VR little endian, a dozen bytes of header per element);
- for a C-STORE request with a data set on an accepted context, writes each data set fragment
  straight into a spool part file that starts with the instance's file meta (built from the
  command, as pynetdicom does), and when the last fragment arrives answers the C-STORE in this
  thread: the receiver's handler (``install``'s ``answer``) checks the data set, makes it
  durable and indexes it, and the response goes to the DUL's own queue, which this thread
  sends from right after this PDU (event 9, action DT-1). Answering where the data arrived
  saves two thread hand-offs per image (to pynetdicom's association thread and back), about
  0.17 ms each, and pynetdicom's Python around its handler call;
- until the association is established and the receiver has handled its acceptance
  (pynetdicom sends the A-ASSOCIATE-AC, then runs the EVT_ACCEPTED handlers, then marks the
  association established, so a fast SCU's first C-STORE can arrive before), puts the
  C-STORE request primitive, built from those fields with pynetdicom's own
  (validating) setters, on the association's DIMSE message queue instead, where pynetdicom's
  message decoder would have put it: pynetdicom then calls the C-STORE handler in its
  association thread and sends the response as it always did. The file is flushed to the disk
  right after, in this thread, while that handler checks the data set (``PartFile.sync``);
- hands any other message (a C-ECHO, a command it cannot read) to pynetdicom unchanged, as
  pynetdicom's own reader would have (event 10, action DT-2).

Every message is bounded, because pynetdicom buffers whatever it is handed and a peer could
otherwise grow the receiver without limit on one association (2.5 GB streamed in 5 s kept a
receiver at 2.6 GB): a command set longer than ``MAX_COMMAND_BYTES`` (a real one is a few
hundred bytes), a data set fragment with no command before it on its context, and a data set
of more than ``MAX_HANDED_DATA_BYTES`` for a message handed to pynetdicom (a query's
identifier, or any message the node does not take itself) each abort the association. Only a
C-STORE's data set may be large, and it goes to the disk.

A C-STORE whose command names a SOP Class or Instance UID that pynetdicom's setters refuse (more
than 64 characters) is still streamed: the handler refuses it with 0xC000 and keeps it in
quarantine with the reason, rather than pynetdicom aborting the association.

pynetdicom keeps association negotiation, release, abort, every other DIMSE message and the
state machine. A C-STORE handler that pynetdicom calls takes the finished file with ``take``:
files are handed over in the order their messages completed, which is the order their
requests were queued.

The success response of a C-STORE is encoded here too (``node.receive.command_sets``), the same
bytes pynetdicom would send. Every other response (a refusal, a warning) is pynetdicom's.

This works inside pynetdicom 3.0: it feeds DT-2 through the DUL's private ``_recv_pdu``, puts
requests on the DIMSE message queue, reads ``_accepted_cx`` and replaces
``DIMSEServiceProvider.send_msg`` (``node.receive.pynetdicom_internals`` checks at import that
they are the ones expected). What pynetdicom would need to offer for it to go: a streaming
C-STORE handler, told the command when it arrives, that chooses where the data set goes and has
it written there as it arrives, in the thread that reads the socket; and a success response
encoded without building a data set. ``_config.STORE_RECV_CHUNKED_DATASET``
(https://github.com/pydicom/pynetdicom/pull/526) comes closest: it writes the data set to a
temporary file of its own as it arrives, but still turns every PDU into its objects and hands
the handler the file only when it is complete, in the association's thread.
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
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass

from node import logs
from node.receive import command_sets, pynetdicom_internals
from node.receive.pynetdicom_internals import replacing
from node.receive.screening import uid_problem
from node.receive.spool import PartFile, Spool, part10_header

pynetdicom_internals.require()

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
    if _settings is None:
        _answer_success_leanly()
    _settings = Settings(spool, has_room, answer)


def enabled() -> bool:
    return _settings is not None


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
    fields = command_fields(b"".join(fragment[1:] for fragment in stream.command))
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


def store_success_response(primitive: object) -> bytes | None:
    """The command set of a C-STORE response with status 0x0000 and nothing optional (implicit
    VR little endian, PS3.7 9.3.1.2), or None for any other message."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status != 0 or primitive.ErrorComment is not None
            or primitive.OffendingElement is not None):
        return None
    return command_sets.store_response(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                           primitive.AffectedSOPInstanceUID)


def _answer_success_leanly() -> None:
    """Send C-STORE success responses encoded by ``store_success_response`` (one P-DATA-TF
    with one command fragment, when the peer's maximum PDU length allows: always, in practice).
    It can go once pynetdicom encodes a C-STORE response without building a pydicom data set."""
    original = DIMSEServiceProvider.send_msg

    def send_msg(dimse: DIMSEServiceProvider, primitive: object, context_id: int) -> None:
        command = store_success_response(primitive)
        limit = dimse.maximum_pdu_size
        if command is None or (limit and len(command) + 12 > limit):
            original(dimse, primitive, context_id)  # type: ignore[arg-type]
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
        dimse.dul.send_pdu(pdata)

    send_msg.__doc__ = original.__doc__
    DIMSEServiceProvider.send_msg = replacing(original, send_msg)  # type: ignore[method-assign,assignment]


def command_fields(command: bytes) -> dict[int, bytes | int] | None:
    """The command set's elements (implicit VR little endian): US values as ints, others as
    bytes; None when the elements do not add up (pynetdicom then refuses the message itself)."""
    fields: dict[int, bytes | int] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if pos + length > end:
            return None
        value = command[pos:pos + length]
        pos += length
        tag = group << 16 | element
        fields[tag] = int.from_bytes(value, "little") if tag in _US_TAGS else value
    return fields


def _text(value: bytes | int | None) -> str:
    """A UI value of the command as text (PS3.5 6.2: padded with a trailing NUL)."""
    if not isinstance(value, bytes):
        return ""
    return value.rstrip(b"\x00 ").decode("latin-1")  # as pydicom decodes it, byte for byte
