"""The receiver's own C-STORE data path (node.receive.pdata_stream) stores exactly what was sent: in every
transfer syntax the node accepts, from pynetdicom and dcmtk SCUs, whatever the PDU size and
however the sender splits the data set into fragments and PDUs."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from node.dicomnet import sending
from node.index.store import Index
from node.receive.scp import TRANSFER_SYNTAXES
from tests.conftest import DATA
from tests.support.harness import REPO, NodeProcess, node_config, write_toml
from tests.support.peers import dcmtk_bin, storescu, wait_for_port
from tests.support.raw_scu import exchange

SYNTAXES = DATA / "transfer-syntaxes"
#: One real file of each accepted transfer syntax, of a SOP class the node accepts.
REAL_FILES = {
    "1.2.840.10008.1.2": SYNTAXES / "dcm_qa_ts" / "In" / "2.dcm",
    "1.2.840.10008.1.2.1": SYNTAXES / "pydicom-data" / "SC_rgb.dcm",
    "1.2.840.10008.1.2.4.51": SYNTAXES / "nema-wg04" / "JPLY" / "NM1_JPLY",
    "1.2.840.10008.1.2.4.70": SYNTAXES / "nema-wg04" / "JPLL" / "NM1_JPLL",
    "1.2.840.10008.1.2.4.80": SYNTAXES / "pydicom-data" / "JLSL_08_07_0_1F.dcm",
    "1.2.840.10008.1.2.4.81": SYNTAXES / "nema-wg04" / "JLSN" / "NM1_JLSN",
    "1.2.840.10008.1.2.4.90": SYNTAXES / "pydicom-data" / "liver_j2k.dcm",
    "1.2.840.10008.1.2.4.91": SYNTAXES / "nema-wg04" / "J2KI" / "NM1_J2KI",
    "1.2.840.10008.1.2.4.201": SYNTAXES / "pydicom-data" / "HTJ2KLossless_08_RGB.dcm",
    "1.2.840.10008.1.2.4.203": SYNTAXES / "pydicom-data" / "HTJ2K_08_RGB.dcm",
    "1.2.840.10008.1.2.5": SYNTAXES / "pydicom-data" / "liver_rle.dcm",
}
#: Made by dcmtk dcmcjpeg from the 8-bit RGB secondary capture (no sample file has them).
DCMCJPEG = {"1.2.840.10008.1.2.4.50": "+eb", "1.2.840.10008.1.2.4.57": "+el"}
#: pydicom writes a data set deflated when its transfer syntax says so: the RGB capture, deflated.
DEFLATED = {"1.2.840.10008.1.2.1.99": "1.2.840.10008.1.2.1"}
#: HTJ2K with RPCL progression differs from HTJ2K lossless only inside the code stream, which
#: the receiver stores without reading: the lossless file's data set, offered under that UID.
RELABELLED = {"1.2.840.10008.1.2.4.202": "1.2.840.10008.1.2.4.201"}
#: storescu's option to propose each syntax (3.6.7 has none for JPEG process 14 or HTJ2K: those
#: come from pynetdicom only)
DCMTK_PROPOSE = {
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
}
#: max_pdu of the node, the size of the PDUs every SCU then sends: 16 KiB to unlimited (0)
PDU_SIZES = [16384, 65536, 4 * 1024 * 1024, 0]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    """A file of every transfer syntax the node accepts, each with a fresh SOP Instance UID."""
    folder = tmp_path_factory.mktemp("syntaxes")
    sources = dict(REAL_FILES)
    for syntax, option in DCMCJPEG.items():
        made = folder / f"dcmcjpeg{option}.dcm"
        subprocess.run([dcmtk_bin("dcmcjpeg"), option, str(REAL_FILES["1.2.840.10008.1.2.1"]), str(made)],
                       check=True, capture_output=True)
        sources[syntax] = made
    for syntax, like in {**DEFLATED, **RELABELLED}.items():
        sources[syntax] = REAL_FILES[like]
    out = {}
    for syntax, source in sources.items():
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = syntax
        for keyword, value in (("StudyInstanceUID", generate_uid()), ("SeriesInstanceUID", generate_uid()),
                               ("Modality", "OT")):  # some sample files lack what the node indexes
            if not ds.get(keyword):
                setattr(ds, keyword, value)
        path = folder / f"{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[syntax] = path
    assert set(out) == {str(s) for s in TRANSFER_SYNTAXES}, "a sample for every accepted syntax"
    return out


def data_set_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta group."""
    raw = path.read_bytes()
    (meta_length,) = struct.unpack_from("<I", raw, 140)  # (0002,0000) UL right after DICM
    return raw[144 + meta_length:]


def stored_file(node: NodeProcess, sop_uid: str) -> Path:
    row = node.index().instance(sop_uid)
    assert row is not None, f"{sop_uid} not indexed"
    return row.path


def store(port: int, sample: Path, fragments: int | None = None) -> int:
    """C-STORE ``sample``'s data set bytes as they are in the file, from pynetdicom; with
    ``fragments``, hand-made P-DATA-TF PDUs instead (see ``fragmented_pdus``)."""
    ds = pydicom.dcmread(sample, stop_before_pixels=True)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ae = AE("PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    assert context.transfer_syntax[0] == syntax
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(data_set_bytes(sample))
    raw: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr]

    def send_fragmented() -> None:
        raw.sendall(fragmented_pdus(request, context.context_id, fragments or 1))

    response = exchange(assoc, request, context.context_id, None if fragments is None else send_fragmented)
    assoc.release()
    return -1 if response is None else int(response.Status)


def fragmented_pdus(request: C_STORE, context_id: int, pieces: int) -> bytes:
    """The C-STORE as P-DATA-TF PDUs that pynetdicom and dcmtk never send but PS3.8 allows: the
    command in two fragments, its last fragment in the same PDU as the first data fragment, and
    the data set cut into ``pieces`` fragments of uneven sizes (1 byte up), packed several to
    a PDU."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    command = encode(message.command_set, True, True)
    data = request.DataSet.getvalue()  # type: ignore[union-attr]
    cuts = sorted({0, len(data), *(min(len(data), (i * i * 7919) % len(data) + i) for i in range(1, pieces))})
    values = [(0x01, command[:10]), (0x03, command[10:])]
    values += [(0x02 if end == len(data) else 0x00, data[start:end]) for start, end in zip(cuts, cuts[1:])]
    items = [struct.pack(">IBB", len(v) + 2, context_id, control) + v for control, v in values]
    pdus, batch = [], [items[0]]
    for number, item in enumerate(items[1:], 1):
        batch.append(item)
        if number % 3 == 0 or number == len(items) - 1:
            body = b"".join(batch)
            pdus.append(struct.pack(">BBI", 0x04, 0, len(body)) + body)
            batch = []
    return b"".join(pdus)


@pytest.mark.parametrize("max_pdu", PDU_SIZES, ids=lambda n: f"max_pdu={n or 'unlimited'}")
@pytest.mark.data
@pytest.mark.peers
@pytest.mark.slow
def test_every_accepted_syntax_from_pynetdicom_and_dcmtk_is_stored_byte_for_byte(tmp_path, samples, max_pdu):
    node = NodeProcess(node_config(tmp_path, node={"max_pdu": max_pdu},
                                   completion={"settle_seconds": 3600, "quiet_seconds": 3600}), tmp_path).start()
    try:
        for syntax, sample in samples.items():
            assert store(node.port, sample) == 0x0000, f"pynetdicom, {syntax}"
            sop_uid = str(pydicom.dcmread(sample, stop_before_pixels=True).SOPInstanceUID)
            kept = stored_file(node, sop_uid)
            assert data_set_bytes(kept) == data_set_bytes(sample), f"{syntax}: stored bytes differ from those sent"
            assert str(pydicom.filereader.read_file_meta_info(kept).TransferSyntaxUID) == syntax
            kept.unlink()  # dcmtk sends the same instance next
        # dcmtk: one association per file, proposing the file's syntax (storescu proposes one
        # context per SOP class and converts what does not fit it); at 64 KiB it splits each
        # data set into PDUs of 4 KiB (--max-send-pdu), below what the node allows
        extra = ("--max-send-pdu", "4096") if max_pdu == 65536 else ()
        for syntax, option in DCMTK_PROPOSE.items():
            sample = samples[syntax]
            sent = storescu(node.port, [sample], propose=("--required", option), extra=extra)
            assert sent.returncode == 0, f"dcmtk {extra}, {syntax}: {sent.stderr[-2000:]}"
            kept = stored_file(node, str(pydicom.dcmread(sample, stop_before_pixels=True).SOPInstanceUID))
            assert pydicom.dcmread(kept) == pydicom.dcmread(sample), f"dcmtk {extra}, {syntax}"
            assert str(pydicom.filereader.read_file_meta_info(kept).TransferSyntaxUID) == syntax
    finally:
        node.stop()


@pytest.mark.data
@pytest.mark.peers
@pytest.mark.slow
def test_data_set_in_uneven_fragments_several_to_a_pdu_is_stored_byte_for_byte(tmp_path, samples):
    node = NodeProcess(node_config(tmp_path, completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                       tmp_path).start()
    try:
        for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"):
            sample = samples[syntax]
            assert store(node.port, sample, fragments=200) == 0x0000, syntax
            kept = stored_file(node, str(pydicom.dcmread(sample, stop_before_pixels=True).SOPInstanceUID))
            assert data_set_bytes(kept) == data_set_bytes(sample), f"{syntax}: stored bytes differ from those sent"
    finally:
        node.stop()


def test_success_response_is_the_bytes_pynetdicom_would_send():
    for sop_class, sop_uid, message_id in ((CTImageStorage, "1.2.3.4", 1), ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 65535)):
        primitive = C_STORE()
        primitive.MessageIDBeingRespondedTo = message_id
        primitive.AffectedSOPClassUID = sop_class
        primitive.AffectedSOPInstanceUID = sop_uid
        primitive.Status = 0x0000
        message = pynetdicom_response(primitive)
        assert sending.store_success_response(primitive) == message
        primitive.Status = 0xA700  # a refusal is pynetdicom's to encode
        assert sending.store_success_response(primitive) is None


def pynetdicom_response(primitive: C_STORE) -> bytes:
    from pynetdicom.dimse_messages import C_STORE_RSP

    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.data
@pytest.mark.peers
def test_deflated_sample_is_really_deflated(samples):
    """The deflated sample must hold raw deflate data, or the deflated case tests nothing."""
    zlib.decompressobj(-zlib.MAX_WBITS).decompress(data_set_bytes(samples["1.2.840.10008.1.2.1.99"]))


#: How long ``tests.support.hobbled_receiver`` holds back its handling of each association's acceptance.
LATE_ACCEPTANCE_SECONDS = 0.5


def hobbled_receiver(tmp_path: Path, *how: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``tests.support.hobbled_receiver`` on a fresh node config: the process, its port, its spool."""
    config = node_config(tmp_path, completion={"settle_seconds": 3600, "quiet_seconds": 3600})
    config_path = write_toml(config, tmp_path / "config.toml")
    receiver = subprocess.Popen([sys.executable, "-m", "tests.support.hobbled_receiver", str(config_path), *how],
                                cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "receiver.log", "ab"))
    wait_for_port(config["node"]["port"], timeout=30)
    return receiver, config["node"]["port"], Path(config["node"]["spool"])


def store_each(port: int, sources: list[Path]) -> list[tuple[int, float]]:
    """C-STORE each file over one association: (status, seconds to its response) per file."""
    ae = AE("PYNETDICOM")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    answers = []
    for source in sources:
        started = time.perf_counter()
        status = int(assoc.send_c_store(pydicom.dcmread(source)).Status)
        answers.append((status, time.perf_counter() - started))
    assoc.release()
    return answers


def test_c_stores_sent_before_the_receiver_handled_the_acceptance_are_stored_and_indexed_under_their_association(
        tmp_path, data_dir):
    """A C-STORE is answered in the thread that read it only once the association is
    established and has its index id; a fast SCU's first one can come before that (here it
    always does) and is answered by pynetdicom's association thread instead."""
    sources = sorted((data_dir / "ct-chest" / "cptac-luad-C3N-00247").glob("*.dcm"))[:4]
    receiver, port, spool = hobbled_receiver(tmp_path, "late-acceptance", str(LATE_ACCEPTANCE_SECONDS))
    try:
        answers = store_each(port, sources)
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    assert [status for status, _ in answers] == [0, 0, 0, 0]
    # the first waited for the held-back acceptance: it went the association thread's way
    assert answers[0][1] >= LATE_ACCEPTANCE_SECONDS * 0.8, f"first response after {answers[0][1]:.3f} s"
    index = Index(spool / "index.sqlite")
    rows = [index.instance(str(pydicom.dcmread(s, stop_before_pixels=True).SOPInstanceUID)) for s in sources]
    associations = {row.association if row is not None else "not indexed" for row in rows}
    assert len(associations) == 1 and None not in associations and "not indexed" not in associations, associations
    for source, row in zip(sources, rows):
        assert row is not None
        assert pydicom.dcmread(row.path) == pydicom.dcmread(source)


def test_an_unexpected_error_in_storing_answers_0xC211_and_leaves_no_file_behind(tmp_path, data_dir):
    """As pynetdicom answers for a handler that raised; the association stays usable."""
    sources = sorted((data_dir / "ct-chest" / "cptac-luad-C3N-00247").glob("*.dcm"))[:2]
    receiver, port, spool = hobbled_receiver(tmp_path, "failing-store")
    try:
        answers = store_each(port, sources)
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    assert [status for status, _ in answers] == [0xC211, 0xC211]
    left = [p for p in spool.rglob("*") if p.is_file() and p.suffix in (".part", ".dcm")]
    assert left == [], left
    assert "store.failed" in (tmp_path / "receiver.log").read_text()
