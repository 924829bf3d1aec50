"""DICOM TLS: results reach a PACS that only speaks TLS, and scanners may send over TLS.

The certificates are made for each test run (``tests.support.pki``, openssl): a CA, a certificate
for "localhost" / 127.0.0.1 that the peers serve, one that radnode presents as a client, and an
unrelated CA that must not be trusted.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.support.harness import REPO, NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until, write_toml
from tests.support.peers import dcmtk_bin, dcmtk_env, free_port, send, storescu, wait_for_port
from tests.support.pki import Pki

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def tls_args(key: Path, cert: Path, ca: Path) -> tuple[str, ...]:
    """dcmtk's TLS options: our key and certificate, the CA we trust, no key password."""
    return ("+tls", str(key), str(cert), "-pw", "+cf", str(ca))


class TlsStorescp:
    """dcmtk storescp accepting only TLS associations from clients with a certificate."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.folder, self.pki, self.port = folder, pki, free_port()

    def __enter__(self) -> TlsStorescp:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [dcmtk_bin("storescp"), *tls_args(self.pki.server_key, self.pki.server_cert, self.pki.ca),
             "--aetitle", "TLSPACS", "--output-directory", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env())
        wait_for_port(self.port)
        return self

    def __exit__(self, *_: object) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)

    def destination(self, ca: Path) -> dict:
        return {"name": "pacs", "ae_title": "TLSPACS", "host": "localhost", "port": self.port,
                "tls": {"ca_file": str(ca), "cert_file": str(self.pki.client_cert),
                        "key_file": str(self.pki.client_key)}}

    def received_uids(self) -> set[str]:
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.folder.iterdir()}


def test_results_reach_a_pacs_that_only_speaks_tls(tmp_path, pki, data_dir):
    with TlsStorescp(tmp_path / "pacs", pki) as pacs:
        config = node_config(tmp_path, destinations=[pacs.destination(pki.ca)],
                             routes=[threshold_route()], pipelines=threshold_pipeline())
        node = NodeProcess(config, tmp_path).start()
        try:
            echo = node.cli("echo", "pacs")
            assert echo.returncode == 0 and "status 0x0000" in echo.stdout, echo.stderr
            files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
            assert storescu(node.port, files).returncode == 0
            index = node.index()
            wait_until(lambda: index.deliveries("sent"), 120, what="delivery over TLS")
            (job,) = index.jobs("done")
            assert pacs.received_uids() == {r.sop_uid for r in index.results(job.id)}
        finally:
            node.stop()


def test_a_pacs_whose_certificate_does_not_verify_gets_nothing_and_the_reason_is_given(tmp_path, pki):
    with TlsStorescp(tmp_path / "pacs", pki) as pacs:
        config = node_config(tmp_path, destinations=[pacs.destination(pki.other_ca)])
        path = write_toml(config, tmp_path / "config.toml")
        echo = subprocess.run([sys.executable, "-m", "node.operate.cli", "echo", "pacs", "--config", str(path)],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    assert echo.returncode == 1
    assert "no TLS association" in echo.stderr and "tls.ca_file" in echo.stderr


def test_scanner_sends_over_tls_and_a_plain_association_is_refused(tmp_path, pki, data_dir):
    config = node_config(tmp_path, node={"tls": {"cert_file": str(pki.server_cert),
                                                 "key_file": str(pki.server_key),
                                                 "ca_file": str(pki.ca)}})
    node = NodeProcess(config, tmp_path).start()
    try:
        files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:10]
        plain = storescu(node.port, files, timeout=120)
        assert plain.returncode != 0
        assert '"tls.handshake_failed"' in node.logs()  # with the peer's address and the reason
        send(node.port, files, extra=tls_args(pki.client_key, pki.client_cert, pki.ca))
        assert node.index().count_instances() == len(files)
        untrusted = storescu(node.port, files[:1],
                             extra=tls_args(pki.client_key, pki.client_cert, pki.other_ca), timeout=120)
        assert untrusted.returncode != 0  # storescu does not trust our certificate
    finally:
        node.stop()


def test_unreadable_certificate_stops_the_start_naming_the_key(tmp_path):
    (tmp_path / "radnode.crt").write_text("not a certificate\n")
    (tmp_path / "radnode.key").write_text("not a key\n")
    config = node_config(tmp_path, node={"tls": {"cert_file": "radnode.crt", "key_file": "radnode.key"}})
    path = write_toml(config, tmp_path / "config.toml")
    result = subprocess.run([sys.executable, "-m", "node.operate.cli", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert "node.tls: cannot load the certificates" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stalled_tls_client_hello_is_closed_within_6_s_not_the_network_timeout(tmp_path, pki, data_dir):
    """The handshake has the 5 s of the A-ASSOCIATE-RQ, not network_timeout_seconds (60 s)."""
    from tests.receive.test_network_abuse import seconds_until_closed

    config = node_config(tmp_path, node={"tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}})
    node = NodeProcess(config, tmp_path).start()
    try:
        stalled: dict[socket.socket, float] = {}
        for hello in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # none, or its first 11 bytes
            sock = socket.create_connection(("127.0.0.1", node.port))
            sock.sendall(hello)
            stalled[sock] = time.monotonic()
        seconds = seconds_until_closed(stalled, 10)
        for sock in stalled:
            sock.close()
        # measured: closed after 5.0 s each (before: both open after 10 s, closed at 60 s)
        assert None not in seconds and max(seconds) < 6, f"stalled handshakes closed after {seconds} s"
        files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:2]
        sent = storescu(node.port, files, extra=("+tls", str(pki.client_key), str(pki.client_cert), "-pw",
                                                 "+cf", str(pki.ca)))
        assert sent.returncode == 0, sent.stderr
    finally:
        node.stop()
