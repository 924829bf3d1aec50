"""The STOW-RS receiver (PS3.18 10.5): ``POST /studies[/{StudyInstanceUID}]`` with a
multipart/related; type="application/dicom" body, each part one PS3.10 file.

Each part streams into a spool part file as it arrives (python-multipart's push parser) and goes
to the same intake as a C-STORE (node.receive.intake); the response lists each instance in
ReferencedSOPSequence or FailedSOPSequence. One request is one "association" in the index. The
server is the standard library's; the limits a hostile client would test are the node's own
(``header_seconds``, ``max_request_mb``, ``min_upload_kb_per_second``, ``max_instance_mb``,
``max_connections``), each answered with a status and a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState

from node import logs
from node.config import Config, DicomwebSettings
from node.dicomnet.file_meta import HEAD_BYTES, FileMeta, file_meta
from node.index.store import Index
from node.receive.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    Arrival,
    Claim,
    Intake,
    Source,
    Stored,
    StoreRefusal,
)
from node.receive.scp import STORAGE_CLASSES, TRANSFER_SYNTAXES, handshake
from node.receive.screening import uid_problem
from node.receive.spool import PartFile, Spool
from node.tls import certificate_name, server_context

if TYPE_CHECKING:  # defined by python-multipart for type checkers only
    from python_multipart.multipart import MultipartCallbacks

#: Failure reasons STOW-RS takes from DIMSE (PS3.4 Annex B.2.3, PS3.7 C): SOP class or transfer syntax refused.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
#: Bytes read from the socket per step.
_STEP = 64 * 1024
#: A body refused before it was read is read and dropped up to this size (``_drained``).
_DRAIN = 4 * 1024 * 1024
_DICOM_JSON = "application/dicom+json"
#: Each request is an association in the index with an id that starts so (node.operate.monitoring counts them).
ASSOCIATION_PREFIX = "stow-"
#: DICOM JSON tags (PS3.18 F.2) of the response.
_FAILED, _REFERENCED = "00081198", "00081199"
_CLASS, _INSTANCE, _REASON = "00081150", "00081155", "00081197"


class Refused(Exception):
    """A request refused as a whole: HTTP status and the reason for the log and the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Outcome:
    """One part's fate: stored, or refused with a status (its UIDs as far as they are known)."""

    sop_class: str = ""
    sop_instance: str = ""
    refusal: StoreRefusal | None = None


def read_file_meta(part: PartFile) -> FileMeta:
    """The PS3.10 file meta at the start of a part: raises ValueError when it is not one."""
    with part.mapped() as data:
        return file_meta(data[:HEAD_BYTES])


def body_chunks(handler: BaseHTTPRequestHandler, settings: DicomwebSettings) -> Iterator[bytes]:
    """The request body, a step at a time (Content-Length or chunked), within the size and rate limits."""
    limit = settings.max_request_mb * 2**20
    rate = settings.min_upload_kb_per_second * 1024
    started, received = time.monotonic(), 0
    pieces = _chunked(handler) if _is_chunked(handler) else _sized(handler, _content_length(handler, limit))
    for piece in pieces:
        received += len(piece)
        if received > limit:
            raise Refused(413, f"body larger than max_request_mb = {settings.max_request_mb}")
        elapsed = time.monotonic() - started
        if elapsed > settings.header_seconds and received < rate * elapsed:
            raise Refused(408, f"body arrives slower than min_upload_kb_per_second = "
                               f"{settings.min_upload_kb_per_second:g}")
        yield piece


def _is_chunked(handler: BaseHTTPRequestHandler) -> bool:
    coding = handler.headers.get("Transfer-Encoding", "").strip().lower()
    if coding not in ("", "chunked"):
        raise Refused(501, f"Transfer-Encoding {coding[:40]!r} is not supported (chunked or none)")
    return coding == "chunked"


def _content_length(handler: BaseHTTPRequestHandler, limit: int) -> int:
    text = handler.headers.get("Content-Length")
    if text is None or not text.strip().isdigit():
        raise Refused(411, "a Content-Length (or Transfer-Encoding: chunked) is required")
    length = int(text)
    if length > limit:
        raise Refused(413, f"Content-Length {length} is larger than max_request_mb")
    return length


def _sized(handler: BaseHTTPRequestHandler, length: int) -> Iterator[bytes]:
    while length > 0:
        piece = _read(handler, min(_STEP, length))
        length -= len(piece)
        yield piece


def _chunked(handler: BaseHTTPRequestHandler) -> Iterator[bytes]:
    """RFC 9112 7.1: chunk-size lines (extensions ignored), data, CRLF; trailers skipped."""
    while True:
        line = handler.rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise Refused(400, "malformed chunked encoding (a chunk size is not hexadecimal)") from None
        if size == 0:
            while handler.rfile.readline(1024).strip():
                pass
            return
        while size > 0:
            piece = _read(handler, min(_STEP, size))
            size -= len(piece)
            yield piece
        if handler.rfile.readline(4) not in (b"\r\n", b"\n"):
            raise Refused(400, "malformed chunked encoding (no CRLF after a chunk)")


def _read(handler: BaseHTTPRequestHandler, size: int) -> bytes:
    try:
        piece = handler.rfile.read1(size)
    except TimeoutError:
        raise Refused(408, "the client stopped sending") from None
    if not piece:
        raise Refused(400, "the body ended before its length")
    return bytes(piece)


class Upload:
    """One STOW-RS body on its way into the spool: each part is written to a part file as the
    parser yields it, and taken in (or refused) at its end."""

    def __init__(self, receiver: StowReceiver, source: Source, study: str | None) -> None:
        self.receiver = receiver
        self.source = source
        self.study = study
        self.outcomes: list[Outcome] = []
        self._headers: list[tuple[bytearray, bytearray]] = []
        self._part: PartFile | None = None
        self._refusal: StoreRefusal | None = None
        self._limit = receiver.settings.max_instance_mb * 2**20

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._begin, "on_header_begin": self._header, "on_header_field": self._field,
                "on_header_value": self._value, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._part, self._refusal = [], None, None

    def _header(self) -> None:
        self._headers.append((bytearray(), bytearray()))

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._headers[-1][0].extend(data[start:end])

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._headers[-1][1].extend(data[start:end])

    def _headers_done(self) -> None:
        headers = {bytes(name).decode("latin-1").strip().lower(): bytes(value).decode("latin-1").strip()
                   for name, value in self._headers}
        content_type = _media_type(headers.get("content-type", ""))
        if content_type != "application/dicom":
            self._refusal = StoreRefusal(CANNOT_UNDERSTAND, f"a part's Content-Type is {content_type[:40]!r}, "
                                                            "not application/dicom")
        elif headers.get("content-encoding", "identity").lower() != "identity":
            self._refusal = StoreRefusal(CANNOT_UNDERSTAND, "a part has a Content-Encoding; send it as it is")
        elif not self.receiver.disk_ok():
            self._refusal = StoreRefusal(OUT_OF_RESOURCES, "spool disk is below its free-space watermark")
        else:
            try:
                self._part = self.receiver.spool.open_part()
            except OSError as error:
                self._refusal = StoreRefusal(OUT_OF_RESOURCES, f"cannot write to spool: {error.strerror}")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is None:
            return
        if self._part.size + end - start > self._limit:
            self._drop(StoreRefusal(OUT_OF_RESOURCES, f"an instance is larger than max_instance_mb = "
                                                      f"{self.receiver.settings.max_instance_mb}"))
            return
        try:
            self._part.write(memoryview(data)[start:end])
        except OSError as error:  # a full disk: this part fails, the rest of the body is read and dropped
            self._drop(StoreRefusal(OUT_OF_RESOURCES, f"cannot write to spool: {error.strerror}"))

    def _drop(self, refusal: StoreRefusal) -> None:
        self.discard()
        self._refusal = refusal

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            assert self._refusal is not None
            logs.warning("stow.part_refused", status=f"0x{self._refusal.status:04X}", reason=self._refusal.reason,
                         address=self.source.address)
            self.outcomes.append(Outcome(refusal=self._refusal))
            return
        try:
            self.outcomes.append(self.receiver.take(part, self.source, self.study))
        except Exception:
            part.discard()
            logs.error("store.failed", reason="unexpected error in storing a STOW-RS part", exc_info=True)
            self.outcomes.append(Outcome(refusal=StoreRefusal(PROCESSING_FAILURE, "processing failure")))

    def discard(self) -> None:
        """A body that broke off: the part being written was never answered."""
        if self._part is not None:
            self._part.discard()
            self._part = None


def _media_type(value: str) -> str:
    message = Message()
    message["content-type"] = value
    return message.get_content_type() if value else ""


def response_body(outcomes: list[Outcome]) -> dict[str, Any]:
    """The STOW-RS response (PS3.18 10.5.3): every instance referenced or failed, with its reason.
    No RetrieveURL: the node keeps instances only until their jobs are done and serves no WADO-RS."""
    def item(outcome: Outcome) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if outcome.sop_class:
            entry[_CLASS] = {"vr": "UI", "Value": [outcome.sop_class]}
        if outcome.sop_instance:
            entry[_INSTANCE] = {"vr": "UI", "Value": [outcome.sop_instance]}
        if outcome.refusal is not None:
            entry[_REASON] = {"vr": "US", "Value": [outcome.refusal.status]}
        return entry

    body: dict[str, Any] = {}
    failed = [item(o) for o in outcomes if o.refusal is not None]
    stored = [item(o) for o in outcomes if o.refusal is None]
    if failed:
        body[_FAILED] = {"vr": "SQ", "Value": failed}
    if stored:
        body[_REFERENCED] = {"vr": "SQ", "Value": stored}
    return body


def http_status(outcomes: list[Outcome]) -> int:
    """200 when all were stored, 202 when some, 409 when none (PS3.18 10.5.3.1)."""
    failed = sum(o.refusal is not None for o in outcomes)
    if not failed:
        return 200
    return 409 if failed == len(outcomes) else 202


class StowReceiver:
    """The STOW-RS server of one process: its settings, spool, intake and counts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.dicomweb
        self.spool = Spool(config.node.spool)
        self.intake = Intake(self.spool, Index(config.node.index_path, durable_commits=False))
        self._min_free = config.node.min_free_disk_mb * 1024 * 1024
        self._tokens = {path.stem: hashlib.sha256(path.read_text().strip().encode()).digest()
                        for path in self.settings.token_files}
        self._requests = 0
        self._count_lock = threading.Lock()
        self._server: _Server | None = None

    def disk_ok(self) -> bool:
        return self.spool.free_bytes() >= self._min_free

    def sender(self, authorization: str | None, certificate: dict[str, Any] | None) -> str | None:
        """Who is storing, or None when the allow-list lets them not: a bearer token from one of
        ``token_files`` (named by its file's stem), or a client certificate whose common name is
        allowed. With neither configured, anyone who reaches the port (as DIMSE without [[allow]])."""
        name = certificate_name(certificate)
        if name is not None and (not self.settings.client_names or name in self.settings.client_names):
            return name
        if authorization and authorization[:7].lower() == "bearer ":
            digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
            for token_name, expected in self._tokens.items():
                if hmac.compare_digest(digest, expected):
                    return f"token {token_name}"
        open_door = not self._tokens and (self.settings.tls is None or self.settings.tls.ca_file is None)
        return "STOW-RS" if open_door else None

    def new_source(self, sender: str, address: str) -> Source:
        with self._count_lock:
            self._requests += 1
            number = self._requests
        return Source(f"{ASSOCIATION_PREFIX}{os.getpid()}-{number}-{time.time_ns()}", sender[:64], address, os.getpid())

    def take(self, part: PartFile, source: Source, study: str | None) -> Outcome:
        """One received part through the intake: its file meta says its UIDs and transfer syntax."""
        try:
            meta = read_file_meta(part)
        except ValueError as error:
            refusal = StoreRefusal(CANNOT_UNDERSTAND, str(error))
            self.intake.quarantine(part, refusal)
            return Outcome(refusal=refusal)
        outcome = Outcome(meta.sop_class, meta.sop_instance)
        outcome.refusal = self._unsupported(meta)
        if outcome.refusal is not None:
            self.intake.quarantine(part, outcome.refusal)
            return outcome
        claims = [Claim("SOPClassUID", meta.sop_class, DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOPClassUID differs from the file meta's MediaStorageSOPClassUID"),
                  Claim("SOPInstanceUID", meta.sop_instance, DATASET_DOES_NOT_MATCH_SOP_CLASS,
                        "SOPInstanceUID differs from the file meta's MediaStorageSOPInstanceUID")]
        if study is not None:
            claims.append(Claim("StudyInstanceUID", study, DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                "StudyInstanceUID differs from the study in the URL"))
        result = self.intake.take(Arrival(part, meta.transfer_syntax, meta.size, tuple(claims)), source)
        if isinstance(result, StoreRefusal):
            outcome.refusal = result
        elif isinstance(result, Stored):
            outcome.sop_class, outcome.sop_instance = result.sop_class, result.sop_uid
        return outcome

    def _unsupported(self, meta: FileMeta) -> StoreRefusal | None:
        """What DIMSE negotiation would not have accepted (unless ``accept_all_storage``)."""
        if self.config.node.accept_all_storage:
            return None
        if meta.transfer_syntax not in TRANSFER_SYNTAXES:
            return StoreRefusal(TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax not accepted by this node")
        if meta.sop_class not in STORAGE_CLASSES:
            return StoreRefusal(SOP_CLASS_NOT_SUPPORTED, "SOP class not accepted by this node "
                                                         "([node] accept_all_storage)")
        return None

    def serve_forever(self) -> None:
        settings = self.settings
        assert settings.port is not None
        context = server_context(settings.tls) if settings.tls is not None else None
        if context is not None and self._tokens:
            # a client may come with a token instead; a certificate it presents is still verified
            context.verify_mode = ssl.CERT_OPTIONAL if settings.tls and settings.tls.ca_file else ssl.CERT_NONE
        self._server = _Server((settings.host, settings.port), _handler(self), context, settings.max_connections)
        logs.info("stow.listening", host=settings.host, port=settings.port, https=context is not None,
                  tokens=len(self._tokens), client_certificates=bool(settings.tls and settings.tls.ca_file),
                  pid=os.getpid())
        self._server.serve_forever()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    """At most ``max_connections`` connections served at once; the next is told 503 and closed,
    so a flood of idle clients cannot take every thread. TLS handshakes run in the connection's
    thread, within ``header_seconds``."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext | None, max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            logs.warning("stow.refused", status=503, reason="max_connections reached", address=client_address[0])
            if not isinstance(request, ssl.SSLSocket):
                try:
                    request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        logs.warning("stow.connection_failed", address=client_address[0], error=f"{type(error).__name__}: {error}")


class _StowHandler(BaseHTTPRequestHandler):
    """One STOW-RS connection of ``receiver`` (set on the subclass ``_handler`` makes)."""

    receiver: StowReceiver
    settings: DicomwebSettings
    server_version = "radnode"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self._watch: threading.Timer | None = None
        if isinstance(self.connection, ssl.SSLSocket):
            handshake(self.connection, time.monotonic() + self.settings.header_seconds)

    def handle_one_request(self) -> None:
        """Each request's line and headers within ``header_seconds`` (a socket timeout bounds
        one read only; a client sending a byte a second would hold the thread for ever).
        The watch fires a second after the socket timeout, which ends an idle keep-alive
        connection quietly first."""
        self._watch = threading.Timer(self.settings.header_seconds + 1.0, self._too_slow)
        self._watch.daemon = True
        self._watch.start()
        try:
            super().handle_one_request()
        finally:
            self._watch.cancel()

    def _too_slow(self) -> None:
        """Request line and headers not complete in time (a slow-loris client): drop it."""
        logs.warning("stow.refused", status=408, reason=f"headers not complete in {self.settings.header_seconds:g} s",
                     address=self.client_address[0])
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers
        if self._watch is not None:
            self._watch.cancel()
        return parsed

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            self._reply_json(*self._store())
        except Refused as refused:
            logs.warning("stow.refused", status=refused.status, reason=refused.reason,
                         address=self.client_address[0])
            if not self._drained():
                self.close_connection = True  # what is left of the body is not read
            self._reply_text(refused.status, refused.reason)

    def _drained(self) -> bool:
        """A small body refused before it was read is read and dropped, so that a client
        still sending it reads the answer instead of a broken connection."""
        length = self.headers.get("Content-Length", "")
        if self._body_started or not length.isdigit() or int(length) > _DRAIN:
            return False
        try:
            self.rfile.read(int(length))
        except OSError:
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        self._reply_text(405, "this node takes STOW-RS (POST /studies); it serves no QIDO-RS or WADO-RS")

    def _store(self) -> tuple[int, dict[str, Any]]:
        self._body_started = False
        study = self._study()
        certificate = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        sender = self.receiver.sender(self.headers.get("Authorization"), certificate)
        if sender is None:
            raise Refused(401, "not on the allow-list: send a bearer token from [dicomweb] token_files "
                               "or a client certificate [dicomweb] client_names allows")
        boundary = self._boundary()
        if not self.receiver.disk_ok():
            raise Refused(503, "spool disk is below its free-space watermark; try again later")
        source = self.receiver.new_source(sender, self.client_address[0])
        upload = Upload(self.receiver, source, study)
        self._body_started = True
        try:
            self._parse(upload, boundary)
        finally:
            upload.discard()
            self.receiver.intake.end(source.association)
        stored = sum(o.refusal is None for o in upload.outcomes)
        logs.info("stow.request", address=self.client_address[0], sender=sender, instances=stored,
                  refused=len(upload.outcomes) - stored)
        return http_status(upload.outcomes), response_body(upload.outcomes)

    def _parse(self, upload: Upload, boundary: bytes) -> None:
        parser = MultipartParser(boundary, upload.callbacks())
        try:
            for piece in body_chunks(self, self.settings):
                parser.write(piece)
        except MultipartParseError as error:
            raise Refused(400, f"malformed multipart body: {error}") from None
        if parser.state != MultipartState.END:
            raise Refused(400, "malformed multipart body: it ends before its closing boundary")
        if not upload.outcomes:
            raise Refused(400, "the multipart body holds no parts")

    def _study(self) -> str | None:
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/studies":
            return None
        study = path.removeprefix("/studies/")
        if study == path or "/" in study:
            raise Refused(404, "STOW-RS is POST /studies or POST /studies/{StudyInstanceUID}")
        if uid_problem("StudyInstanceUID", study) is not None:
            raise Refused(400, "the URL's study is not a UID")
        return study

    def _boundary(self) -> bytes:
        if self.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise Refused(415, "Content-Encoding is not supported: send the body as it is")
        message = Message()
        message["content-type"] = self.headers.get("Content-Type", "")
        kind = message.get_content_type()
        part_type = str(message.get_param("type") or "")
        boundary = str(message.get_param("boundary") or "")
        if kind != "multipart/related" or part_type.lower() != "application/dicom":
            raise Refused(415, 'Content-Type must be multipart/related; type="application/dicom"')
        if not boundary or len(boundary) > 70:
            raise Refused(400, "the multipart/related Content-Type has no boundary (or one over 70 characters)")
        return boundary.encode("latin-1")

    def _reply_json(self, status: int, body: dict[str, Any]) -> None:
        self._reply(status, json.dumps(body).encode(), _DICOM_JSON)

    def _reply_text(self, status: int, text: str) -> None:
        self._reply(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def log_message(self, *_: object) -> None:  # each request logs its own line (stow.request)
        pass


def _handler(receiver: StowReceiver) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``receiver``'s server (http.server makes one per request)."""
    attributes = {"receiver": receiver, "settings": receiver.settings, "timeout": receiver.settings.header_seconds}
    return type("Handler", (_StowHandler,), attributes)
