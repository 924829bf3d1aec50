"""Results to a PACS by C-STORE: one association per batch of deliveries, each file sent as its
bytes are (pynetdicom does not decode and encode it again), and C-ECHO to ask whether the PACS
answers. The dispatcher (``node.deliver.dispatcher``) keeps the bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydicom
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from node.config import Config, Destination, Source
from node.deliver.sending import Outcome, Parcel, Settle
from node.dicomnet import patches, sending
from node.index.store import ResultFile
from node.tls import client_context

_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
_MAX_CONTEXTS = 128


def scu_ae(config: Config) -> AE:
    """The node's requesting AE: its reactors wait woken by their work (node.dicomnet.patches),
    and a C-STORE of a file sends the file's bytes as they are, without decoding and encoding
    the data set again (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``, off by default)."""
    patches.install(patches.SENDER)
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=config.node.ae_title)
    ae.network_timeout = config.node.network_timeout_seconds
    ae.acse_timeout = config.node.network_timeout_seconds
    ae.dimse_timeout = config.node.network_timeout_seconds
    return ae


def echo(config: Config, destination: Destination) -> int:
    """C-ECHO a destination; returns the DIMSE status, raises ConnectionError if unreachable."""
    ae = scu_ae(config)
    ae.add_requested_context(Verification)
    assoc = associate(ae, destination)
    if not assoc.is_established:
        raise ConnectionError(association_failure(assoc, destination))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        raise ConnectionError(f"{destination.name}: no C-ECHO response")
    return int(status.Status)


def associate(ae: AE, destination: Destination | Source, **options: Any) -> Association:
    """An association with ``destination`` (or a source to query), over DICOM TLS when its config
    has a ``tls`` table; ``options`` go to pynetdicom (``ext_neg``, ``evt_handlers``)."""
    tls_args = None
    if destination.tls is not None:
        server_name = destination.host if destination.tls.check_hostname else None
        tls_args = (client_context(destination.tls), server_name)
    # pynetdicom annotates the host name as str, but passes it to ssl, where None (the
    # destination's check_hostname = false) means "do not check the name"
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                        tls_args=tls_args, **options)  # type: ignore[arg-type]


def association_failure(assoc: object, destination: Destination | Source) -> str:
    where = destination.where
    if getattr(assoc, "is_rejected", False):
        return f"association rejected by {where} (check its AE title and our AE on its side)"
    if destination.tls is not None:
        return (f"no TLS association with {where} (is it running and reachable, does it speak TLS,"
                " and does its certificate verify against tls.ca_file for that host name?)")
    return f"no association with {where} (is it running and reachable?)"


class CStoreSender:
    """A batch of deliveries over one association; a delivery is sent when every one of its files
    got a success or warning status."""

    def __init__(self, config: Config, destination: Destination) -> None:
        self.config = config
        self.destination = destination

    def probe(self) -> tuple[bool, str]:
        try:
            status = echo(self.config, self.destination)
        except (ConnectionError, OSError) as error:
            return False, f"C-ECHO: {error}"
        return status == 0, f"C-ECHO status 0x{status:04X}"

    def send(self, parcels: Sequence[Parcel], settle: Settle) -> str | None:
        """Parcels after a lost association are left due, untried (no attempt counted)."""
        syntaxes: dict[int, set[tuple[str, str]]] = {}
        for parcel in parcels:
            try:
                syntaxes[parcel.delivery.id] = _syntaxes(parcel.files)
            except Exception as failure:  # one unreadable result fails its delivery, not the batch
                settle(parcel, Outcome(f"{type(failure).__name__}: {failure}"[:500], local=True))
        parcels = [p for p in parcels if p.delivery.id in syntaxes]
        if not parcels:
            return None
        ae = scu_ae(self.config)
        for sop_class, syntax in _contexts({pair for p in parcels for pair in syntaxes[p.delivery.id]}):
            ae.add_requested_context(sop_class, syntax)
        assoc = associate(ae, self.destination)
        if not assoc.is_established:
            return association_failure(assoc, self.destination)
        _without_message_logging(assoc)
        try:
            for parcel in parcels:
                error: str | None
                try:
                    error = _send_files(assoc, parcel.files)
                except Exception as failure:  # one unreadable result must not hold back the batch
                    error = f"{type(failure).__name__}: {failure}"[:500]
                settle(parcel, Outcome(error))
                if not assoc.is_established:
                    break  # the rest stay due, untried
        finally:
            sending.resume_reactor(assoc)
            if assoc.is_established:
                assoc.release()
        return None


def _without_message_logging(assoc: Association) -> None:
    """Unbind pynetdicom's standard handlers that describe every message and PDU for its log:
    the node keeps pynetdicom's log at warnings (node.logs), so they only cost time, and a bound
    EVT_DIMSE_SENT handler keeps each C-STORE request on pynetdicom's slower encoding
    (node.dicomnet.sending)."""
    for event in (evt.EVT_DIMSE_SENT, evt.EVT_DIMSE_RECV, evt.EVT_PDU_SENT, evt.EVT_PDU_RECV):
        for handler, _ in list(assoc.get_handlers(event)):  # type: ignore[misc]
            assoc.unbind(event, handler)


def _send_files(assoc: Association, files: Sequence[ResultFile]) -> str | None:
    contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
                for cx in assoc.accepted_contexts}
    for message_id, result in enumerate(files, start=1):
        if not result.path.exists():
            return f"result file {result.path} is gone from the spool"
        status = _store(assoc, contexts.get((result.sop_class, str(result.transfer_syntax))), message_id, result)
        if status is None:
            return "connection lost during C-STORE"
        if status not in _OK_STATUSES:
            return f"C-STORE status 0x{status:04X} for {result.path.name}"
    return None


def _store(assoc: Association, context_id: int | None, message_id: int, result: ResultFile) -> int | None:
    """One file's C-STORE status (None: no response): sent lean (``sending.store_file``, which
    needs the speed-ups' P-DATA sending) on the context of its recorded SOP class and transfer
    syntax, else by pynetdicom."""
    if context_id is not None and patches.speedups_allowed():
        try:
            return sending.store_file(assoc, context_id, message_id & 0xFFFF, result.path)
        except ValueError:
            pass  # file meta laid out otherwise: pynetdicom reads it
    status = assoc.send_c_store(result.path)
    return int(status.Status) if "Status" in status else None


def _syntaxes(files: Sequence[ResultFile]) -> set[tuple[str, str]]:
    """(SOP class, transfer syntax) of each result file, as its writer recorded them (the file
    is read once, by the C-STORE); raises when one is gone or, for a row of an older radnode
    without its transfer syntax, unreadable."""
    pairs = set()
    for result in files:
        if not result.path.exists():
            raise FileNotFoundError(f"result file {result.path} is gone from the spool")
        syntax = result.transfer_syntax or pydicom.filereader.read_file_meta_info(result.path).TransferSyntaxUID
        pairs.add((result.sop_class, str(syntax)))
    return pairs


def _contexts(pairs: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (SOP class, transfer syntax) pairs to request, one presentation context each."""
    if len(pairs) > _MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs exceed one association's 128")
    return sorted(pairs)
