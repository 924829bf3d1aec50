"""``/metrics`` for Prometheus and ``/health`` for load balancers, systemd and people.

Both are read from the index and the supervisor at request time, so they show what the node
really holds (a restart loses no counts) and cost nothing between scrapes. No patient data: only
states, counts, seconds and bytes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from node import logs
from node.complete.studies import StudyWatch, wait_counts
from node.config import Config, Destination, DicomwebDestination
from node.health import Check
from node.index.results import DestinationCheck
from node.index.states import MACHINES, DeliveryState
from node.index.store import Index
from node.operate.admin import notify_rows, notify_summary, when
from node.receive.stow import ASSOCIATION_PREFIX

#: role -> (processes alive, processes configured), from the supervisor.
ChildCounts = Callable[[], dict[str, tuple[int, int]]]
#: name -> check: the executor's own checks (a cluster it must reach), from the supervisor.
ExecutorChecks = Callable[[], dict[str, Check]]

_STATES = {machine.table: tuple(machine.states) for machine in MACHINES}
#: /health names a destination's check "destination NAME".
DESTINATION_CHECK = "destination "
#: ... and a notification target's "notify NAME".
NOTIFY_CHECK = "notify "
#: The STOW-RS receiver's process role (node.operate.service) and its check's name.
STOW_ROLE, STOW_CHECK = "stow-receiver", "dicomweb"
_HOUR = 3600.0


class NodeCollector:
    """Prometheus collector over the index, the spool disk and the supervisor's children."""

    def __init__(self, config: Config, index: Index, children: ChildCounts) -> None:
        self.config = config
        self.index = index
        self.children = children
        self.lock = threading.Lock()  # one index connection, scraped from server threads
        self.watch = StudyWatch(config, index)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            counts = self.index.state_counts()
            instances = self.index.count_instances()
            job_seconds = self.index.job_seconds()
            waits = wait_counts(self.watch.studies(time.time(), detail=False))
        for table, states in _STATES.items():
            gauge = GaugeMetricFamily(f"radnode_{table}", f"{table} in the index by state", labels=["state"])
            for state in states:
                gauge.add_metric([state], counts[table].get(state, 0))
            yield gauge
        studies = GaugeMetricFamily("radnode_studies", "studies of the last 7 days by state (radnode studies)",
                                    labels=["state"])
        for state, count in waits.studies.items():
            studies.add_metric([state], count)
        yield studies
        series = GaugeMetricFamily("radnode_series_waiting", "receiving series by what they wait for: "
                                   "instances the headers announce, the association's release, the settle time",
                                   labels=["waits_for"])
        for kind, count in waits.series.items():
            series.add_metric([kind], count)
        yield series
        yield GaugeMetricFamily("radnode_study_routes_waiting",
                                "study routes waiting for input roles or their study timeout",
                                value=waits.routes_waiting)
        yield GaugeMetricFamily("radnode_instances_stored", "received instances held in the spool",
                                value=instances)
        yield GaugeMetricFamily("radnode_spool_free_bytes", "free bytes on the spool's file system",
                                value=shutil.disk_usage(self.config.node.spool).free)
        alive = GaugeMetricFamily("radnode_processes_alive", "receiver and worker processes running",
                                  labels=["role"])
        for role, (running, _) in self.children().items():
            alive.add_metric([role], running)
        yield alive
        summary = SummaryMetricFamily("radnode_job_seconds", "seconds from job queued to results written",
                                      labels=["pipeline"])
        for pipeline, (count, total) in sorted(job_seconds.items()):
            summary.add_metric([pipeline], count_value=count, sum_value=total)
        yield summary


def health_checks(config: Config, index: Index, children: ChildCounts,
                  executor_checks: ExecutorChecks = dict) -> dict[str, Check]:
    """What must hold for the node to take studies and return results."""
    checks: dict[str, Check] = {}
    for role, (running, expected) in children().items():
        checks[f"{role}s"] = Check(running == expected, f"{running} of {expected} running")
    checks.update(executor_checks())
    try:
        counts = index.state_counts()
        checks["index"] = Check(True, str(config.node.index_path))
    except Exception as error:  # a locked or corrupt index is exactly what health must report
        counts = {}
        checks["index"] = Check(False, f"{type(error).__name__}: {error}")
    free_mb = shutil.disk_usage(config.node.spool).free // 2**20
    checks["spool_disk"] = Check(
        free_mb >= config.node.min_free_disk_mb,
        f"{free_mb} MB free, C-STORE refused below {config.node.min_free_disk_mb} MB",
    )
    dead = counts.get("deliveries", {}).get(DeliveryState.DEAD, 0)
    # Dead deliveries do not stop the node, but someone must act: `radnode retry`.
    checks["deliveries"] = Check(dead == 0, f"{dead} dead (radnode deliveries --state dead)")
    checks.update(destination_checks(config, index))
    checks.update(notify_checks(config, index))
    if config.dicomweb.port is not None:
        checks[STOW_CHECK] = stow_check(config, index, children)
    return checks


def notify_checks(config: Config, index: Index) -> dict[str, Check]:
    """"notify NAME": whether each target took its latest message. A target that fails leaves the
    node degraded: its messages wait in the index and go when it answers again."""
    try:
        rows = notify_rows(config, index)
    except Exception:  # noqa: BLE001 (the index check already names the failure)
        return {}
    return {f"{NOTIFY_CHECK}{r.name}": Check(not r.state.last_error, f"{r.kind} {r.where}: {notify_summary(r)}")
            for r in rows}


def stow_check(config: Config, index: Index, children: ChildCounts) -> Check:
    """The STOW-RS receiver: off, listening (with what it took in the last hour) or not running."""
    settings = config.dicomweb
    if settings.port is None:
        return Check(True, "off ([dicomweb] port not set)")
    where = f"{'https' if settings.tls else 'http'}://{settings.host}:{settings.port}/studies"
    running, expected = children().get(STOW_ROLE, (0, 1))
    if running < expected:
        return Check(False, f"{where}: not running (the supervisor restarts it; see the log)")
    try:
        uploads, instances = index.association_counts(ASSOCIATION_PREFIX, time.time() - _HOUR)
    except Exception:  # noqa: BLE001 (the index check names the failure)
        return Check(True, f"listening on {where}")
    return Check(True, f"listening on {where}: {instances} instances in {uploads} uploads in the last hour")


def destination_checks(config: Config, index: Index) -> dict[str, Check]:
    """"destination NAME": each destination's last C-ECHO or delivery. An unreachable PACS leaves
    the node degraded, not down: it keeps receiving and running, and delivers when the PACS is back."""
    try:
        seen = index.destination_checks()
    except Exception:  # noqa: BLE001 (the index check above already names the failure)
        seen = {}
    return {f"{DESTINATION_CHECK}{d.name}": _destination_check(d, seen.get(d.name)) for d in config.destinations}


def destination_seen(config: Config, index: Index) -> list[tuple[Destination | DicomwebDestination, Check]]:
    """Each destination, whatever its protocol, with its last check or delivery (``radnode destinations``)."""
    checks = destination_checks(config, index)
    return [(d, checks[f"{DESTINATION_CHECK}{d.name}"]) for d in config.destinations]


def _destination_check(destination: Destination | DicomwebDestination, last: DestinationCheck | None) -> Check:
    where = destination.where
    if last is None:
        return Check(True, f"{where}: not tried yet")
    if last.ok:
        return Check(True, f"{where}: answered at {when(last.at)} ({last.detail})")
    return Check(False, f"{where}: unreachable since {when(last.failing_since or last.at)}, last tried at "
                        f"{when(last.at)}: {last.detail}")


def health_status(checks: dict[str, Check]) -> str:
    """"ok"; "degraded" when only deliveries or destinations fail (the node still receives and
    runs, and answers 200); "failing" when the node itself cannot do its work (503)."""
    hard = [c.ok for name, c in checks.items() if not _soft(name)]
    if not all(hard):
        return "failing"
    return "ok" if all(c.ok for c in checks.values()) else "degraded"


def _soft(name: str) -> bool:
    return name == "deliveries" or name.startswith((DESTINATION_CHECK, NOTIFY_CHECK))


class MonitoringServer:
    def __init__(self, config: Config, children: ChildCounts,
                 executor_checks: ExecutorChecks = dict) -> None:
        self.config = config
        self.children = children
        self.executor_checks = executor_checks
        self.index = Index(config.node.index_path)
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = NodeCollector(config, self.index, children)
        self.registry.register(self.collector)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        settings = self.config.monitoring
        self._server = ThreadingHTTPServer((settings.host, settings.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="monitoring", daemon=True).start()
        logs.info("monitoring.listening", host=settings.host, port=settings.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        with self.collector.lock:
            checks = health_checks(self.config, self.index, self.children, self.executor_checks)
        status = health_status(checks)
        body = {"status": status,
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}}
        return (503 if status == "failing" else 200), body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, monitor.metrics())
                elif path == "/health":
                    status, body = monitor.health()
                    self._reply(status, "application/json", json.dumps(body, indent=1).encode())
                else:
                    self._reply(404, "text/plain", b"radnode serves /metrics and /health\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:  # scrapes every few seconds: not worth a log line
                pass

        return Handler
