"""A PS3.10 file's meta group read from its first bytes, without pydicom: the UIDs the STOW-RS
receiver checks a part against and the dispatcher offers a result file under, and where the
data set starts (PS3.10 7.1: preamble, "DICM", group 0x0002 in explicit VR little endian)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: The most file meta read: a real one is a few hundred bytes.
MAX_FILE_META = 64 * 1024
#: Bytes to read from a file's start for ``file_meta``.
HEAD_BYTES = 132 + MAX_FILE_META


@dataclass(frozen=True)
class FileMeta:
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    size: int  # preamble, "DICM" and the group 0x0002 elements


def file_meta(head: bytes | memoryview) -> FileMeta:
    """The file meta at the start of ``head`` (a file's first ``HEAD_BYTES``); ValueError when it
    is not a PS3.10 file meta."""
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM PS3.10 file (no DICM prefix after the 128-byte preamble)")
    values: dict[int, str] = {}
    pos = 132
    while pos + 8 <= len(head):
        group, element, vr = struct.unpack_from("<HH2s", head, pos)
        if group != 0x0002:
            break
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            if pos + 12 > len(head):
                break
            length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        if start + length > len(head):
            raise ValueError("file meta element runs past the file meta's limit")
        values[element] = bytes(head[start:start + length]).decode("latin-1").rstrip("\x00 ")
        pos = start + length
    missing = [name for element, name in ((0x0002, "MediaStorageSOPClassUID"), (0x0003, "MediaStorageSOPInstanceUID"),
                                          (0x0010, "TransferSyntaxUID")) if not values.get(element)]
    if missing:
        raise ValueError(f"file meta lacks {', '.join(missing)}")
    return FileMeta(values[0x0010], values[0x0002], values[0x0003], pos)
