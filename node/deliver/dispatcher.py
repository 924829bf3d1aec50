"""Delivering results to the PACS with C-STORE, until it has them.

Due deliveries to one destination go over one association, each with the result files the
destination's ``formats`` take (``node.result_formats``). A delivery is sent when every one
of its files got a success or warning status; otherwise it is retried with exponential backoff
(capped at ``backoff_max_seconds``) for ``retry_hours`` (24 by default: a PACS maintenance window
or a long outage needs no one), then marked dead for an administrator to look at
(``radnode deliveries``) and re-queue (``radnode retry``, which opens a new window). Result files
stay in the spool until then.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from typing import Any

import pydicom
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from node import logs
from node.config import Config, DeliverySettings, Destination, Source
from node.index.store import Delivery, ResultFile, ResultIndex
from node.isolation import isolated
from node.receive.pynetdicom_ext import patch_reactor_sleep
from node.tls import client_context

_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
_MAX_CONTEXTS = 128
#: A destination that neither took nor refused a delivery for this long is asked with a C-ECHO,
#: so that /health knows whether the PACS answers before a result waits on it.
ECHO_INTERVAL_SECONDS = 60.0


def next_attempt_delay(attempts_done: int, settings: DeliverySettings, elapsed: float) -> float | None:
    """Seconds until the next try after ``attempts_done`` failures over ``elapsed`` seconds of
    the retry window, or None to give up. The last try falls at the end of the window."""
    if settings.max_attempts is not None and attempts_done >= settings.max_attempts:
        return None
    left = settings.retry_hours * 3600 - elapsed
    if left <= 0:
        return None
    return min(settings.backoff_seconds * 2.0 ** (attempts_done - 1), settings.backoff_max_seconds, left)


def retry_schedule(settings: DeliverySettings) -> list[float]:
    """Seconds from the first failure to each later try, until the delivery would be dead:
    what ``settings`` promise an administrator (the README quotes it for the defaults)."""
    times: list[float] = []
    elapsed = 0.0
    while (delay := next_attempt_delay(len(times) + 1, settings, elapsed)) is not None:
        elapsed += delay
        times.append(elapsed)
    return times


def scu_ae(config: Config) -> AE:
    """The node's requesting AE: its reactors wait woken by their work (node.receive.pynetdicom_ext),
    and a C-STORE of a file sends the file's bytes as they are, without decoding and encoding
    the data set again (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``, off by default)."""
    patch_reactor_sleep()
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
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if getattr(assoc, "is_rejected", False):
        return f"association rejected by {where} (check its AE title and our AE on its side)"
    if destination.tls is not None:
        return (f"no TLS association with {where} (is it running and reachable, does it speak TLS,"
                " and does its certificate verify against tls.ca_file for that host name?)")
    return f"no association with {where} (is it running and reachable?)"


class Dispatcher:
    def __init__(self, config: Config, index: ResultIndex) -> None:
        self.config = config
        self.index = index

    def tick(self, now: float | None = None) -> int:
        """Try every due delivery once, then echo the destinations not heard of for a while;
        returns how many deliveries were sent."""
        now = time.time() if now is None else now
        sent = self._deliver_due(now)
        self._echo_quiet_destinations(now)
        return sent

    def _echo_quiet_destinations(self, now: float) -> None:
        checks = self.index.destination_checks()
        for destination in self.config.destinations:
            last = checks.get(destination.name)
            if last is None or now - last.at >= ECHO_INTERVAL_SECONDS:
                isolated("dispatcher", f"echo {destination.name}", partial(self._echo, destination),
                         partial(self._echo_failed, destination))

    def _echo_failed(self, destination: Destination, reason: str) -> None:
        self.index.record_destination_check(destination.name, False, f"C-ECHO: {reason}")

    def _echo(self, destination: Destination) -> None:
        try:
            status = echo(self.config, destination)
        except (ConnectionError, OSError) as error:
            self.index.record_destination_check(destination.name, False, f"C-ECHO: {error}")
            return
        self.index.record_destination_check(destination.name, status == 0, f"C-ECHO status 0x{status:04X}")

    def _deliver_due(self, now: float) -> int:
        due = self.index.due_deliveries(now, self.config.delivery.batch_size)
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        sent = 0
        for name, deliveries in by_destination.items():
            def send(name: str = name, deliveries: list[Delivery] = deliveries) -> None:
                nonlocal sent
                sent += self._send_batch(self.config.destination(name), deliveries)

            def give_up(reason: str, deliveries: list[Delivery] = deliveries) -> None:
                for delivery in deliveries:
                    self._failed(delivery, reason)

            isolated("dispatcher", name, send, give_up)
        return sent

    def _send_batch(self, destination: Destination, deliveries: Sequence[Delivery]) -> int:
        files = {d.id: self._files_for(destination, d) for d in deliveries}
        sent = self._settle_empty([d for d in deliveries if not files[d.id]], destination)
        deliveries = [d for d in deliveries if files[d.id]]
        if not deliveries:
            return sent
        syntaxes: dict[int, set[tuple[str, str]]] = {}
        for delivery in deliveries:
            try:
                syntaxes[delivery.id] = _syntaxes(files[delivery.id])
            except Exception as failure:  # one unreadable result fails its delivery, not the batch
                self._failed(delivery, f"{type(failure).__name__}: {failure}"[:500])
        deliveries = [d for d in deliveries if d.id in syntaxes]
        if not deliveries:
            return sent
        ae = scu_ae(self.config)
        for sop_class, syntax in _contexts({pair for d in deliveries for pair in syntaxes[d.id]}):
            ae.add_requested_context(sop_class, syntax)
        assoc = associate(ae, destination)
        if not assoc.is_established:
            reason = association_failure(assoc, destination)
            self.index.record_destination_check(destination.name, False, reason)
            for delivery in deliveries:
                self._failed(delivery, reason)
            return sent
        try:
            for delivery in deliveries:
                error: str | None
                try:
                    error = self._send_files(assoc, files[delivery.id])
                except Exception as failure:  # one unreadable result must not hold back the batch
                    error = f"{type(failure).__name__}: {failure}"[:500]
                self.index.record_destination_check(destination.name, error is None,
                                                    error or f"delivery {delivery.id} sent")
                if error is None:
                    self.index.mark_delivery_sent(delivery.id)
                    logs.info("delivery.sent", delivery=delivery.id, job=delivery.job_id,
                              destination=destination.name, objects=len(files[delivery.id]),
                              formats=list(destination.formats))
                    sent += 1
                else:
                    self._failed(delivery, error)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def _files_for(self, destination: Destination, delivery: Delivery) -> list[ResultFile]:
        """The delivery's result files that ``destination``'s formats take: a destination that
        asks only for key images is sent the Secondary Captures of a job that wrote SEG and SR too."""
        return [f for f in self.index.results(delivery.job_id) if destination.takes(f.sop_class)]

    def _settle_empty(self, deliveries: Sequence[Delivery], destination: Destination) -> int:
        """Deliveries with nothing left to send (the destination's formats changed after their
        job ended) are done without an association: the destination asked for none of it."""
        for delivery in deliveries:
            self.index.mark_delivery_sent(delivery.id)
            logs.warning("delivery.nothing_to_send", delivery=delivery.id, job=delivery.job_id,
                         destination=destination.name, objects=0, formats=list(destination.formats))
        return len(deliveries)

    @staticmethod
    def _send_files(assoc: object, files: Sequence[ResultFile]) -> str | None:
        for result in files:
            if not result.path.exists():
                return f"result file {result.path} is gone from the spool"
            status = assoc.send_c_store(result.path)  # type: ignore[attr-defined]
            if "Status" not in status:
                return "connection lost during C-STORE"
            if int(status.Status) not in _OK_STATUSES:
                return f"C-STORE status 0x{int(status.Status):04X} for {result.path.name}"
        return None

    def _failed(self, delivery: Delivery, error: str) -> None:
        now = time.time()
        window_start = delivery.retry_from if delivery.retry_from is not None else delivery.created_at
        delay = next_attempt_delay(delivery.attempts + 1, self.config.delivery, now - window_start)
        self.index.mark_delivery_failed(delivery.id, error, None if delay is None else now + delay)
        logs.warning("delivery.failed", delivery=delivery.id, job=delivery.job_id,
                     destination=delivery.destination, attempt=delivery.attempts + 1,
                     dead=delay is None, error=error)


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
