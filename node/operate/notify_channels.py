"""How a notification reaches people: a webhook (a JSON POST signed with HMAC-SHA256) or an
email (SMTP with STARTTLS), with the standard library only.

Each call either gets through or raises ``NotSent`` with a reason an administrator can act on;
the caller (``node.operate.notify``) records it and retries with backoff. A try never waits
longer than the target's timeout, so one target that hangs holds up only its own messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from node.config import NotifyTarget

#: The header that carries the body's signature: ``sha256=<hex HMAC-SHA256 of the body>``.
SIGNATURE_HEADER = "X-Radnode-Signature"
EVENT_HEADER = "X-Radnode-Event-Id"


class NotSent(Exception):
    """The target did not take the message; the text says why (no patient data)."""


@dataclass(frozen=True)
class Message:
    """One event as a target receives it: a subject line and the JSON payload."""

    subject: str
    payload: dict[str, Any]

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, indent=1, sort_keys=True).encode()


def signature(secret: bytes, body: bytes) -> str:
    """The value of ``SIGNATURE_HEADER`` for ``body``: a receiver computes it with the same secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def send(target: NotifyTarget, message: Message, timeout: float) -> None:
    if target.kind == "webhook":
        post_webhook(target, message, timeout)
    else:
        send_email(target, message, timeout)


def post_webhook(target: NotifyTarget, message: Message, timeout: float) -> None:
    """POST the payload; any 2xx answer means the receiver has it. A redirect is not followed
    (urllib would follow it with a GET, without the payload): it is a failure that names it."""
    assert target.url is not None and target.secret_file is not None
    body = message.body
    where = shown_url(target.url)
    request = urllib.request.Request(target.url, data=body, method="POST", headers={
        "Content-Type": "application/json", EVENT_HEADER: str(message.payload["event_id"]),
        SIGNATURE_HEADER: signature(_read(target.secret_file, "secret_file").encode(), body)})
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=_tls(target)))
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        raise NotSent(f"HTTP {error.code} {error.reason} from {where}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise NotSent(f"no answer from {where} ({reason}); is the receiver up?") from None
    if not 200 <= status < 300:
        raise NotSent(f"HTTP {status} from {where}")


def shown_url(url: str) -> str:
    """A webhook's address as logs and pages show it: without its query, which may hold a token."""
    return url.split("?", 1)[0]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any) -> None:
        return None


def send_email(target: NotifyTarget, message: Message, timeout: float) -> None:
    """One email: the subject line, the payload's fields as text, the JSON attached."""
    assert target.smtp_host is not None and target.sender is not None
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = target.sender
    mail["To"] = ", ".join(target.to)
    mail["Message-ID"] = f"<{message.payload['event_id']}@radnode>"
    mail.set_content(_text(message.payload))
    mail.add_attachment(message.body, maintype="application", subtype="json", filename="event.json")
    where = f"{target.smtp_host}:{target.smtp_port}"
    try:
        with smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=timeout) as smtp:
            if target.starttls:
                smtp.starttls(context=_tls(target))
            if target.username is not None and target.password_file is not None:
                smtp.login(target.username, _read(target.password_file, "password_file"))
            smtp.send_message(mail)
    except smtplib.SMTPNotSupportedError:
        raise NotSent(f"{where} does not offer STARTTLS; set starttls = false only for a relay on this"
                      " machine") from None
    except smtplib.SMTPException as error:
        raise NotSent(f"SMTP {where}: {type(error).__name__}: {error}") from None
    except (OSError, ssl.SSLError) as error:
        raise NotSent(f"no SMTP conversation with {where} ({error}); is the server up?") from None


def _read(path: Path, key: str) -> str:
    """A secret from its file, without the line end an editor adds."""
    try:
        return path.read_text().strip()
    except OSError as error:
        raise NotSent(f"cannot read {key} {path} ({error.strerror}); the node's user must be able to read it") from None


def _tls(target: NotifyTarget) -> ssl.SSLContext:
    """Certificates verified (against ``ca_file`` or the system's CAs), host names checked."""
    return ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)


def _text(payload: dict[str, Any], prefix: str = "") -> str:
    """The payload as "key: value" lines for people reading mail."""
    lines = []
    for key, value in payload.items():
        if isinstance(value, dict):
            lines.append(_text(value, f"{prefix}{key} "))
        elif value not in (None, "", []):
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            lines.append(f"{prefix}{key}: {shown}")
    return "\n".join(line for line in lines if line)
