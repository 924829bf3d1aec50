"""``radnode serve``: the process tree of a running node, wired together here.

    radnode serve (supervisor: restarts dead children)
    ├── receiver processes (Storage SCP, sharing the DICOM port), and the STOW-RS receiver
    ├── the executor's workers (``node.run.executor``): local processes, or a Ray cluster's actors
    └── threads: completion (``node.complete``), scheduler (``node.run.scheduler``), dispatcher,
        retention, notify watch / notify TARGET, backfill

They share only the index, so any of them can die and be restarted, and the whole node can be
killed, without losing an acknowledged instance, a job or a delivery.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path

from node import logs
from node.complete.assembler import Assembler
from node.config import Config, ConfigError, NotifyTarget, load_config
from node.deliver.dispatcher import Dispatcher
from node.index.doorbell import Doorbell, Topic
from node.index.store import Index
from node.isolation import isolated
from node.operate.monitoring import MonitoringServer
from node.operate.notify import Notifier, Watcher
from node.operate.reconcile import recover_receiver, reindex_after_reboot, reindex_open_associations
from node.operate.retention import Retention
from node.operate.web import WebServer
from node.receive.scp import Receiver
from node.receive.spool import Spool
from node.receive.spool_lock import lock_spool
from node.receive.stow import StowReceiver
from node.retrieve.backfill import Backfiller
from node.run.bundle_check import check_bundles
from node.run.child import die_with_parent
from node.run.engine import make_executor
from node.run.executor import Executor
from node.run.scheduler import Scheduler

#: The longest each loop sleeps between passes; completion, the scheduler and the dispatcher are
#: woken sooner by their doorbells (``node.index.doorbell``), completion also when a receiving
#: series' settle or quiet time ends.
COMPLETION_INTERVAL = 0.25
SCHEDULER_INTERVAL = 0.25
DISPATCHER_INTERVAL = 0.5
NOTIFY_INTERVAL = 0.5
#: the threads of notifications are named "notify watch" and "notify TARGET"
NOTIFY_THREAD = "notify "
SUPERVISOR_INTERVAL = 0.25
BACKFILL_INTERVAL = 1.0
#: the shortest sleep of a loop that asked to wake at a moment already past (clock rounding)
MIN_WAIT_SECONDS = 0.001


@dataclass(frozen=True)
class Wake:
    """What a loop's action may return: run the next pass at ``at`` (epoch seconds) when that
    comes before the loop's interval ends (completion: when a series' settle time ends)."""

    at: float


def receiver_main(config_path: str) -> None:
    _serve_child(config_path, Receiver)


def stow_main(config_path: str) -> None:
    _serve_child(config_path, StowReceiver)


def _serve_child(config_path: str, make: Callable[[Config], Receiver | StowReceiver]) -> None:
    """A receiving child: it dies with the supervisor, and SIGTERM stops it listening (what it
    has not answered, its sender sends again)."""
    die_with_parent()
    logs.setup()
    receiver = make(load_config(Path(config_path)))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=receiver.shutdown).start())
    receiver.serve_forever()


#: The roles of the children that receive: they write spool part files and open associations.
RECEIVING_ROLES = ("receiver", "stow-receiver")


@dataclass
class _Child:
    role: str
    target: Callable[[str], None]
    process: BaseProcess | None = None


@dataclass
class Node:
    config: Config
    config_path: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _children: list[_Child] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _monitor: MonitoringServer | None = None
    _web: WebServer | None = None
    _listening: bool = False
    _bells: dict[Topic, Doorbell] = field(default_factory=dict)
    _scheduler_thread: threading.Thread | None = None
    _receivers_stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self.index = Index(self.config.node.index_path)
        self.executor: Executor = make_executor(self.config, str(self.config_path),
                                                Index(self.config.node.index_path))
        self.scheduler = Scheduler(self.config, Index(self.config.node.index_path), self.executor)

    # ---- start -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Pick up where a crash or a stop left off: every unfinished thing is in the index."""
        spool = Spool(self.config.node.spool)
        partial = spool.clear_partial_writes()
        reindexed = reindex_after_reboot(spool, self.index) + reindex_open_associations(spool, self.index)
        closed = self.index.close_associations_of(None)
        requeued = self.index.requeue_running_jobs(None)
        logs.info("node.recovered", partial_writes_removed=partial, instances_reindexed=reindexed,
                  associations_closed=closed,
                  jobs_requeued=requeued,
                  series_receiving=len(self.index.receiving_series()),
                  deliveries_due=len(self.index.due_deliveries(time.time() + 1e9, 1_000_000)))

    def start(self) -> None:
        self._warn_about_open_access()
        self._check_port_is_free("node.port", self.config.node.host, self.config.node.port)
        stow = self.config.dicomweb
        if stow.port is not None:
            self._check_port_is_free("dicomweb.port", stow.host, stow.port)
        self._start_monitoring()
        self._start_web()
        self.recover()
        for _ in range(self.config.node.receivers):
            self._children.append(_Child("receiver", receiver_main))
        if stow.port is not None:
            self._children.append(_Child("stow-receiver", stow_main))
        # before the children: a release or a result committed from now on wakes its loop
        self._bells = {topic: Doorbell(self.config.node.index_path, topic)
                       for topic in ("series", "jobs", "deliveries")}
        for child in self._children:
            self._spawn(child)
        self.executor.start()
        self._scheduler_thread = threading.Thread(target=self._run_scheduler, name="scheduler", daemon=True)
        self._threads = [
            threading.Thread(target=self._loop, args=(self._complete_once, COMPLETION_INTERVAL,
                                                      self._bells["series"]),
                             name="completion", daemon=True),
            threading.Thread(target=self._loop, args=(self._dispatch_once, DISPATCHER_INTERVAL,
                                                      self._bells["deliveries"]),
                             name="dispatcher", daemon=True),
            threading.Thread(target=self._loop,
                             args=(self._retention_once, self.config.retention.interval_minutes * 60),
                             name="retention", daemon=True),
            *self._notify_threads(),
        ]
        if self.config.sources:
            self._threads.append(threading.Thread(target=self._loop, args=(self._backfill_once, BACKFILL_INTERVAL),
                                                  name="backfill", daemon=True))
        self._scheduler_thread.start()
        for thread in self._threads:
            thread.start()
        logs.info("node.started", ae_title=self.config.node.ae_title, port=self.config.node.port,
                  receivers=self.config.node.receivers, stow_port=self.config.dicomweb.port, engine=self.config.workers.engine,
                  workers=self.config.workers.count,
                  routes=[r.name for r in self.config.routes])

    def _warn_about_open_access(self) -> None:
        if not self.config.allow:
            logs.warning("config.allow_empty",
                         message="no [[allow]] entries: any calling AE from any address may store")
        stow = self.config.dicomweb
        if stow.port is not None and not stow.token_files and (stow.tls is None or stow.tls.ca_file is None):
            logs.warning("config.dicomweb_open", message="[dicomweb] has no token_files and no [dicomweb.tls] "
                         "ca_file: any client that reaches the port may store")

    @staticmethod
    def _check_port_is_free(key: str, host: str, port: int) -> None:
        """The receivers share their port (SO_REUSEPORT) with each other only: a second node
        started on the same port would silently take half the associations into its own spool.
        A bind without SO_REUSEPORT fails while anything listens there. (The STOW-RS receiver,
        a child too, would otherwise fail only in its own log.)"""
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as error:
            section, name = key.split(".")
            raise ConfigError(
                f"{key}: cannot listen on {host}:{port} ({error.strerror}); another "
                f"radnode or another program uses it: stop it, or set [{section}] {name} to a free port"
            ) from None
        finally:
            probe.close()

    def _start_monitoring(self) -> None:
        settings = self.config.monitoring
        if not settings.enabled:
            return
        self._monitor = MonitoringServer(self.config, self.child_counts, self.executor.checks)
        try:
            self._monitor.start()
        except OSError as error:
            raise ConfigError(
                f"monitoring: cannot listen on {settings.host}:{settings.port} ({error.strerror}); "
                "set [monitoring] port to a free port, or enabled = false"
            ) from None

    def _start_web(self) -> None:
        settings = self.config.web
        if not settings.enabled:
            return
        self._web = WebServer(self.config, self.child_counts)
        try:
            self._web.start()
        except OSError as error:
            raise ConfigError(
                f"web.port: cannot listen on {settings.host}:{settings.port} ({error.strerror}); "
                "set [web] port to a free port, or enabled = false"
            ) from None

    def child_counts(self) -> dict[str, tuple[int, int]]:
        """role -> (alive, configured), for /health and /metrics."""
        counts: dict[str, tuple[int, int]] = {}
        for child in self._children:
            alive, total = counts.get(child.role, (0, 0))
            running = child.process is not None and child.process.is_alive()
            counts[child.role] = (alive + int(running), total + 1)
        return {**counts, **self.executor.health()}

    def _spawn(self, child: _Child) -> None:
        child.process = self._mp.Process(target=child.target, args=(str(self.config_path),),
                                         name=f"radnode-{child.role}")
        child.process.start()

    # ---- background loops ------------------------------------------------------------------

    def _loop(self, step: Callable[[], Callable[[], object]], interval: float,
              bell: Doorbell | None = None) -> None:
        """Run ``step``'s action every ``interval`` seconds, or as soon as ``bell`` rings, or
        at the moment the action returns (a ``Wake``), whichever comes first."""
        action = step()
        while not self._stop.is_set():
            wait = interval
            try:
                outcome = action()
                if isinstance(outcome, Wake):
                    wait = min(interval, max(MIN_WAIT_SECONDS, outcome.at - time.time()))
            except Exception as error:  # a bad tick is logged and retried, never fatal
                logs.error("node.loop_error", loop=threading.current_thread().name,
                           reason=f"{type(error).__name__}: {error}", exc_info=True)
            if bell is None:
                self._stop.wait(wait)
            else:
                bell.wait(wait)

    def _run_scheduler(self) -> None:
        """The scheduler's loop (a queued job or a freed worker rings it), then the executor's
        stop once the receivers are down: a worker the scheduler restarted dies with the thread
        that spawned it (PR_SET_PDEATHSIG), so this thread must outlive its workers."""
        self._loop(lambda: self.scheduler.tick, SCHEDULER_INTERVAL, self._bells["jobs"])
        self._receivers_stopped.wait()
        self.executor.stop(grace=self.config.workers.shutdown_grace_seconds)

    def _complete_once(self) -> Callable[[], object]:
        assembler = Assembler(self.config, Index(self.config.node.index_path))

        def tick() -> Wake | None:
            due = assembler.tick()
            return None if due is None else Wake(due)
        return tick

    def _dispatch_once(self) -> Callable[[], object]:
        return Dispatcher(self.config, Index(self.config.node.index_path)).tick

    def _backfill_once(self) -> Callable[[], object]:
        return Backfiller(self.config, Index(self.config.node.index_path), self._receiving).tick

    def _receiving(self) -> bool:
        """Whether the receivers listen, so that a C-MOVE's C-STOREs find them (they start after
        the node's threads); asked until the first yes."""
        if not self._listening:
            node = self.config.node
            host = "127.0.0.1" if node.host in ("", "0.0.0.0") else "::1" if node.host == "::" else node.host
            try:
                socket.create_connection((host, node.port), timeout=1.0).close()
                self._listening = True
            except OSError:
                pass
        return self._listening

    def _retention_once(self) -> Callable[[], object]:
        return Retention(self.config.retention, Index(self.config.node.index_path),
                         Spool(self.config.node.spool)).tick

    def _notify_threads(self) -> list[threading.Thread]:
        """With [[notify]] targets: the watch of lasting conditions, and a sender per target, so
        that a target that hangs holds up no other."""
        self.index.keep_cursors([target.name for target in self.config.notify])
        if not self.config.notify:
            return []
        for target in self.config.notify:  # before the first event: none is missed at a first start
            self.index.open_cursor(target.name)
        threads = [threading.Thread(target=self._loop, args=(self._watch_once, NOTIFY_INTERVAL),
                                    name=f"{NOTIFY_THREAD}watch", daemon=True)]
        for target in self.config.notify:
            threads.append(threading.Thread(target=self._loop, args=(partial(self._notify_once, target),
                                                                     NOTIFY_INTERVAL),
                                            name=f"{NOTIFY_THREAD}{target.name}", daemon=True))
        return threads

    def _watch_once(self) -> Callable[[], object]:
        return Watcher(self.config, Index(self.config.node.index_path)).tick

    def _notify_once(self, target: NotifyTarget) -> Callable[[], object]:
        return Notifier(self.config, Index(self.config.node.index_path), target, self._stop.is_set).tick

    # ---- supervision -----------------------------------------------------------------------

    def supervise(self) -> None:
        """Run until SIGTERM/SIGINT, restarting dead children; then stop."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        while not self._stop.wait(SUPERVISOR_INTERVAL):
            self.supervise_once()
        self.stop()

    def supervise_once(self) -> None:
        """One round: a child whose restart fails is logged and met again next round."""
        for child in self._children:
            if child.process is not None and not child.process.is_alive():
                isolated("supervisor", f"{child.role} {child.process.pid}",
                         lambda: self._restart(child), lambda _reason: None)

    def _restart(self, child: _Child) -> None:
        assert child.process is not None
        pid, code = child.process.pid, child.process.exitcode
        logs.error("node.child_died", role=child.role, pid=pid, exit_code=code)
        if pid is not None and child.role in RECEIVING_ROLES:  # None: it never started
            recover_receiver(Spool(self.config.node.spool), self.index, pid)
        elif pid is not None:
            self.index.close_associations_of([pid])
        self._spawn(child)

    # ---- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop receiving first, let running jobs finish within the grace time, hand back the
        rest (queued again for the next start), stop the loops, then deliver the results of
        the jobs that finished: a result made during the grace is not left for the next start."""
        logs.info("node.stopping")
        self._stop.set()
        for bell in self._bells.values():  # the loops' sleeps end now
            bell.ring()
        self._terminate([c for c in self._children if c.role in RECEIVING_ROLES], grace=10.0)
        self._stop_executor()
        requeued = self.index.requeue_running_jobs(None)  # every attempt has ended by now
        for thread in self._threads:
            # a sender in a hanging webhook's POST holds nothing: its message is sent again next start
            thread.join(timeout=1 if thread.name.startswith(NOTIFY_THREAD) else 30)
        delivered = self._deliver_due()
        reindex_open_associations(Spool(self.config.node.spool), self.index)  # of a receiver killed at the grace's end
        self.index.close_associations_of(None)
        if self._monitor is not None:
            self._monitor.stop()
        if self._web is not None:
            self._web.stop()
        for bell in self._bells.values():
            bell.close()
        logs.info("node.stopped", jobs_handed_back=requeued, deliveries_sent_at_stop=delivered)

    def _stop_executor(self) -> None:
        """In the scheduler's thread when it runs (``_run_scheduler``), else here."""
        self._receivers_stopped.set()
        if self._scheduler_thread is not None and self._scheduler_thread.is_alive():
            self._scheduler_thread.join()
        else:
            self.executor.stop(grace=self.config.workers.shutdown_grace_seconds)

    def _deliver_due(self) -> int:
        """One last pass of the dispatcher over every due delivery. A destination that fails
        now keeps its delivery retrying, and the next start sends it."""
        dispatcher = Dispatcher(self.config, self.index)
        sent = 0
        try:
            while (batch := dispatcher.tick()) > 0:
                sent += batch
        except Exception as error:
            logs.error("node.stop_delivery_failed", reason=f"{type(error).__name__}: {error}")
        return sent

    @staticmethod
    def _terminate(children: list[_Child], grace: float) -> None:
        alive = [c.process for c in children if c.process is not None and c.process.is_alive()]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in alive:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def serve(config_path: Path) -> None:
    config = load_config(config_path)
    check_bundles(config, config_path)
    lock_spool(config.node)  # held until this process ends: one spool and index, one node
    node = Node(config, config_path)
    node.start()
    node.supervise()
