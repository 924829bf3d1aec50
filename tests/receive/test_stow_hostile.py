"""Hostile HTTP at the STOW-RS receiver: oversized bodies, malformed multipart, wrong content
types, slow-loris clients, a flood of connections and a deflate bomb as a part. Each is refused
with a status and a log line, the node's memory stays bounded as for DIMSE (tests/receive/test_message_bounds.py),
and a proper upload is stored afterwards."""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.dsutils import encode

from node.receive.spool import part10_header
from tests.support.harness import NodeProcess, node_config
from tests.support.peers import free_port
from tests.support.probes import ct_files, deflate_bomb, header_of, quarantine_reasons
from tests.support.process_tree import Memory

pytestmark = [pytest.mark.peers, pytest.mark.slow]

MB = 1000 * 1000
MiB = 1024 * 1024
BOUNDARY = "radnode-hostile-boundary"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
#: the limits the node runs with here (the defaults are larger; these keep the test fast)
LIMITS = {"max_request_mb": 32, "max_instance_mb": 4, "header_seconds": 2.0,
          "min_upload_kb_per_second": 256.0, "max_connections": 4}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stow-hostile")
    process = NodeProcess(node_config(folder, dicomweb={"port": free_port(), **LIMITS}), folder).start()
    yield process
    process.stop()


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart/related body of (Content-Type, bytes) parts."""
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def part10(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def post(port: int, body: bytes, content_type: str = DICOM_MULTIPART, headers: dict[str, str] | None = None,
         path: str = "/studies") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw_exchange(port: int, head: bytes, body_pieces: int = 0, piece: bytes = b"", pause: float = 0.0,
                 seconds: float = 30.0) -> tuple[bytes, float]:
    """Send ``head``, then ``body_pieces`` times ``piece`` with ``pause`` between, until the node
    answers or drops the connection: (what it sent back, seconds it took)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(head)
        try:
            for _ in range(body_pieces):
                sock.sendall(piece)
                time.sleep(pause)
        except OSError:
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
    return reply, time.monotonic() - started


def failure_reasons(body: bytes) -> list[int]:
    return [item["00081197"]["Value"][0] for item in json.loads(body)["00081198"]["Value"]]


def test_oversized_bodies_are_refused_413_at_their_header_or_at_the_limit_with_memory_bounded(node):
    port = node.stow_port
    memory = Memory(node.proc.pid)
    head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {DICOM_MULTIPART}\r\n"
            f"Content-Length: {10**12}\r\n\r\n").encode()
    reply, _ = raw_exchange(port, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    # chunked, no length announced: 100 MB of one part, beyond the 32 MB body and 4 MB instance limits
    head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {DICOM_MULTIPART}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    start = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    chunk = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    reply, seconds = raw_exchange(port, head + b"%x\r\n" % len(start) + start + b"\r\n", 100, chunk)
    peak = memory.peak_growth()
    print(f"chunked 100 MB: {reply[:30]!r} after {seconds:.1f} s, peak growth {[p // MB for p in peak.values()]} MB")
    # measured: 413 after 0.1 s, peak growth under 1 MB in every process
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert max(peak.values()) < 300 * MB
    assert not any(Path(node.config["node"]["spool"], "tmp").iterdir()), "the broken-off part is not kept"
    assert node.logs().count('"stow.refused", "status": 413') >= 2


def test_an_instance_over_max_instance_mb_is_refused_a700_and_the_others_of_its_upload_are_stored(node, data_dir):
    good = part10(ct_files(data_dir, 1)[0])
    status, body = post(node.stow_port, multipart(("application/dicom", bytes(5 * MiB)), ("application/dicom", good)))
    assert status == 202
    assert failure_reasons(body) == [0xA700]
    assert len(json.loads(body)["00081199"]["Value"]) == 1


@pytest.mark.parametrize("body", [b"not multipart at all", f"--{BOUNDARY}\r\nno headers end".encode(),
                                  f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nDICM".encode()],
                         ids=["garbage", "broken part headers", "no closing boundary"])
def test_a_malformed_multipart_body_is_refused_400_and_logged(node, body):
    status, text = post(node.stow_port, body)
    assert status == 400, text
    assert b"malformed multipart" in text or b"no parts" in text


@pytest.mark.parametrize("content_type,headers,status", [
    ("application/dicom", {}, 415),
    ("application/json", {}, 415),
    (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', {}, 415),
    ('multipart/related; type="application/dicom"', {}, 400),
    (DICOM_MULTIPART, {"Content-Encoding": "gzip"}, 415),
    (DICOM_MULTIPART, {"Transfer-Encoding": "gzip"}, 501),
], ids=["bare dicom", "json", "dicom+json parts", "no boundary", "gzip body", "gzip transfer"])
def test_wrong_content_types_and_codings_are_refused_with_a_status_and_logged(node, data_dir, content_type,
                                                                              headers, status):
    if "Transfer-Encoding" in headers:
        reply, _ = raw_exchange(node.stow_port, (f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}"
                                                 f"\r\nTransfer-Encoding: gzip\r\n\r\n").encode())
        assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:100]
    else:
        got, text = post(node.stow_port, multipart(("application/dicom", part10(ct_files(data_dir, 1)[0]))),
                         content_type, headers)
        assert got == status, text
    assert f'"stow.refused", "status": {status}' in node.logs()


def test_a_part_that_is_not_application_dicom_is_refused_c000_in_the_failed_sop_sequence(node):
    status, body = post(node.stow_port, multipart(("text/plain", b"hello"), ("application/dicom", b"not dicom")))
    assert status == 409
    assert failure_reasons(body) == [0xC000, 0xC000]
    assert any("not a DICOM PS3.10 file" in r for r in quarantine_reasons(Path(node.config["node"]["spool"])))
    assert '"stow.part_refused"' in node.logs()


def test_slow_loris_clients_are_dropped_and_do_not_hold_the_door(node, data_dir):
    port = node.stow_port
    # headers a byte every 0.5 s: dropped header_seconds + 1 after they began
    reply, seconds = raw_exchange(port, b"POST /studies HTTP/1.1\r\n", 40, b"X", 0.5)
    print(f"slow headers dropped after {seconds:.1f} s: {reply[:30]!r}")
    # measured: 3.0 to 3.5 s (header_seconds 2 + 1, and the last byte's pause)
    assert seconds < 6
    # a body at 1 KB/s (below min_upload_kb_per_second = 256): 408 once header_seconds have passed
    head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: {DICOM_MULTIPART}\r\n"
            f"Content-Length: {MiB}\r\n\r\n").encode()
    start = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    reply, seconds = raw_exchange(port, head + start, 40, bytes(500), 0.5)
    print(f"slow body: {reply[:30]!r} after {seconds:.1f} s")
    # measured: 408 after 3.0 to 3.5 s (the rate is checked as each piece arrives)
    assert reply.startswith(b"HTTP/1.1 408") and seconds < 6
    # max_connections idle clients take every slot: the next is told 503 at once ...
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(LIMITS["max_connections"])]
    time.sleep(0.3)
    reply, seconds = raw_exchange(port, b"")
    assert reply.startswith(b"HTTP/1.1 503") and seconds < 1, reply[:100]
    # ... and once they are dropped, uploads are served again
    time.sleep(LIMITS["header_seconds"] + 2)
    for sock in idle:
        sock.close()
    status, _ = post(port, multipart(("application/dicom", part10(ct_files(data_dir, 1)[0]))))
    assert status == 200
    logs = node.logs()
    assert '"status": 408' in logs and '"status": 503' in logs


def test_a_deflate_bomb_as_a_part_is_refused_c000_and_quarantined_with_memory_bounded(node, data_dir):
    ds, sop_uid = header_of(ct_files(data_dir, 1)[0])
    bomb = deflate_bomb(encode(ds, False, True), 1000 * MiB)
    part = part10_header(str(ds.SOPClassUID), sop_uid, DeflatedExplicitVRLittleEndian, "HOSTILE") + bomb
    memory = Memory(node.proc.pid)
    status, body = post(node.stow_port, multipart(("application/dicom", part)))
    time.sleep(2)  # completion would read an instance it was given within its settle time
    peak = memory.peak_growth()
    print(f"{len(bomb) / MB:.2f} MB deflated: HTTP {status}, peak growth {[p // MB for p in peak.values()]} MB")
    # measured: 409, peak +106 MB in the STOW-RS receiver (the DIMSE receiver: +103 MB, test_message_bounds)
    assert status == 409 and failure_reasons(body) == [0xC000]
    assert max(peak.values()) < 300 * MB, f"peak growth {peak}"
    assert any("inflates beyond" in r for r in quarantine_reasons(Path(node.config["node"]["spool"])))
