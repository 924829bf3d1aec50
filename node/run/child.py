"""A worker or driver process's side of its link to the executor: dying with the supervisor,
stopping on SIGTERM between attempts, the queue of attempts submitted to it, and the heartbeat
that shows the attempt it holds is alive. Shared by the local worker and the Ray driver, which
the executor starts and watches alike.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from node import logs
from node.index.store import Index, Job

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Children must not outlive a supervisor killed with SIGKILL (they would hold the port,
    or run jobs the next start runs again)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class StopOnSigterm:
    """How a worker or driver process stops: SIGTERM lets the attempt in hand finish (the loop
    asks ``stopping`` between attempts; the supervisor decides how long it may take), and SIGINT,
    a terminal's Ctrl-C reaching the whole process group, is the supervisor's to handle."""

    def __init__(self) -> None:
        self.stopping = False
        self.install()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def install(self) -> None:
        """Make SIGTERM set the flag, again after a library installed its own handler (Ray's
        would kill the attempt in hand)."""
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True


#: How often a worker or driver process says in the index that it still holds its attempt.
HEARTBEAT_SECONDS = 2.0
#: A child silent this long (no heartbeat of its attempt, no turn of its idle loop) is wedged
#: or dead: it is killed and replaced, and the attempt it held goes back to the queue. Longer
#: than any pause of a live process (a spawn under load, a Ray connect of about 20 s).
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class ChildLink:
    """What the executor shares with one worker or driver process, and with no other: its own
    queue of submitted attempts (a child that dies inside ``get``, holding the queue's lock,
    wedges only this queue, which its successor does not inherit), and a lock-free stamp of
    when its idle loop last turned (``ready`` once it has loaded and waits for work)."""

    attempts: multiprocessing.Queue[tuple[int, int]]
    seen: ctypes.c_double


class Heartbeat:
    """Beats the attempt this process holds into the index (and the link's stamp) every
    ``HEARTBEAT_SECONDS``, from a thread with its own connection: a pipeline that computes for
    an hour still shows its process alive, and a process that died shows nothing."""

    def __init__(self, index_path: Path, link: ChildLink) -> None:
        self.held: tuple[int, int] | None = None
        self._index_path = index_path
        self._link = link
        threading.Thread(target=self._run, name="radnode-heartbeat", daemon=True).start()

    def _run(self) -> None:
        index = Index(self._index_path)
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            held = self.held
            try:
                if held is not None and index.beat(*held, os.getpid()):
                    self._link.seen.value = time.time()
            except Exception as error:  # a busy index this once; the next beat may pass
                logs.warning("job.heartbeat_failed", job=held[0] if held else None, reason=f"{type(error).__name__}")


def held_attempts(link: ChildLink, index: Index, stop: StopOnSigterm, poll_seconds: float,
                  idle: Callable[[], None] = lambda: None) -> Iterator[Job]:
    """The attempts the executor submits to this worker or driver process, each once this
    process holds it (its heartbeat beating meanwhile), until SIGTERM; one the node ended or
    handed back while it waited in the queue is passed over. ``idle`` runs at each turn of the
    loop without work."""
    heartbeat = Heartbeat(index.path, link)
    while not stop.stopping:
        link.seen.value = time.time()
        try:
            job_id, attempt = link.attempts.get(timeout=poll_seconds)
        except queue.Empty:
            idle()
            continue
        if not index.start_attempt(job_id, attempt, os.getpid()):
            continue
        job = index.job(job_id)
        if job is not None:
            heartbeat.held = (job_id, attempt)
            yield job
            heartbeat.held = None
