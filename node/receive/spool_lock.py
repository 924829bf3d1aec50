"""One spool and index belong to one running node.

``radnode serve`` holds an exclusive ``flock`` on a lock file in the spool (and beside the index,
where that lives elsewhere) for its life, so a second ``serve`` on the same spool is refused naming
the holder; admin commands take no lock. A ``flock`` belongs to its open descriptor (a POSIX lock
goes when any descriptor of the file closes) and the kernel drops it when the process dies.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from node.config import ConfigError, NodeSettings

LOCK_NAME = "radnode.lock"


class SpoolLock:
    """The held lock files; released when the process ends (or by ``release``)."""

    def __init__(self, descriptors: list[int]) -> None:
        self._descriptors = descriptors

    def release(self) -> None:
        for fd in self._descriptors:
            os.close(fd)
        self._descriptors = []


def lock_spool(node: NodeSettings) -> SpoolLock:
    """Take the node's lock on its spool (and its index's folder), or raise ``ConfigError``
    naming the node that holds it."""
    folders = [node.spool] + ([node.index_path.parent] if node.index_path.parent != node.spool else [])
    held: list[int] = []
    try:
        for folder, key in zip(folders, ("node.spool", "node.index")):
            held.append(_take(folder / LOCK_NAME, key))
    except BaseException:
        SpoolLock(held).release()
        raise
    return SpoolLock(held)


def _take(path: Path, key: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another radnode"
        os.close(fd)
        raise ConfigError(
            f"{key}: {path.parent} is in use by {holder}; one spool and index belong to one node: "
            f"stop that node first, or give this one its own [node] spool") from None
    os.ftruncate(fd, 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.pwrite(fd, f"radnode pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
    return fd
