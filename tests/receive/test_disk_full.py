"""The spool's disk really full (a small tmpfs): the node answers 0xA700, leaves no partial or
unindexed file behind, and stores again as soon as space returns, with no restart."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from node.receive.spool import part10_header
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import storescu
from tests.support.probes import ct_files, send_raw

pytestmark = [pytest.mark.slow]

BLOCK = 4096


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_leaving(filler: Path, free: int) -> None:
    """Fill the file system of ``filler`` to ENOSPC, then give back exactly ``free`` bytes."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (b"\xff" * (1 << 20), b"\xff" * BLOCK):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    size = filler.stat().st_size // BLOCK * BLOCK
    os.truncate(filler, size - free)


def stored_size(ds: pydicom.Dataset) -> int:
    """What the receiver writes for this dataset sent by ``send_raw`` (implicit VR)."""
    header = part10_header(CTImageStorage, ds.SOPInstanceUID, "1.2.840.10008.1.2", "HOSTILE")
    return len(header) + len(encode(ds, True, True))


def test_full_spool_disk_answers_out_of_resources_leaves_nothing_and_recovers(small_disk, tmp_path, data_dir):
    config = node_config(tmp_path, node={"spool": str(small_disk / "spool"), "min_free_disk_mb": 0})
    node = NodeProcess(config, tmp_path).start()
    spool = small_disk / "spool"
    filler = small_disk / "filler"
    try:
        first, second, third = (pydicom.dcmread(p) for p in ct_files(data_dir, 3))
        assert send_raw(node.port, CTImageStorage, first, first.SOPInstanceUID) == 0x0000
        index = node.index()
        wait_until(lambda: [s for s in index.all_series() if s.state == "routed"], 30, what="first series routed")

        fill_leaving(filler, 128 * 1024)  # less than one CT image (~0.5 MB)
        assert send_raw(node.port, CTImageStorage, second, second.SOPInstanceUID) == 0xA700
        assert list((spool / "tmp").iterdir()) == [], "a partial file was left on the full disk"
        assert os.statvfs(spool).f_bavail * os.statvfs(spool).f_frsize == 128 * 1024

        room = -(-stored_size(second) // BLOCK) * BLOCK  # the file fits, the index row does not
        os.truncate(filler, 0)
        fill_leaving(filler, room)
        assert send_raw(node.port, CTImageStorage, second, second.SOPInstanceUID) == 0xA700
        assert index.instance(second.SOPInstanceUID) is None
        assert not list((spool / "instances").rglob(f"{second.SOPInstanceUID}.dcm")), \
            "an unindexed file was left in the spool"
        assert "\"index: database or disk is full\"" in node.logs()

        os.truncate(filler, 0)
        for ds in (second, third):
            assert send_raw(node.port, CTImageStorage, ds, ds.SOPInstanceUID) == 0x0000
        assert index.count_instances() == 3
    finally:
        node.stop()


def test_job_whose_results_meet_a_full_disk_runs_again_and_is_delivered_once(small_disk, tmp_path, data_dir, orthanc):
    destinations = [orthanc.destination()]
    config = node_config(tmp_path, node={"spool": str(small_disk / "spool"), "min_free_disk_mb": 0},
                         destinations=destinations, routes=[threshold_route()],
                         pipelines=threshold_pipeline(sleep_seconds=3))
    node = NodeProcess(config, tmp_path).start()
    filler = small_disk / "filler"
    try:
        files = ct_files(data_dir, 5)
        assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: index.jobs("running"), 60, what="job running")
        fill_leaving(filler, 0)  # while the pipeline sleeps: its SEG and the index meet ENOSPC
        deadline = time.monotonic() + 30  # the pipeline sleeps 3 s, then writes into the full disk
        while '"job.disk_full"' not in node.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.truncate(filler, 0)
        (job,) = wait_until(lambda: index.jobs("done"), 60, what="job done after space returned")
        wait_until(lambda: index.deliveries("sent"), 60, what="delivery")
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        sop_uids = [r.sop_uid for r in index.results(job.id)]
        in_pacs = orthanc.wait_for(lambda pacs: [i for i in pacs.instances_of_study(study_uid)
                                                 if i["MainDicomTags"].get("SOPInstanceUID") in sop_uids])
        assert len(in_pacs) == len(sop_uids) == 1
        assert [j.state for j in index.jobs()] == ["done"]
    finally:
        if filler.exists():
            os.truncate(filler, 0)
        node.stop()


def test_delivery_whose_record_meets_a_full_disk_stays_due_and_reaches_the_pacs_once(
        small_disk, tmp_path, data_dir, orthanc):
    """The C-STORE goes out but the index cannot record it (SQLite: database or disk is full):
    the delivery stays due, neither lost nor dead, and is sent again once space returns; the
    PACS keeps one copy of the result."""
    import sqlite3

    from node.config import parse_config
    from node.deliver.dispatcher import Dispatcher
    from node.index.store import Index
    from node.receive.spool import Spool
    from tests.run.test_isolation import finished_job

    spool = Spool(small_disk / "spool")
    index = Index(spool.root / "index.sqlite")
    source = ct_files(data_dir, 1)[0]
    header = pydicom.dcmread(source, stop_before_pixels=True)
    finished_job(spool, index, "1.2.4", source.read_bytes(), str(header.SOPInstanceUID))
    config = parse_config({"node": {"spool": str(spool.root)},
                           "destinations": [orthanc.destination()],
                           "routes": [threshold_route()], "pipelines": threshold_pipeline()})
    with sqlite3.connect(spool.root / "index.sqlite") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next index write needs new blocks
    filler = small_disk / "filler"
    fill_leaving(filler, 0)
    dispatcher = Dispatcher(config, index)
    try:
        assert dispatcher.tick() == 0
        (delivery,) = index.deliveries()
        assert (delivery.state, delivery.attempts) == ("pending", 0), "the delivery must stay due"
        in_pacs = orthanc.instances_of_study(str(header.StudyInstanceUID))
        assert len(in_pacs) == 1, "the C-STORE itself went out before the index write failed"
    finally:
        os.truncate(filler, 0)
    assert dispatcher.tick() == 1
    assert [d.state for d in index.deliveries()] == ["sent"]
    assert len(orthanc.instances_of_study(str(header.StudyInstanceUID))) == 1
