"""Writer processes (``pipelines.processes``): how many a machine gets, and that they end with the
worker that started them. That they write what the threads write: tests/writers/test_writers.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import processes
from pipelines.shared_array import SharedArray, shared_copy

REPO = Path(__file__).resolve().parents[2]
#: A worker process that starts the writers, says their process IDs and then hangs, as a wedged job would.
WEDGED_WORKER = """
import os, sys, time
from pipelines import processes
if __name__ == "__main__":
    pool = processes.pool(2)
    pids = {pool.submit(os.getpid).result() for _ in range(4)}
    print(*pids, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_writers_of_a_killed_worker_are_gone_within_seconds_instead_of_living_on(tmp_path):
    script = tmp_path / "wedged_worker.py"
    script.write_text(WEDGED_WORKER)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert worker.stdout is not None
    writers = [int(pid) for pid in worker.stdout.readline().split()]
    assert writers and all(_alive(pid) for pid in writers)

    worker.kill()  # as the node's executor kills a wedged worker
    worker.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in writers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in writers), "writer processes outlived their worker"


@pytest.mark.parametrize(("cores", "cpu_max", "expected"), [
    (2, "max 100000", 0), (4, "max 100000", 0), (8, "max 100000", 4), (16, "max 100000", 8), (64, "max 100000", 8),
    (64, "200000 100000", 0),  # a pod limited to 2 CPUs on a 64-core host
    (64, "1200000 100000", 6),
])
def test_a_small_node_writes_with_threads_and_a_gpu_server_with_half_its_cores(monkeypatch, tmp_path, cores,
                                                                               cpu_max, expected):
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(processes, "CGROUP_V2_MAX", tmp_path / "cpu.max")
    assert processes.default_processes() == expected


def test_a_cgroup_v1_quota_counts_and_no_readable_quota_leaves_the_affinity(monkeypatch, tmp_path):
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda _pid: set(range(32)))
    monkeypatch.setattr(processes, "CGROUP_V2_MAX", tmp_path / "absent")
    monkeypatch.setattr(processes, "CGROUP_V1", tmp_path)
    assert processes.usable_cores() == 32
    (tmp_path / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert processes.usable_cores() == 3
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    assert processes.usable_cores() == 32


def _memory_files() -> list[str]:
    """This process's open anonymous memory files, as /proc names them."""
    names = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            names.append(os.readlink(entry))
        except OSError:
            continue
    return [name for name in names if name.startswith("/memfd:")]


def test_writer_processes_read_the_jobs_array_in_place_and_nothing_of_it_outlives_the_block():
    """A derived series' values reach the writers as one shared copy, not pickled per chunk
    (``pipelines.shared_array``); the copy is gone with the block, so a long-running worker
    does not accumulate a series' worth of memory per job."""
    values = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    before = _memory_files()
    with shared_copy(values) as shared:
        assert len(_memory_files()) == len(before) + 1
        read = processes.pool(2).submit(_slice_sum, shared, 2).result()
    assert read == float(values[2].sum())
    assert processes.maps_shared_arrays(2)
    assert _memory_files() == before


def _slice_sum(shared: SharedArray, k: int) -> float:
    return float(shared.open()[k].sum())
