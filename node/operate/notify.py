"""Telling people: each ``[[notify]]`` target's sender loop, and the watch of conditions that
are no state change (a destination unreachable for a while, the spool disk low).

The events themselves are written by the index in the transaction of the change they tell of
(``node.index.notifications``). Every target has a thread of its own (``node.operate.service``)
that takes its events and sends them, retried with the deliveries' backoff until the target
answers or ``[notifications] retry_hours`` have passed. Sending happens beside the node's work,
never inside it: a webhook that hangs delays its own messages, not a job or a delivery.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from node import logs
from node.config import Config, NotifyTarget
from node.deliver.dispatcher import next_attempt_delay
from node.index.notifications import Event, Notification
from node.index.store import Index, Job
from node.operate import admin
from node.operate.notify_channels import Message, NotSent, send
from node.operate.patient import patient_of

#: What ``include_patient = true`` adds to a message (and what is left out otherwise).
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
_DISK_LOW_SINCE = "notify.disk_low_since"


class Notifier:
    """One target's sender: takes its new events, then sends what is due, oldest first."""

    def __init__(self, config: Config, index: Index, target: NotifyTarget,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.index = index
        self.target = target
        self.stopping = stopping

    def tick(self, now: float | None = None) -> int:
        """Returns how many notifications got through. After a failed try the rest wait for the
        next tick: a target that is down costs one try a tick, not one per message."""
        self.index.take_events(self.target.name, self.target.events)
        sent = 0
        for notification in self.index.due_notifications(self.target.name, now or time.time(),
                                                          self.config.notifications.batch_size):
            if self.stopping() or not self._send(notification):
                break
            sent += 1
        return sent

    def _send(self, notification: Notification) -> bool:
        try:
            send(self.target, message(self.config, self.index, notification.event, self.target),
                 self.config.notifications.timeout_seconds)
        except NotSent as error:
            self._failed(notification, str(error))
            return False
        self.index.mark_notification_sent(notification.id)
        logs.info("notify.sent", target=self.target.name, notification_event=notification.event.kind,
                  event_id=notification.event.event_id, job=notification.event.job_id)
        return True

    def _failed(self, notification: Notification, error: str) -> None:
        now = time.time()
        delay = next_attempt_delay(notification.attempts + 1, self.config.notifications,
                                   now - notification.created_at)
        self.index.mark_notification_failed(notification.id, error, None if delay is None else now + delay)
        logs.warning("notify.failed", target=self.target.name, notification_event=notification.event.kind,
                     event_id=notification.event.event_id, attempt=notification.attempts + 1,
                     dead=delay is None, error=error)


class Watcher:
    """The conditions that become events by lasting: one event per episode."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._watch_disk(now)
        self._watch_destinations(now)

    def _watch_disk(self, now: float) -> None:
        threshold = disk_low_mb(self.config)
        free_mb = shutil.disk_usage(self.config.node.spool).free // 2**20
        since = self.index.node_value(_DISK_LOW_SINCE) or ""
        if free_mb >= threshold:
            if since:
                self.index.set_node_value(_DISK_LOW_SINCE, "")
            return
        if not since:
            since = repr(now)
            self.index.set_node_value(_DISK_LOW_SINCE, since)
        self.index.record_event("disk_low", "spool", f"{free_mb} MB free on the spool's disk, below {threshold} MB"
                                f" (C-STORE is refused below {self.config.node.min_free_disk_mb} MB)",
                                f"disk_low {since}")

    def _watch_destinations(self, now: float) -> None:
        limit = self.config.notifications.unreachable_minutes * 60
        for name, check in self.index.destination_checks().items():
            if check.ok or check.failing_since is None or now - check.failing_since < limit:
                continue
            self.index.record_event("destination_unreachable", name,
                                    f"unreachable since {_iso(check.failing_since)}: {check.detail}",
                                    f"destination_unreachable {name} {check.failing_since!r}")


def disk_low_mb(config: Config) -> int:
    """Free megabytes below which the spool disk counts as low: a warning before the C-STORE refusal."""
    configured = config.notifications.disk_low_mb
    return configured if configured is not None else 2 * config.node.min_free_disk_mb


def job_link(config: Config, job_id: int) -> str | None:
    """The job's page as a receiver opens it (``[notifications] web_url``, else the web page's
    own address when it is on), or None: no page to link."""
    base = config.notifications.web_url
    if base is None and config.web.enabled:
        base = f"{'https' if config.web.tls else 'http'}://{config.web.host}:{config.web.port}"
    return None if base is None else f"{base.rstrip('/')}/jobs/{job_id}"


_SUBJECTS = {
    "result_delivered": "result of job {job} delivered to {subject}",
    "job_failed": "job {job} failed",
    "delivery_dead": "delivery of job {job} to {subject} is dead (radnode retry)",
    "destination_unreachable": "destination {subject} is unreachable",
    "disk_low": "the spool disk is low",
}


def message(config: Config, index: Index, event: Event, target: NotifyTarget) -> Message:
    """What ``target`` is told of ``event``: ids, pipeline, findings count and a link; patient data
    only with its ``include_patient``."""
    payload: dict[str, Any] = {"event_id": event.event_id, "event": event.kind, "at": _iso(event.created_at),
                               "node": config.node.ae_title}
    if event.kind in ("result_delivered", "delivery_dead", "destination_unreachable"):
        payload["destination"] = event.subject
    if event.detail and event.kind != "result_delivered":
        payload["detail"] = event.detail
    job = index.job(event.job_id) if event.job_id is not None else None
    if job is not None:
        payload.update(_job_fields(config, index, job))
        if target.include_patient:
            payload["patient"] = patient_of(index, job.study_uid, PATIENT_KEYWORDS)
    subject = _SUBJECTS[event.kind].format(job=event.job_id, subject=event.subject)
    pipeline = f" ({job.pipeline})" if job is not None else ""
    return Message(f"radnode {config.node.ae_title}: {subject}{pipeline}", payload)


def _job_fields(config: Config, index: Index, job: Job) -> dict[str, Any]:
    result_series = sorted({o.series_uid for o in index.result_objects(job.id)})
    return {"job": {"id": job.id, "route": job.route, "pipeline": job.pipeline, "state": job.state.value,
                    "url": job_link(config, job.id)},
            "pipeline": job.pipeline, "study_uid": job.study_uid, "series_uids": sorted(set(job.inputs.values())),
            "result_series_uids": result_series,
            "findings": sum(len(table.rows) for table in admin.finding_tables(job.summary))}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
