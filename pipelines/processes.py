"""Worker processes for the per-slice DICOM encoding of a large series, where cores are spare.

pydicom builds and encodes a file element by element in Python, holding the GIL, so writer threads
overlap only the disk: on a 16-core GPU server the 300 files of a denoised series took most of the
job while one core worked (README, "On a GPU"). A machine of few cores keeps threads, because its
other cores serve the receiver and the other workers.

The pool is started once per process and kept (a worker process runs many jobs). Its processes
come from a fork server that has imported only the writers: none inherits a model, a CUDA context
or a lock another thread held at the fork.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipelines.shared_array import SharedArray, shared_copy

#: Below this many cores, writing stays in threads of the job's own process.
MIN_CORES = 8
#: At most this many processes, and at most half the cores: the GPU worker and the receiver keep theirs.
MAX_PROCESSES = 8
#: How often a writer looks whether the process it writes for still lives.
WATCH_SECONDS = 1.0
#: Where the container's CPU quota is read (cgroup v2, else v1).
CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
#: What the fork server imports once, so that each process starts ready to write.
PRELOAD = ["pipelines.writers.derived"]

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_size = 0
_maps_shared: bool | None = None


def default_processes() -> int:
    """How many processes write a series on this machine; 0 means threads (few cores)."""
    cores = usable_cores()
    return min(MAX_PROCESSES, cores // 2) if cores >= MIN_CORES else 0


def usable_cores() -> int:
    """The cores this process may run on, and no more than its container's CPU quota allows (a
    pod limited to 2 CPUs on a 64-core host sees all 64 in its affinity)."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))


def _cgroup_quota() -> float | None:
    """CPUs of the cgroup's CFS quota (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None
    when unlimited or unreadable."""
    try:
        quota, period = CGROUP_V2_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (CGROUP_V1 / "cpu.cfs_quota_us").read_text(), (CGROUP_V1 / "cpu.cfs_period_us").read_text()
        except OSError:
            return None
    try:
        limit, length = float(quota), float(period)
    except ValueError:  # "max": no quota
        return None
    return limit / length if limit > 0 and length > 0 else None


def pool(processes: int) -> ProcessPoolExecutor:
    """This process's pool of ``processes`` writer processes, started on first use and kept."""
    global _pool, _size
    with _lock:
        if _pool is None or _size != processes:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_die_with,
                                        initargs=(os.getpid(),))
            _size = processes
        return _pool


def maps_shared_arrays(processes: int) -> bool:
    """Whether the pool's processes can map this process's shared arrays (``shared_array``): a
    /proc mounted to hide other processes forbids it. Asked of the pool once."""
    global _maps_shared
    if _maps_shared is None:
        probe = np.arange(4, dtype=np.int16)
        with shared_copy(probe) as shared:
            try:
                _maps_shared = pool(processes).submit(_first, shared).result() == 0
            except OSError:
                _maps_shared = False
    return _maps_shared


def _first(shared: SharedArray) -> int:
    return int(shared.open()[0])


def discard() -> None:
    """Forget a pool whose process died, so that the next job starts a whole one."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def _die_with(worker: int) -> None:
    """End this writer once ``worker`` (the job's process) is gone. The node kills a wedged worker;
    its writers hold the fork server open, so nothing else would ever end them."""
    def watch() -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=watch, name="radnode-writer-watch", daemon=True).start()
