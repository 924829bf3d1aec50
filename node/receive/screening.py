"""What the receiver checks before it trusts a received data set, without trusting the data.

A success status promises every later stage can read the instance, and those stages parse with
pydicom, which recurses per nesting level and believes every length. So the receiver walks the
element structure itself (an explicit stack, limits on depth, lengths and element count), inflates
a deflated data set in bounded steps, and refuses identifiers that would make unsafe file names.
The cases and their measured costs: docs/receive-speed.md.
"""

from __future__ import annotations

import contextlib
import mmap
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom._dicom_dict import DicomDictionary

#: PS3.5 9.1: at most 64 characters, components of digits separated by single dots. A leading
#: zero in a component is not allowed by the standard but sent by real scanners; it is harmless
#: in a file name, so it is accepted.
UID_MAX_LENGTH = 64
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

#: Sequences nest a handful of levels in real objects (a TID 1500 SR about 6); pydicom spends
#: about five Python frames per level, so 64 levels stay far below its recursion limit.
MAX_SEQUENCE_DEPTH = 64
#: Elements outside pixel data; an enhanced multi-frame object with per-frame groups for a few
#: thousand frames has a few hundred thousand.
MAX_ELEMENTS = 500_000
#: A deflated data set may not inflate beyond this (a few KB of zeros can claim gigabytes).
MAX_INFLATED_BYTES = 512 * 1024**2
#: Nor beyond this many times its compressed size: real images and reports deflate 2 to 10
#: times, a bomb of zeros a thousand times.
MAX_INFLATION_RATIO = 100
#: Whatever the ratio, a data set may inflate this far (a small, mostly empty one deflates well).
MIN_INFLATED_LIMIT = 16 * 1024**2
#: Compressed bytes fed, and inflated bytes taken, per step.
_INFLATE_STEP = 1024 * 1024

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
#: Any two upper-case letters (what a VR looks like; an unknown one is skipped by its length).
_VR_BYTES = frozenset(bytes((a, b)) for a in range(ord("A"), ord("Z") + 1) for b in range(ord("A"), ord("Z") + 1))
#: (element header, 4-byte length, 2-byte length) decoders, by byte order
_STRUCTS = {order: (struct.Struct(order + "HHI"), struct.Struct(order + "I"), struct.Struct(order + "H"))
            for order in "<>"}
#: An explicit VR element header with a 2-byte length: group, element, VR, length.
_EXPLICIT_HEADERS = {order: struct.Struct(order + "HH2sH") for order in "<>"}
#: VRs with a 4-byte length that hold a value, not items (sequences and UN take the general way).
_LONG_VALUE_VRS = _LONG_VRS - {b"SQ", b"UN"}
#: Implicit VR carries no VR: the dictionary says which elements are sequences.
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")


def uid_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be used as the UID ``name`` (and so as a file name), or None.

    The value itself is not repeated: it came from a peer and may be anything.
    """
    if not isinstance(value, str):
        return f"{name} has more than one value"
    if not value:
        return f"{name} is empty"
    if len(value) > UID_MAX_LENGTH:
        return f"{name} is longer than {UID_MAX_LENGTH} characters"
    if not _UID.fullmatch(value):
        return f"{name} is not a UID (digits and single dots only, PS3.5 9.1)"
    return None


@dataclass(frozen=True)
class _Frame:
    kind: str  # "dataset", "item", "sequence" or "fragments"
    end: int | None  # None: undefined length, ended by a delimiter
    limit: int  # the nearest defined end at or above this frame
    implicit: bool  # implicit VR inside (a UN sequence is implicit VR, PS3.5 6.2.2)
    depth: int  # sequences enclosing this frame, itself included


class StructureError(ValueError):
    """The data set's element structure is broken or exceeds a limit; the message says which."""


def inflated_limit(compressed: int) -> int:
    """The most a deflated data set of ``compressed`` bytes may inflate to."""
    return min(MAX_INFLATED_BYTES, max(MIN_INFLATED_LIMIT, MAX_INFLATION_RATIO * compressed))


@contextlib.contextmanager
def inflated(data: bytes | memoryview) -> Iterator[memoryview]:
    """A deflated data set (raw deflate, PS3.5 A.5), inflated: the one decoded copy, in an
    anonymous mapping whose pages are taken as they are written and given back when the
    last view of it goes. Raises StructureError for one that inflates beyond
    ``inflated_limit``, as soon as it does, or that cannot be inflated."""
    limit = inflated_limit(len(data))
    buffer = mmap.mmap(-1, limit)
    size = _inflate_into(buffer, memoryview(data), limit)
    with memoryview(buffer) as whole, whole[:size] as view:
        yield view


def _inflate_into(buffer: mmap.mmap, data: memoryview, limit: int) -> int:
    """Inflate ``data`` into ``buffer`` a step at a time; returns the inflated size."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    try:
        for start in range(0, len(data), _INFLATE_STEP):
            pending: bytes | memoryview = data[start:start + _INFLATE_STEP]
            while pending:
                size = _put(buffer, size, inflater.decompress(pending, min(_INFLATE_STEP, limit + 1 - size)), limit,
                            len(data))
                pending = inflater.unconsumed_tail
        return _put(buffer, size, inflater.flush(), limit, len(data))
    except zlib.error as error:
        raise StructureError(f"deflated data set cannot be inflated ({error})") from None


def _put(buffer: mmap.mmap, size: int, chunk: bytes, limit: int, compressed: int) -> int:
    if size + len(chunk) > limit:
        raise StructureError(f"deflated data set of {compressed} bytes inflates beyond {limit} bytes "
                             f"(limit: {MAX_INFLATION_RATIO} times its size, at least {MIN_INFLATED_LIMIT}, "
                             f"at most {MAX_INFLATED_BYTES})")
    buffer[size:size + len(chunk)] = chunk
    return size + len(chunk)


def check_structure(data: bytes | memoryview, implicit: bool, max_depth: int = MAX_SEQUENCE_DEPTH,
                    max_elements: int = MAX_ELEMENTS, little_endian: bool = True,
                    collect: frozenset[int] = frozenset()) -> dict[int, bytes]:
    """Walk every element header of a data set; raise StructureError if it is broken: a length
    past its parent, an undefined length without its delimiter, a sequence holding other than
    items, nesting beyond ``max_depth``. Values are skipped, not decoded. Returns the raw values
    of the top-level elements whose tags are in ``collect`` (the receiver's identifiers, read on
    the same walk)."""
    collected: dict[int, bytes] = {}
    view = memoryview(data)
    order = "<" if little_endian else ">"
    header_struct = _STRUCTS[order][0]
    stack = [_Frame("dataset", len(data), len(data), implicit, 0)]
    elements = pos = 0
    while stack:
        top = stack[-1]
        if not top.implicit and top.kind in ("dataset", "item"):
            pos, elements = _plain_elements(view, pos, top, order, elements, max_elements, collect,
                                            collected if len(stack) == 1 else None)
        if top.end is not None and pos >= top.end:
            if pos > top.end:
                raise StructureError(f"an element runs past the end of its {top.kind} at byte {top.end}")
            stack.pop()
            continue
        if pos + 8 > top.limit:
            raise StructureError(f"truncated element header at byte {pos} "
                                 f"(an undefined-length {top.kind} without its delimiter?)")
        group, element, length = header_struct.unpack_from(view, pos)
        tag = group << 16 | element
        elements += 1
        if elements > max_elements:
            raise StructureError(f"more than {max_elements} elements")
        if top.kind in ("sequence", "fragments"):
            pos = _sequence_step(stack, top, tag, length, pos)
            continue
        if tag == _ITEM_END:
            if top.kind != "item" or top.end is not None:
                raise StructureError(f"item delimiter outside an undefined-length item at byte {pos}")
            stack.pop()
            pos += 8
            continue
        pos = _element_step(view, pos, stack, tag, order, max_depth,
                            collected if tag in collect and len(stack) == 1 else None)
    return collected


def _element_step(view: memoryview, pos: int, stack: list[_Frame], tag: int, order: str, max_depth: int,
                  collected: dict[int, bytes] | None) -> int:
    """One element of a data set or item at ``pos``: a sequence (or undefined-length pixel data)
    is entered, any other value skipped (kept in ``collected`` when given); returns where the walk
    goes on."""
    top = stack[-1]
    group, element = tag >> 16, tag & 0xFFFF
    vr, length, header = _element_header(view, pos, top, tag, order)
    pos += header
    if length == _UNDEFINED:
        if tag == _PIXEL_DATA and len(stack) == 1:
            stack.append(_Frame("fragments", None, top.limit, top.implicit, top.depth))
        elif vr in (b"SQ", b"UN", None):
            stack.append(_sequence(top, None, top.implicit or vr == b"UN", max_depth))
        else:
            raise StructureError(f"undefined length on ({group:04X},{element:04X}), which is not a sequence")
        return pos
    if pos + length > top.limit:
        raise StructureError(f"element ({group:04X},{element:04X}) claims {length} bytes, "
                             f"more than its container holds")
    if vr == b"SQ":
        stack.append(_sequence(top, pos + length, top.implicit, max_depth))
        return pos
    if vr == b"UN" and _dictionary_vr(tag) == b"SQ":  # pydicom reads it as the SQ it is
        stack.append(_sequence(top, pos + length, True, max_depth))
        return pos
    if collected is not None:
        collected[tag] = bytes(view[pos:pos + length])
    return pos + length


def _plain_elements(view: memoryview, pos: int, top: _Frame, order: str, elements: int, max_elements: int,
                    collect: frozenset[int], collected: dict[int, bytes] | None) -> tuple[int, int]:
    """Step over the run of explicit VR elements at ``pos`` that are neither sequences nor of
    undefined length (nearly all of them), and return (position, elements counted) where the
    general loop takes over: at anything else, at a length that does not fit (the general loop
    then says why) or at the frame's end. The same checks as the general loop, with less work
    per element: this walk runs on every received instance."""
    header = _EXPLICIT_HEADERS[order]
    long_length = _STRUCTS[order][1]
    end = top.end if top.end is not None else top.limit
    limit = top.limit
    while pos + 8 <= end and elements < max_elements:
        group, element, vr, length = header.unpack_from(view, pos)
        if vr in _LONG_VALUE_VRS:
            if pos + 12 > limit:
                break
            length = long_length.unpack_from(view, pos + 8)[0]
            start = pos + 12
        elif vr in _VR_BYTES and vr not in _LONG_VRS and group != 0xFFFE:
            start = pos + 8
        else:
            break
        if length == _UNDEFINED or start + length > limit:
            break
        elements += 1
        if collected is not None and (group << 16 | element) in collect:
            collected[group << 16 | element] = bytes(view[start:start + length])
        pos = start + length
    return pos, elements


def _sequence(parent: _Frame, end: int | None, implicit: bool, max_depth: int) -> _Frame:
    if parent.depth + 1 > max_depth:
        raise StructureError(f"sequences nested deeper than {max_depth} levels")
    return _Frame("sequence", end, parent.limit if end is None else end, implicit, parent.depth + 1)


def _dictionary_vr(tag: int) -> bytes | None:
    """SQ for a sequence, None for an element the dictionary does not know (private ones), else
    a placeholder: only "is it a sequence" matters here."""
    if tag in _SEQUENCE_TAGS:
        return b"SQ"
    return b"--" if tag in DicomDictionary else None


def _element_header(view: memoryview, pos: int, top: _Frame, tag: int,
                    order: str) -> tuple[bytes | None, int, int]:
    """(VR, value length, header size) of the element at ``pos``; VR None when unknown."""
    _, long_length, short_length = _STRUCTS[order]
    if top.implicit:
        return _dictionary_vr(tag), long_length.unpack_from(view, pos + 4)[0], 8
    vr = bytes(view[pos + 4:pos + 6])
    if vr not in _VR_BYTES:
        raise StructureError(f"element at byte {pos} has no valid VR")
    if vr in _LONG_VRS:
        if pos + 12 > top.limit:
            raise StructureError(f"truncated element header at byte {pos}")
        return vr, long_length.unpack_from(view, pos + 8)[0], 12
    return vr, short_length.unpack_from(view, pos + 6)[0], 8


def _sequence_step(stack: list[_Frame], top: _Frame, tag: int, length: int, pos: int) -> int:
    """Inside a sequence or encapsulated pixel data: an item, a fragment or the delimiter."""
    if tag == _SEQUENCE_END:
        if top.end is not None:
            raise StructureError(f"sequence delimiter inside a defined-length {top.kind} at byte {pos}")
        stack.pop()
        return pos + 8
    if tag != _ITEM:
        raise StructureError(f"a {top.kind} holds something other than items at byte {pos}")
    pos += 8
    if top.kind == "fragments" or length != _UNDEFINED:
        if length == _UNDEFINED or pos + length > top.limit:
            raise StructureError(f"item at byte {pos - 8} claims more bytes than its container holds")
        if top.kind == "fragments":
            return pos + length
        stack.append(_Frame("item", pos + length, pos + length, top.implicit, top.depth))
        return pos
    stack.append(_Frame("item", None, top.limit, top.implicit, top.depth))
    return pos
