"""Delivering results to their destinations, until each has them.

Due deliveries to one destination go together to its ``Sender`` (C-STORE or STOW-RS). A delivery
is sent when every one of its files was taken; otherwise it is retried with backoff for
``retry_hours``, then marked dead for an administrator to re-queue (``radnode retry``); every try
is recorded (docs/deliver.md).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from functools import partial

from node import logs
from node.config import Config, DeliverySettings, Destination, DicomwebDestination
from node.deliver.cstore import CStoreSender
from node.deliver.sending import Outcome, Parcel, Sender
from node.deliver.stow import StowSender
from node.index.store import Delivery, Index, ResultFile
from node.isolation import isolated

#: A destination that neither took nor refused a delivery for this long is asked with a C-ECHO
#: (or a DICOMweb request), so that /health knows whether it answers before a result waits on it.
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


def sender(config: Config, destination: Destination | DicomwebDestination) -> Sender:
    """The protocol strategy of ``destination``."""
    if isinstance(destination, DicomwebDestination):
        return StowSender(destination)
    return CStoreSender(config, destination)


class Dispatcher:
    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index
        #: one sender per destination, kept across ticks (a DICOMweb sender keeps its connection)
        self._senders = {d.name: sender(config, d) for d in config.destinations}

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
                isolated("dispatcher", f"echo {destination.name}", partial(self._echo, destination.name),
                         partial(self._echo_failed, destination.name))

    def _echo_failed(self, name: str, reason: str) -> None:
        self.index.record_destination_check(name, False, f"could not ask it: {reason}")

    def _echo(self, name: str) -> None:
        ok, detail = self._senders[name].probe()
        self.index.record_destination_check(name, ok, detail)

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

    def _send_batch(self, destination: Destination | DicomwebDestination, deliveries: Sequence[Delivery]) -> int:
        parcels = [Parcel(d, self._files_for(destination, d), self._study_of(d)) for d in deliveries]
        sent = self._settle_empty([p.delivery for p in parcels if not p.files], destination)
        unsettled = {p.delivery.id: p for p in parcels if p.files}
        if not unsettled:
            return sent

        def settle(parcel: Parcel, outcome: Outcome) -> None:
            nonlocal sent
            unsettled.pop(parcel.delivery.id, None)
            if not outcome.local:
                self.index.record_destination_check(destination.name, outcome.error is None,
                                                    outcome.error or f"delivery {parcel.delivery.id} sent")
            if outcome.error is None:
                self.index.mark_delivery_sent(parcel.delivery.id)
                logs.info("delivery.sent", delivery=parcel.delivery.id, job=parcel.delivery.job_id,
                          destination=destination.name, objects=len(parcel.files),
                          formats=list(destination.formats))
                sent += 1
            else:
                self._failed(parcel.delivery, outcome.error)

        unreachable = self._senders[destination.name].send(list(unsettled.values()), settle)
        if unreachable is not None:
            self.index.record_destination_check(destination.name, False, unreachable)
            for parcel in list(unsettled.values()):
                self._failed(parcel.delivery, unreachable)
        return sent

    def _study_of(self, delivery: Delivery) -> str:
        """The study the job's results belong in (a DICOMweb destination is told it, and refuses
        an object of another study)."""
        job = self.index.job(delivery.job_id)
        return job.study_uid if job is not None else ""

    def _files_for(self, destination: Destination | DicomwebDestination, delivery: Delivery) -> list[ResultFile]:
        """The delivery's result files that ``destination``'s formats take: a destination that
        asks only for key images is sent the Secondary Captures of a job that wrote SEG and SR too."""
        return [f for f in self.index.results(delivery.job_id) if destination.takes(f.sop_class)]

    def _settle_empty(self, deliveries: Sequence[Delivery], destination: Destination | DicomwebDestination) -> int:
        """Deliveries with nothing left to send (the destination's formats changed after their
        job ended) are done without an association: the destination asked for none of it."""
        for delivery in deliveries:
            self.index.mark_delivery_sent(delivery.id)
            logs.warning("delivery.nothing_to_send", delivery=delivery.id, job=delivery.job_id,
                         destination=destination.name, objects=0, formats=list(destination.formats))
        return len(deliveries)

    def _failed(self, delivery: Delivery, error: str) -> None:
        now = time.time()
        window_start = delivery.retry_from if delivery.retry_from is not None else delivery.created_at
        delay = next_attempt_delay(delivery.attempts + 1, self.config.delivery, now - window_start)
        self.index.mark_delivery_failed(delivery.id, error, None if delay is None else now + delay)
        logs.warning("delivery.failed", delivery=delivery.id, job=delivery.job_id,
                     destination=delivery.destination, attempt=delivery.attempts + 1,
                     dead=delay is None, error=error)
