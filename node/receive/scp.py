"""The Storage SCP: takes C-ECHO and C-STORE from scanners and PACS (pynetdicom).

A data set is written to a spool part file as its P-DATA arrives (``node.receive.pdata_stream``;
``node.receive.stock_store`` on stock pynetdicom, when the speed-ups are off), walked where it
lies, then fsynced and renamed into the spool before the 0x0000 status goes back (its index row
follows within milliseconds, ``node.receive.row_batch``): a success status survives a crash. A
refused data set gets a DIMSE failure status and is kept in the spool's quarantine with the
reason. Receiver processes share one port (SO_REUSEPORT).
"""

from __future__ import annotations

import os
import select
import socket
import socketserver
import ssl
import threading
import time

import pydicom.config
from pydicom import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node import logs
from node.config import Config
from node.dicomnet import patches, pdu_guard
from node.index.store import Index
from node.receive import pdata_stream, stock_store
from node.receive.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    Arrival,
    Claim,
    Intake,
    Source,
    StoreRefusal,
)
from node.receive.slots import AssociationSlots, Slot, SlotsFull
from node.receive.spool import Spool
from node.tls import server_context

patches.optional_mismatches()  # a pynetdicom the PDU guard does not fit stops the node here, not in a receiver

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]

STORAGE_CLASSES = [
    CTImageStorage,
    MRImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SegmentationStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    Comprehensive3DSRStorage,
]

# A-ASSOCIATE-RJ: rejected-permanent, by the service user
_REJECT_PERMANENT, _SERVICE_USER = 0x01, 0x01
_NO_REASON, _CALLING_AET_NOT_RECOGNISED, _CALLED_AET_NOT_RECOGNISED = 0x01, 0x03, 0x07
# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), local limit exceeded
_REJECT_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02

#: A connection must send its A-ASSOCIATE-RQ within this many seconds (or the network timeout,
#: if shorter): scanners send it at once, and an idle socket must not hold a thread for a minute.
ASSOCIATE_REQUEST_SECONDS = 5.0
#: pynetdicom's own per-process count includes idle and closed connections; the node's slots
#: (node.receive.slots) are the limit, so pynetdicom's is set out of the way.
_PYNETDICOM_ASSOCIATIONS = 100_000

#: Parsing a stored file's header (node.operate.reconcile) stops after the last attribute the
#: receiver reads (node.receive.intake.IDENTIFYING_TAGS).
_LAST_IDENTIFYING_TAG = 0x0020000E


def past_identifying_attributes(tag: int, vr: str | None, length: int) -> bool:
    """pydicom's ``stop_when``: parsing stops after SeriesInstanceUID, the last attribute read."""
    return tag > _LAST_IDENTIFYING_TAG


def command_claims(command: C_STORE, context_sop_class: str) -> tuple[Claim, ...]:
    """What a data set must agree with: its presentation context's SOP class, and the instance its
    C-STORE command names (as storescp and Orthanc insist): otherwise the stored file would
    contradict itself and the SCU's own record of what it sent."""
    return (
        Claim("SOPClassUID", context_sop_class, DATASET_DOES_NOT_MATCH_SOP_CLASS,
              "SOPClassUID does not match the presentation context"),
        *(Claim(attribute, str(getattr(command, affected) or ""), DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{attribute} differs from the C-STORE {affected}")
          for attribute, affected in (("SOPInstanceUID", "AffectedSOPInstanceUID"),
                                      ("SOPClassUID", "AffectedSOPClassUID"))),
    )


def handshake(raw: ssl.SSLSocket, deadline: float) -> None:
    """Complete a server-side TLS handshake by ``deadline`` (``time.monotonic``) or raise
    TimeoutError: a socket timeout bounds each read, not the handshake, which a peer sending a
    byte at a time could stretch."""
    kept = raw.gettimeout()
    raw.setblocking(False)
    wait: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]]
    while True:
        try:
            raw.do_handshake()
            break
        except ssl.SSLWantReadError:
            wait = ([raw], [])
        except ssl.SSLWantWriteError:
            wait = ([], [raw])
        left = deadline - time.monotonic()
        if left <= 0 or not any(select.select(*wait, [], left)[:2]):
            raise TimeoutError("TLS handshake not complete in time")
    raw.settimeout(kept)


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, sharing its port with sibling receiver processes."""

    #: socketserver's default backlog of 5 refuses a burst of scanners connecting at once.
    request_queue_size = 128

    def server_bind(self) -> None:
        assert self.socket is not None  # made by TCPServer before it binds
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; a TLS handshake is left to the association's own thread.

        pynetdicom shakes hands here, in the one thread that accepts every connection, with no
        timeout: a caller that opens a TLS connection and stalls would block everyone else.
        This override can go once pynetdicom shakes hands in the association's thread, with a
        deadline, and sets TCP_NODELAY on accepted sockets.
        """
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        if self.ssl_context:
            client.settimeout(self.ae.network_timeout)
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address


class Receiver:
    """The handlers of one receiver process, bound to its spool and index connection."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.node.spool)
        self.intake = Intake(self.spool, Index(config.node.index_path, durable_commits=False))
        self._min_free = config.node.min_free_disk_mb * 1024 * 1024
        self._assoc_ids: dict[int, str] = {}
        self._server: ThreadedAssociationServer | None = None
        self._slots = AssociationSlots(config.node.spool / "slots", config.node.max_associations,
                                       config.node.max_associations_per_peer)
        self._held: dict[int, tuple[Association, Slot]] = {}
        self._held_lock = threading.Lock()

    # ---- association control --------------------------------------------------------------

    def _allowed(self, calling_aet: str, address: str) -> bool:
        rules = self.config.allow
        return not rules or any(rule.permits(calling_aet, address) for rule in rules)

    def on_requested(self, event: evt.Event) -> None:
        """Refuse an association whose called AE title is not ours (strict by default: a sender
        configured for another node must find out now, not after a study went to the wrong
        place) or whose caller is not on the allow-list. AE titles and the peer's address are
        logged for every association; they identify devices, not patients."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = primitive.calling_ae_title.strip()  # type: ignore[union-attr]
        called = primitive.called_ae_title.strip()  # type: ignore[union-attr]
        address = assoc.requestor.address
        refusal = self._refusal(calling, called, address)
        if refusal is None:
            return
        diagnostic, reason = refusal
        logs.warning("association.rejected", calling_aet=calling, called_aet=called, address=address,
                     port=assoc.requestor.port, reason=reason)
        assoc.acse.send_reject(_REJECT_PERMANENT, _SERVICE_USER, diagnostic)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ

    def _refusal(self, calling: str, called: str, address: str) -> tuple[int, str] | None:
        """(A-ASSOCIATE-RJ diagnostic, reason) for an association to refuse, else None."""
        node = self.config.node
        if node.require_called_ae and called != node.ae_title:
            return _CALLED_AET_NOT_RECOGNISED, f"called AE title is not {node.ae_title}"
        if self._allowed(calling, address):
            return None
        known_aet = any(rule.ae_title == calling for rule in self.config.allow)
        return (_NO_REASON if known_aet else _CALLING_AET_NOT_RECOGNISED), "not on the allow-list"

    def on_connection(self, event: evt.Event) -> None:
        """Until its A-ASSOCIATE-RQ arrives a connection gets a short ACSE (ARTIM) timeout; a TLS
        connection shakes hands here, in its own thread, within the same time, so that a failure
        is logged with why and the connection closed (a stalled ClientHello held it for the
        network timeout)."""
        seconds = min(ASSOCIATE_REQUEST_SECONDS, self.config.node.network_timeout_seconds)
        event.assoc.acse_timeout = seconds
        transport = event.assoc.dul.socket
        raw = getattr(transport, "socket", None)
        if isinstance(raw, ssl.SSLSocket) and transport is not None:
            try:
                handshake(raw, time.monotonic() + seconds)
            except (ssl.SSLError, OSError) as error:
                logs.warning("tls.handshake_failed", address=event.address[0],  # type: ignore[attr-defined]
                             reason=getattr(error, "reason", None) or type(error).__name__)
                transport.close()

    def take_slot(self, event: evt.Event) -> None:
        """A requested association takes one of the node's ``max_associations`` slots (and one of
        its address's ``max_associations_per_peer``) or is rejected (transient, local limit
        exceeded), so the SCU knows to try again later. Until it sends its first PDU it may idle
        ``idle_association_seconds`` only (node.dicomnet.pdu_guard restores the network timeout)."""
        assoc = event.assoc
        node = self.config.node
        assoc.acse_timeout = node.network_timeout_seconds
        assoc.network_timeout = min(node.idle_association_seconds, node.network_timeout_seconds)
        if assoc.is_rejected or assoc.is_aborted:
            return
        address = assoc.requestor.address
        calling = assoc.requestor.primitive.calling_ae_title.strip()  # type: ignore[union-attr]
        try:
            slot = self._take_slot(address, self._reserved_for(calling, address))
        except SlotsFull as full:
            logs.warning("association.rejected", calling_aet=calling, address=address, reason=str(full))
            assoc.acse.send_reject(_REJECT_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
            return
        with self._held_lock:
            self._held[id(assoc)] = (assoc, slot)

    def _reserved_for(self, calling: str, address: str) -> int:
        """Slots this caller may not take: when the allow-list names addresses, the last
        ``max_associations_per_peer`` are kept for callers from them."""
        by_address = [rule for rule in self.config.allow if rule.addresses]
        if not by_address or any(rule.permits(calling, address) for rule in by_address):
            return 0
        return self.config.node.max_associations_per_peer

    def free_slot(self, event: evt.Event) -> None:
        pdata_stream.discard(event.assoc)  # data sets of an association that ended unanswered
        with self._held_lock:
            held = self._held.pop(id(event.assoc), None)
        if held is not None:
            self._slots.give_back(held[1])

    def _take_slot(self, address: str, reserved: int) -> Slot:
        try:
            return self._slots.take(address, reserved)
        except SlotsFull:  # an association thread that ended without a close event gives its slot back
            with self._held_lock:
                ended = [key for key, (assoc, _) in self._held.items() if not assoc.is_alive()]
                stale = [self._held.pop(key)[1] for key in ended]
            for slot in stale:
                self._slots.give_back(slot)
            if not stale:
                raise
        return self._slots.take(address, reserved)

    def on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        assoc_id = f"{os.getpid()}-{id(assoc):x}-{time.time_ns()}"
        self._assoc_ids[id(assoc)] = assoc_id
        logs.info("association.accepted", association=assoc_id,
                  calling_aet=assoc.requestor.ae_title,
                  called_aet=assoc.requestor.primitive.called_ae_title.strip(),  # type: ignore[union-attr]
                  address=assoc.requestor.address, port=assoc.requestor.port)

    def on_closed(self, event: evt.Event) -> None:
        assoc_id = self._assoc_ids.pop(id(event.assoc), None)
        if assoc_id is None:
            return
        self.intake.end(assoc_id)
        logs.info("association.closed", association=assoc_id,
                  how="aborted" if event.assoc.is_aborted else "released")

    # ---- C-STORE --------------------------------------------------------------------------

    def on_store(self, event: evt.Event) -> int | Dataset:
        """Answer a C-STORE that pynetdicom's association thread took (``answer_in_reader``
        could not): the first of an association whose acceptance was still being handled, or
        every one on stock pynetdicom."""
        if not pdata_stream.enabled():
            return self.answer_store(event.assoc, stock_store.arrived(event, self.spool, self._has_room))
        incoming = pdata_stream.take(event.assoc)
        if incoming is None:  # pynetdicom assembled it: its fragments came on another context
            return StoreRefusal(CANNOT_UNDERSTAND, "data set fragments on another presentation context "
                                "than their command (PS3.8 9.3.5)").response()
        return self.answer_store(event.assoc, incoming)

    def answer_in_reader(self, assoc: Association, incoming: pdata_stream.Incoming) -> int | Dataset | None:
        """Answer a C-STORE in the thread that read its last fragment (``node.receive.pdata_stream``);
        None until ``on_accepted`` gave the association its index id (pynetdicom runs it after
        sending the A-ASSOCIATE-AC, when the SCU may already be sending its first C-STORE):
        the stream answers only on established associations, which pynetdicom marks after its
        EVT_ACCEPTED handlers, but what the index needs is checked here, where it is known."""
        if id(assoc) not in self._assoc_ids:
            return None
        return self.answer_store(assoc, incoming)

    def answer_store(self, assoc: Association, incoming: pdata_stream.Incoming) -> int | Dataset:
        """Answer one C-STORE whose data set ``node.receive.pdata_stream`` has already written to a part
        file: check it, then make it durable under its name and index it, or keep it aside
        (node.receive.intake, the path STOW-RS shares)."""
        if incoming.refused == "disk":
            logs.warning("store.refused", reason="disk below watermark",
                         free_mb=self.spool.free_bytes() // 2**20)
            return StoreRefusal(OUT_OF_RESOURCES, "spool disk is below its free-space watermark").response()
        if isinstance(incoming.refused, OSError):
            logs.error("store.failed", reason=str(incoming.refused))
            return StoreRefusal(OUT_OF_RESOURCES,
                                f"cannot write to spool: {incoming.refused.strerror}").response()
        assert incoming.part is not None
        if incoming.command_problem is not None:
            unusable = StoreRefusal(CANNOT_UNDERSTAND, incoming.command_problem)
            self.intake.quarantine(incoming.part, unusable)
            return unusable.response()
        arrival = Arrival(incoming.part, incoming.transfer_syntax, incoming.header_size,
                          command_claims(incoming.request, incoming.abstract_syntax))
        outcome = self.intake.take(arrival, self._source(assoc))
        return outcome.response() if isinstance(outcome, StoreRefusal) else SUCCESS

    def _source(self, assoc: Association) -> Source | None:
        assoc_id = self._assoc_ids.get(id(assoc))
        if assoc_id is None:
            return None
        return Source(assoc_id, assoc.requestor.ae_title, assoc.requestor.address, os.getpid())

    # ---- server ---------------------------------------------------------------------------

    def make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu
        ae.maximum_associations = _PYNETDICOM_ASSOCIATIONS
        ae.network_timeout = node.network_timeout_seconds
        ae.acse_timeout = node.network_timeout_seconds
        ae.dimse_timeout = node.network_timeout_seconds
        ae.add_supported_context(Verification)
        if node.accept_all_storage:
            _config.UNRESTRICTED_STORAGE_SERVICE = True
            classes = [cx.abstract_syntax for cx in AllStoragePresentationContexts if cx.abstract_syntax]
        else:
            classes = list(STORAGE_CLASSES)
        for sop_class in classes:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.on_connection),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REQUESTED, self.take_slot),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_RELEASED, self.free_slot),
            (evt.EVT_ABORTED, self.free_slot),
            (evt.EVT_CONN_CLOSE, self.free_slot),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def _has_room(self) -> bool:
        return self.spool.free_bytes() >= self._min_free

    def serve_forever(self) -> None:
        # a sender that saw its release answered finds its instances' rows in the index
        pdu_guard.before_release(lambda _dul: self.intake.rows.commit_logged())
        if patches.install(patches.RECEIVER, self.config.node.max_pdu, pdata_stream.read):
            pdata_stream.install(self.spool, self._has_room, self.answer_in_reader)
        else:
            _config.STORE_RECV_CHUNKED_DATASET = True
        # Values are stored as sent and checked by the pipelines that read them; validating every
        # UID's characters again here only costs time on the path that must be fast.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        # pynetdicom's standard handlers format a multi-line description of every DIMSE message
        # for its debug log; radnode logs associations and refusals itself.
        _config.LOG_HANDLER_LEVEL = "none"
        node = self.config.node
        self._server = self.make_ae().make_server(
            (node.host, node.port), evt_handlers=self.handlers(), server_class=_Server,
            ssl_context=None if node.tls is None else server_context(node.tls),
        )
        logs.info("receiver.listening", ae_title=node.ae_title, host=node.host, port=node.port,
                  tls=node.tls is not None, pid=os.getpid())
        assert self._server is not None
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop listening; associations in progress are aborted and the SCU resends what was
        not acknowledged, so nothing unacknowledged is lost."""
        if self._server is not None:
            # socketserver's own shutdown: pynetdicom's also unregisters from AE.start_server's
            # list, which a server made with make_server is not on.
            socketserver.TCPServer.shutdown(self._server)
            self._server.server_close()
        self.intake.rows.commit_logged()

