"""The node's processes as /proc shows them: its receivers and workers, their memory and threads.

The receive tests bound what one abusive peer can cost the node with these."""

from __future__ import annotations

import time
from pathlib import Path


def tree_pids(root: int) -> set[int]:
    """A process and all its descendants (the node's receivers and workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        pids.update(children)
        frontier.extend(children)
    return pids


def status_value(pid: int, field: str) -> int:
    """A numeric /proc/PID/status field (kB for VmRSS and VmHWM); 0 for a process that is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), 0)


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    return sum(status_value(pid, "VmRSS") for pid in tree_pids(root)) * 1024


def tree_threads(root: int) -> int:
    return sum(status_value(pid, "Threads") for pid in tree_pids(root))


def threads_settled(root: int, baseline: int, seconds: float) -> int:
    """The node's thread count once it is back to ``baseline``, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (threads := tree_threads(root)) > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    return threads


class Memory:
    """The node's resident memory at a start, and each process's peak since then."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.start = {pid: status_value(pid, "VmRSS") * 1024 for pid in tree_pids(root)}
        for pid in self.start:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now

    def peak_growth(self) -> dict[int, int]:
        """Bytes each process's peak rose above its resident size at the start."""
        return {pid: status_value(pid, "VmHWM") * 1024 - rss for pid, rss in self.start.items()}

    def total_growth(self) -> int:
        return tree_rss(self.root) - sum(self.start.values())
