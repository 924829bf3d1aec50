"""How many threads one test process may compute with: its share of the machine's cores.

Why: the suite runs in pytest-xdist workers (pyproject's addopts), and torch, OpenMP and BLAS each
start one thread per core in every process. Two workers each computing with two threads on two
cores lost a quarter of their time to oversubscription (measured: the same tumor inference in both
took 35 s with two threads each, 28 s with one). ``share_cores`` runs before anything imports
torch (tests/conftest.py), and the node processes a test starts inherit the setting.
"""

from __future__ import annotations

import os

#: Threads per test process: the cores divided among pytest-xdist's workers (all of them in one
#: process, ``-n 0``).
CPU_THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def share_cores() -> None:
    """In a pytest-xdist worker, caps OpenMP's and the BLAS libraries' threads at ``CPU_THREADS``
    in this process and its children, unless the caller has set them. Nothing in the controlling
    process: the workers inherit its environment, and a cap set there would hide the worker count."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(CPU_THREADS))
