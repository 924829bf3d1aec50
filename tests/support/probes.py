"""What a hostile sender sends, built here for the receive tests: malformed C-STOREs sent as
given, nesting and deflate bombs on real CT instances, and the quarantine's reasons read back."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

MiB = 1024 * 1024


def ct_files(data_dir: Path, count: int = 30) -> list[Path]:
    return sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:count]


def ct_file(data_dir: Path) -> Path:
    return ct_files(data_dir, 1)[0]


def send_raw(port: int, context_class: str, payload: bytes | Dataset, sop_uid: str,
             command_class: str | None = None) -> int:
    """C-STORE bytes (or a dataset encoded as given) with the command UIDs as given: pynetdicom's
    ``send_c_store`` would check or repair exactly what these probes break. Returns the status,
    or -1 when the node answered with no status (an abort)."""
    ae = AE("HOSTILE")
    ae.add_requested_context(context_class, [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    if isinstance(payload, Dataset):
        payload = encode(payload, True, True)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = command_class or context_class
    request._affected_sop_instance_uid = sop_uid  # unvalidated: the probe is the point
    request.Priority = 2
    request.DataSet = io.BytesIO(payload)
    assoc._reactor_checkpoint.clear()  # pause the reactor as pynetdicom's own send_c_store does
    while not assoc._is_paused:
        time.sleep(0.001)
    assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    if assoc.is_established:
        assoc.release()
    return -1 if response is None else int(response.Status)


def quarantine_reasons(spool: Path) -> list[str]:
    return sorted(p.read_text().strip() for p in (spool / "quarantine").glob("*.reason.txt"))


def nested_sequences(levels: int) -> bytes:
    """(0040,0275) Request Attributes Sequence nested ``levels`` deep, implicit VR, undefined
    lengths: built as bytes because pydicom itself cannot encode (or read) that depth."""
    opening = b"\x40\x00\x75\x02\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return opening * levels + closing * levels


def with_nested_sequences(path: Path, levels: int) -> tuple[bytes, str]:
    """A real CT instance, implicit VR, with the nesting between its identifying attributes
    and its pixel data: the receiver's header read stops before it, completion's does not."""
    ds = pydicom.dcmread(path)
    pixels = Dataset()
    pixels.PixelData = ds.PixelData
    pixels["PixelData"].VR = "OW"
    del ds.PixelData
    ds.file_meta = None
    head = encode(ds, True, True)
    return head + nested_sequences(levels) + encode(pixels, True, True), str(ds.SOPInstanceUID)


def header_of(path: Path) -> tuple[Dataset, str]:
    """A real CT instance's data set without its pixel data, and its SOP Instance UID."""
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.file_meta = None
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    return ds, str(ds.SOPInstanceUID)


def deflate_bomb(head: bytes, inflated: int) -> bytes:
    """``head`` followed by pixel data of ``inflated`` zero bytes, deflated (raw deflate)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated))]
    zeros = bytes(64 * MiB)
    parts += [deflater.compress(zeros) for _ in range(inflated // len(zeros))]
    parts.append(deflater.compress(zeros[:inflated % len(zeros)]))
    return b"".join(parts) + deflater.flush()
