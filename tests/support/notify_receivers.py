"""The people a node notifies, as real local servers: a webhook receiver (``http.server`` in a
thread) that can be down or hang, and an SMTP server that takes mail only after STARTTLS
(``aiosmtpd``, with a certificate from ``tests.support.pki``)."""

from __future__ import annotations

import email
import email.policy
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.peers import free_port
from tests.support.pki import issue, make_ca


@dataclass(frozen=True)
class Post:
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    """Takes JSON POSTs on a fixed port across stops and starts (a receiver that was down comes
    back where it was); ``hang()`` makes it hold every request unanswered until ``release()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[Post] = []
        #: requests that arrived while hanging (counted when they arrive, not when answered)
        self.held = 0
        self._release = threading.Event()
        self._release.set()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not receiver._release.is_set():
                    receiver.held += 1
                    receiver._release.wait()
                receiver.posts.append(Post(dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hang(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.over_tls: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's naming)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        self.over_tls.append(session.ssl is not None)
        return "250 OK"


class SmtpServer:
    """An SMTP server on loopback that refuses mail before STARTTLS; its CA is ``ca_file``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca = make_ca(folder, "smtp-ca")
        cert, key = issue(folder, ca, "smtp")
        self.ca_file = ca[0]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.port = free_port()
        self.mailbox = _Mailbox()
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, tls_context=context,
                                      require_starttls=True)

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return self.mailbox.messages


def mail_text(message: email.message.EmailMessage) -> str:
    """Every part of a mail, decoded, with its headers: what a reader (or a leak) could see."""
    parts = [str(message["Subject"])]
    for part in message.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            parts.append(payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload))
    return "\n".join(parts)
