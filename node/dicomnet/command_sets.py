"""C-STORE command sets encoded directly (implicit VR little endian, PS3.7 E.1), byte for byte
what pynetdicom encodes from its primitives, without building a pydicom data set for the
half-dozen elements of every request and response: pynetdicom builds one and encodes it twice
(once to learn its length), which cost the receiver as much as the rest of a response and the
dispatcher about a tenth of its time per image."""

from __future__ import annotations

import struct

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
#: (0000,0800) Command Data Set Type: 0x0101 means none; pynetdicom writes 0x0001 for one.
NO_DATA_SET, DATA_SET = 0x0101, 0x0001


def store_response(sop_class: object, message_id: int, sop_instance: object) -> bytes:
    """The command set of the success response to C-STORE request ``message_id``."""
    return _command_set(
        _element(0x0002, _uid(sop_class)),
        _element(0x0100, struct.pack("<H", C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", 0)),
        _element(0x1000, _uid(sop_instance)),
    )


def store_request(sop_class: object, message_id: int, priority: int, sop_instance: object) -> bytes:
    """The command set of a C-STORE request with a data set and no C-MOVE originator."""
    return _command_set(
        _element(0x0002, _uid(sop_class)),
        _element(0x0100, struct.pack("<H", C_STORE_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", DATA_SET)),
        _element(0x1000, _uid(sop_instance)),
    )


def command_fields(command: bytes, us_tags: frozenset[int]) -> dict[int, bytes | int] | None:
    """A command set's elements (implicit VR little endian): those of ``us_tags`` as numbers,
    others as bytes; None when the elements do not add up (pynetdicom then refuses it)."""
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
        fields[tag] = int.from_bytes(value, "little") if tag in us_tags else value
    return fields


def _command_set(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: object) -> bytes:
    text = str(value or "").encode("ascii")
    return text + b"\x00" if len(text) % 2 else text
