"""An array the writer processes read in place instead of receiving it pickled.

Pickling a 300-slice series' pixels to the writer processes was most of what the job's own process
did while they wrote (docs/writers.md). The array is copied once into an anonymous memory file
(``memfd_create``: not a file in /dev/shm, whose size containers often cap at 64 MB) that each
writer maps read-only through ``/proc/<pid>/fd``. The memory goes when the job's process closes
the file and drops its own map, also when it is killed: nothing is left behind to clean up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SharedArray:
    """Where another process of this user finds the array, and how to read it."""

    path: str
    shape: tuple[int, ...]
    dtype: str

    def open(self) -> np.ndarray:
        """The array, mapped read-only (only the pages read are touched)."""
        return np.memmap(self.path, dtype=np.dtype(self.dtype), mode="r", shape=self.shape)


@contextmanager
def shared_copy(array: np.ndarray) -> Iterator[SharedArray]:
    """A copy of ``array`` that other processes can map while the block runs."""
    descriptor = os.memfd_create("radnode-shared-array", os.MFD_CLOEXEC)
    try:
        os.ftruncate(descriptor, array.nbytes)
        shared = SharedArray(f"/proc/{os.getpid()}/fd/{descriptor}", tuple(array.shape), array.dtype.str)
        copy = np.memmap(shared.path, dtype=array.dtype, mode="r+", shape=array.shape)
        copy[...] = array
        del copy  # the pages stay in the memory file; the readers map them themselves
        yield shared
    finally:
        os.close(descriptor)
