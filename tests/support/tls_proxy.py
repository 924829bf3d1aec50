"""A TLS terminator in front of a plain-HTTP peer: the HTTPS archive of the DICOMweb tests.

Debian 12's Orthanc 1.10.1 with ``SslEnabled`` stops accepting connections after its first one
(measured: the next connect is refused while the process lives), so its TLS is put in front of
it here, as a site would with nginx: the TLS handshake and certificate are this proxy's, every
byte after it is Orthanc's own answer.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from tests.support.peers import free_port


class TlsProxy:
    """``https://127.0.0.1:{port}`` forwarding to ``127.0.0.1:{backend}``, with ``cert``/``key``."""

    def __init__(self, backend: int, cert: Path, key: Path) -> None:
        self.backend = backend
        self.port = free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()

    def __enter__(self) -> TlsProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.backend))
        except OSError:  # a refused handshake (the client did not trust us), or the backend is down
            client.close()
            return
        threading.Thread(target=_pump, args=(upstream, secure), daemon=True).start()
        _pump(secure, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
