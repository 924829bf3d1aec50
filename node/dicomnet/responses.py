"""C-STORE responses to the dispatcher's requests read without pydicom: the same primitive.

An SCP answers a C-STORE with a command set of half a dozen elements in one P-DATA value.
pynetdicom decodes it into a pydicom data set and then into its primitive, field by field: a
fifth of the dispatcher's time per image. ``receive_primitive`` (one replacement of
``DIMSEServiceProvider.receive_primitive``) reads such a response's elements itself and sets them
on the primitive through pynetdicom's own (validating) setters; any other message, a response
with an element it does not read, or a bound EVT_DIMSE_RECV handler goes to pynetdicom.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from node.dicomnet import command_sets

_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _RESPONDING_TO = 0x0000, 0x0002, 0x0100, 0x0120
_DATA_SET_TYPE, _STATUS, _SOP_INSTANCE = 0x0800, 0x0900, 0x1000
_US_TAGS = frozenset({_COMMAND_FIELD, _RESPONDING_TO, _DATA_SET_TYPE, _STATUS})
#: The elements a plain C-STORE response has (PS3.7 9.3.1.2); one with others goes to pynetdicom.
_READ = frozenset({_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _RESPONDING_TO, _DATA_SET_TYPE, _STATUS,
                   _SOP_INSTANCE})


def receive_primitive(original: Any, dimse: DIMSEServiceProvider, primitive: P_DATA) -> None:
    """``DIMSEServiceProvider.receive_primitive``: a whole C-STORE response on a requested
    association goes to the message queue as its primitive, read here; anything else to pynetdicom."""
    values = primitive.presentation_data_value_list
    if (dimse.message is None and dimse.assoc.is_requestor and len(values) == 1
            and values[0][1][:1] == b"\x03" and not dimse.assoc.get_handlers(evt.EVT_DIMSE_RECV)):
        response = store_response(values[0][1][1:])
        if response is not None:
            dimse.msg_queue.put((values[0][0], response))
            return
    original(dimse, primitive)


def store_response(command: bytes) -> C_STORE | None:
    """The C-STORE response primitive of a command set, or None when it is not a plain one."""
    fields = command_sets.command_fields(command, _US_TAGS)
    if (fields is None or not fields.keys() <= _READ or fields.get(_COMMAND_FIELD) != command_sets.C_STORE_RSP
            or fields.get(_DATA_SET_TYPE) != command_sets.NO_DATA_SET
            or not isinstance(fields.get(_RESPONDING_TO), int) or not isinstance(fields.get(_STATUS), int)):
        return None
    response = C_STORE()
    response.MessageIDBeingRespondedTo = fields[_RESPONDING_TO]  # type: ignore[assignment]
    response.Status = fields[_STATUS]  # type: ignore[assignment]
    try:
        if isinstance(sop_class := fields.get(_SOP_CLASS), bytes):
            response.AffectedSOPClassUID = _text(sop_class)
        if isinstance(sop_instance := fields.get(_SOP_INSTANCE), bytes):
            response.AffectedSOPInstanceUID = _text(sop_instance)
    except (ValueError, TypeError):
        return None
    return response


def _text(value: bytes) -> str:
    """A UI value as pydicom reads it (its trailing NUL or space padding gone)."""
    return value.rstrip(b"\x00 ").decode("latin-1")
