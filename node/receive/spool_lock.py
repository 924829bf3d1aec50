"""One spool and index belong to one running node.

Two nodes on one spool would both claim its jobs and both deliver them. The port check does not
stop that (a second node may listen on another port), so ``radnode serve`` takes an exclusive
``flock`` on a lock file in the spool (and beside the index, where the index lives elsewhere)
and holds it for the node's life; a second ``serve`` is refused naming the holder. Admin
commands take no lock: they read and act beside the running node through the index.

``flock`` rather than a POSIX lock: a POSIX lock belongs to the process and goes when any of
its descriptors of the file is closed, while a ``flock`` belongs to this one open descriptor,
so nothing else the node opens or closes can drop it. The kernel releases it when the process
dies, so a node killed with SIGKILL leaves no stale lock behind.
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
