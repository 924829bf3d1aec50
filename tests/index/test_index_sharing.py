"""One index file, many processes: the node's main process holds several ``Index`` connections
while admin commands open and close their own beside it. SQLite keeps the WAL alive only while
every live connection holds its shared lock on the database file; a process that drops those
locks (POSIX locks go when any descriptor of the file is closed) lets the last admin command
checkpoint and unlink the WAL under the node, whose later commits then go into a deleted file."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.index.store import Index
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import storescu

REPO = Path(__file__).resolve().parents[2]


def _in_another_process(code: str, index_path: Path) -> str:
    """Run ``code`` with ``index`` bound to a fresh ``Index`` on the file, as an admin command
    would, and return what it printed."""
    script = f"from pathlib import Path\nfrom node.index.store import Index\nindex = Index(Path({str(index_path)!r}))\n{code}"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


def _deleted_index_files_held(pid: int, index_path: Path) -> list[str]:
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(str(index_path)) and target.endswith("(deleted)"):
            held.append(target)
    return held


def test_a_commit_after_an_admin_command_closed_its_connection_is_seen_by_every_other_process(tmp_path):
    index_path = tmp_path / "index.sqlite"
    first = Index(index_path)
    second = Index(index_path)  # the main process builds several: completion, scheduler, monitoring, web
    first.set_node_value("before", "1")

    _in_another_process("index.set_node_value('admin', '1'); index.close()", index_path)
    first.set_node_value("after", "1")
    second.set_node_value("after-second", "1")

    seen = _in_another_process(
        "print(','.join(k for k in ('before', 'admin', 'after', 'after-second') if index.node_value(k)))",
        index_path)
    assert seen == "before,admin,after,after-second", f"another process sees only {seen!r}"
    assert _deleted_index_files_held(os.getpid(), index_path) == []
    assert (index_path.stat().st_mode & 0o777) == 0o600, "the index stays owner-only"
    first.close()
    second.close()


def _open_when_all_are_ready(path: Path, ready: multiprocessing.synchronize.Barrier,
                             answers: multiprocessing.queues.Queue[str]) -> None:
    ready.wait()
    try:
        Index(path).close()
        answers.put("opened")
    except Exception as error:  # what an administrator's command would have printed as its crash
        answers.put(f"{type(error).__name__}: {error}")


@pytest.mark.slow
def test_a_new_index_opened_by_four_processes_at_once_opens_in_every_one(tmp_path):
    """The node's processes and an administrator's command opening a new index at the same
    moment: before the schema changes were made under the write lock, 13 of 160 such opens
    failed ("database is locked" switching to WAL, "duplicate column name" adding a column)."""
    context = multiprocessing.get_context("fork")
    failures = []
    for attempt in range(20):
        ready, answers = context.Barrier(4), context.Queue()
        openers = [context.Process(target=_open_when_all_are_ready, args=(tmp_path / f"{attempt}" / "index.sqlite",
                                                                          ready, answers)) for _ in range(4)]
        for opener in openers:
            opener.start()
        failures += [answer for answer in (answers.get(timeout=60) for _ in openers) if answer != "opened"]
        for opener in openers:
            opener.join(timeout=60)
    assert not failures, f"{len(failures)} of 80 opens failed: {failures[:3]}"


def test_an_existing_index_of_another_mode_is_made_owner_only_with_its_wal(tmp_path):
    index_path = tmp_path / "index.sqlite"
    Index(index_path).close()
    os.chmod(index_path, 0o644)
    index = Index(index_path)
    index.set_node_value("k", "v")
    wal = index_path.with_name("index.sqlite-wal")
    assert (index_path.stat().st_mode & 0o777) == 0o600
    assert wal.exists() and (wal.stat().st_mode & 0o777) == 0o600
    index.close()


def _node_processes(leader: int) -> list[int]:
    """The supervisor and every process of its group (receivers, workers)."""
    group = os.getpgid(leader)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == group:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def test_a_series_received_after_admin_commands_is_routed_and_seen_by_them(tmp_path, orthanc, data_dir):
    config = node_config(tmp_path, destinations=[orthanc.destination()], routes=[threshold_route()],
                         pipelines=threshold_pipeline())
    index_path = Path(config["node"]["spool"]) / "index.sqlite"
    node = NodeProcess(config, tmp_path).launch()
    # an administrator's commands while the node starts (before its receivers and workers hold
    # the index open): each opens the index, reads or writes, and closes it
    admin_loop = subprocess.Popen([sys.executable, "-c", _ADMIN_LOOP, str(index_path), "15"], cwd=REPO)
    try:
        node.wait_started()
        assert node.cli("retry", "--job", "1").returncode in (0, 1)
        for command in (("jobs",), ("deliveries",), ("studies", "--all"), ("problems",)):
            assert node.cli(*command).returncode == 0, command
        assert admin_loop.wait(timeout=60) == 0
        assert node.proc is not None
        for pid in _node_processes(node.proc.pid):
            assert _deleted_index_files_held(pid, index_path) == [], f"process {pid} holds a deleted index file"

        files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:8]
        assert storescu(node.port, files).returncode == 0
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

        def delivered_as_another_process_sees_it() -> bool:
            listing = node.cli("deliveries", "--state", "sent")
            return listing.returncode == 0 and "pacs" in listing.stdout

        wait_until(delivered_as_another_process_sees_it, 120, what="the result's delivery, seen by an admin command")
        assert "done" in node.cli("jobs").stdout
        fresh = Index(index_path)
        row = fresh.series(series_uid)
        fresh.close()
        assert row is not None and row.state == "routed", "a third process reads the series as routed"
    finally:
        admin_loop.kill()
        node.stop()


#: Opens and closes the index every 50 ms for argv[2] seconds, as admin commands would.
_ADMIN_LOOP = """
import sys, time
from pathlib import Path
from node.index.store import Index
path, until = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    if path.exists():
        Index(path).close()
    time.sleep(0.05)
"""
