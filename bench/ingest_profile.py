"""Where one receiver process spends its time while dcmtk storescu sends it a CT series.

Starts ``radnode serve`` with one receiver, sends the series once to warm up, then samples the
receiver with py-spy (``pip install py-spy``) while the series is sent again over one
association, and prints the functions with the most samples of the thread holding the GIL (the
Python work; waits for the disk, the socket or the GIL are left out): in their own code (self)
and including what they call (total). The receiver's CPU time per image is measured first, on
a send that is not sampled.

    python3 bench/ingest_profile.py [--slices 100] [--top 25] [--rate 250]

``--baseline DIR`` (another checkout, e.g. a worktree of main) compares instead of sampling:
one receiver of each code, each sent ``--sends`` new series in turn (the order alternating, so
that a shared machine's load falls on both alike), and prints each one's CPU time per image
(median, user + system), its images/s and the ratio.

    python3 bench/ingest_profile.py --baseline ../main [--slices 300] [--sends 5]

``--syscalls`` counts the receiver's system calls per image instead (``strace -c -f`` on its
process while the series is sent; the counts, unlike CPU times, do not depend on the load).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ct_series import repeated_series  # noqa: E402
from tests.support.harness import NodeProcess, node_config  # noqa: E402
from tests.support.peers import storescu  # noqa: E402


def receiver_pid(node: NodeProcess) -> int:
    """The receiver process that took the last association (the index records its pid)."""
    index = node.index()
    row = index._db.execute("SELECT receiver_pid FROM associations ORDER BY opened_at DESC LIMIT 1").fetchone()
    index.close()
    return int(row[0])


#: Leaf frames that are a thread waiting (py-spy counts a select with a timeout as busy).
_WAITING = frozenset({"_PollLikeSelector.select", "Condition.wait", "_wait_for_work", "_wait_for_data", "_wait_for_message",
                      "select", "wait", "_wait"})


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def top_functions(raw: Path, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(self, total, samples) from py-spy's raw (collapsed stacks) output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")[1:]]  # the first frame is the thread
        if not frames or frames[-1].split(" (")[0] in _WAITING:
            continue
        weight = int(n)
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    return own.most_common(count), total.most_common(count), samples


def compare(baseline: Path, slices: int, sends: int) -> None:
    """CPU per image and images/s of this checkout's receiver and ``baseline``'s, in turns."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        codes = {"baseline": baseline.resolve(), "this": REPO}
        nodes: dict[str, NodeProcess] = {}
        try:
            for name, code in codes.items():
                (tmp / name).mkdir()
                config = node_config(tmp / name, node={"receivers": 1},
                                     completion={"settle_seconds": 3600, "quiet_seconds": 3600})
                nodes[name] = NodeProcess(config, tmp / name, code).start()
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in nodes}
            for name, node in nodes.items():
                storescu(node.port, repeated_series(tmp / f"warm-{name}", 10))
            pids = {name: receiver_pid(node) for name, node in nodes.items()}
            for turn in range(sends):
                for name in list(nodes) if turn % 2 == 0 else list(nodes)[::-1]:
                    paths = repeated_series(tmp / f"{name}-{turn}", slices)
                    before, clock = cpu_seconds(pids[name]), time.perf_counter()
                    sent = storescu(nodes[name].port, paths)
                    seconds = time.perf_counter() - clock
                    assert sent.returncode == 0, sent.stderr
                    user, system = (after - first for after, first in zip(cpu_seconds(pids[name]), before))
                    runs[name].append((user / slices * 1000, system / slices * 1000, slices / seconds))
                    shutil.rmtree(paths[0].parent)
        finally:
            for node in nodes.values():
                node.stop()
    medians = {name: [statistics.median(run[i] for run in values) for i in range(3)] for name, values in runs.items()}
    for name, (user, system, rate) in medians.items():
        print(f"{name} ({codes[name]}): receiver CPU per image {user + system:.2f} ms (user {user:.2f} + "
              f"system {system:.2f}), {rate:.0f} img/s; medians of {sends} sends of {slices} images; each send "
              + " ".join(f"{u + s:.2f}" for u, s, _ in runs[name]))
    total = {name: values[0] + values[1] for name, values in medians.items()}
    print(f"this/baseline: CPU per image {total['this'] / total['baseline']:.2f}x, "
          f"images/s {medians['this'][2] / medians['baseline'][2]:.2f}x; load average {os.getloadavg()[0]:.1f}")


def syscalls(slices: int) -> None:
    """The receiver's system calls per image, by call, while storescu sends it a series."""
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace not found: apt-get install strace")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = repeated_series(tmp / "series", slices)
        (tmp / "radnode").mkdir()
        node = NodeProcess(node_config(tmp / "radnode", node={"receivers": 1},
                                       completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                           tmp / "radnode").start()
        try:
            storescu(node.port, repeated_series(tmp / "warm", 10))
            counts = tmp / "strace.txt"
            tracer = subprocess.Popen([strace, "-c", "-f", "-o", str(counts), "-p", str(receiver_pid(node))],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            sent = storescu(node.port, paths)
            assert sent.returncode == 0, sent.stderr
            time.sleep(0.3)
            tracer.send_signal(2)
            tracer.wait(timeout=60)
        finally:
            node.stop()
        rows = [line.split() for line in counts.read_text().splitlines()[2:] if line and not line.startswith("-")]
    calls = {row[-1]: int(row[3]) for row in rows if len(row) >= 5 and row[3].isdigit()}
    total = calls.pop("total", sum(calls.values()))
    print(f"receiver system calls per image: {total / slices:.1f} ({slices} images)")
    for name, count in sorted(calls.items(), key=lambda item: -item[1]):
        if count >= slices / 2:
            print(f"  {count / slices:6.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--baseline", type=Path, help="another checkout: compare its receiver's CPU per image")
    parser.add_argument("--sends", type=int, default=5, help="series sent to each receiver with --baseline")
    parser.add_argument("--syscalls", action="store_true", help="count the receiver's system calls per image")
    args = parser.parse_args()
    if args.syscalls:
        syscalls(args.slices)
        return
    if args.baseline is not None:
        compare(args.baseline, args.slices, args.sends)
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: python3 -m pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = repeated_series(tmp / "series", args.slices)
        (tmp / "radnode").mkdir()
        node = NodeProcess(node_config(tmp / "radnode", node={"receivers": 1},
                                       completion={"settle_seconds": 3600, "quiet_seconds": 3600}),
                           tmp / "radnode").start()
        try:
            storescu(node.port, paths[:10])
            pid = receiver_pid(node)
            cpu_before, clock = cpu_seconds(pid), time.perf_counter()
            unsampled = storescu(node.port, paths)
            unsampled_seconds = time.perf_counter() - clock
            cpu_after = cpu_seconds(pid)
            user, system = (after - before for after, before in zip(cpu_after, cpu_before))
            assert unsampled.returncode == 0, unsampled.stderr
            raw = tmp / "profile.txt"
            spy_proc = subprocess.Popen([spy, "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking", "--gil",
                                         "--output", str(raw), "--pid", str(pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            started = time.perf_counter()
            sent = storescu(node.port, paths)
            seconds = time.perf_counter() - started
            assert sent.returncode == 0, sent.stderr
            time.sleep(0.2)
            spy_proc.send_signal(2)
            spy_proc.wait(timeout=60)
        finally:
            node.stop()
        own, total, samples = top_functions(raw, args.top)
    print(f"receiver CPU per image, unsampled: user {user / args.slices * 1000:.2f} ms, "
          f"system {system / args.slices * 1000:.2f} ms "
          f"({args.slices / unsampled_seconds:.0f} img/s)")
    print(f"{args.slices} images in {seconds:.2f} s ({args.slices / seconds:.0f} img/s while sampled, on a second send), "
          f"{samples} samples holding the GIL")
    print("self:")
    for name, n in own:
        print(f"  {n / samples:6.1%}  {name}")
    print("total:")
    for name, n in total:
        print(f"  {n / samples:6.1%}  {name}")


if __name__ == "__main__":
    main()
