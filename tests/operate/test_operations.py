"""Operating the node: /health and /metrics as an administrator scrapes them, and retention."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from node.config import RetentionSettings
from node.index.store import Index, InstanceRecord, JobSpec, ResultFile
from node.operate.retention import Retention
from node.passwords import hash_password
from node.receive.spool import Spool
from tests.support.harness import (
    NodeProcess,
    node_config,
    start_node,
    wait_until,
    write_toml,
)
from tests.support.peers import free_port, storescu

DAY = 86_400.0


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def test_health_metrics_and_retention_over_a_study_lifecycle(tmp_path: Path, orthanc, data_dir):
    retention = {"instances_days": 25 / DAY, "results_days": 25 / DAY, "interval_minutes": 2 / 60}
    node = start_node(tmp_path, orthanc, retention=retention)
    try:
        status, body = node.http("/health")
        assert status == 200 and '"status": "ok"' in body, body
        assert '"detail": "1 of 1 running"' in body

        files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
        assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 90, what="result delivered")
        job = index.jobs("done")[0]
        result_dir = Path(index.results(job.id)[0].path).parent

        status, text = node.http("/metrics")
        assert status == 200
        assert metric(text, "radnode_jobs", state="done") == 1
        assert metric(text, "radnode_deliveries", state="sent") == 1
        assert metric(text, "radnode_series", state="routed") == 1
        assert metric(text, "radnode_instances_stored") == len(files)
        assert metric(text, "radnode_processes_alive", role="receiver") == 1
        assert metric(text, "radnode_job_seconds_count", pipeline="hu-threshold") == 1
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert str(header.PatientID) not in text and str(header.PatientName) not in text

        # 25 s after the last image, with everything delivered, the spool lets the study go.
        wait_until(lambda: index.count_instances() == 0 and not result_dir.exists(), 120,
                   what="retention sweep")
        assert not list((tmp_path / "spool" / "instances").rglob("*.dcm"))
        assert [j.state for j in index.jobs()] == ["done"], "job history stays for `radnode jobs`"
        # the sweep logs once its pass is over, a moment after the files it removes are gone
        wait_until(lambda: "retention.swept" in node.logs(), 10, what="the sweep in the node's log")
    finally:
        node.stop()


@pytest.mark.slow
def test_health_fails_when_the_spool_disk_is_below_its_watermark(tmp_path: Path):
    config = node_config(tmp_path, node={"min_free_disk_mb": 2**40})
    node = NodeProcess(config, tmp_path).start()
    try:
        status, body = node.http("/health")
        assert status == 503 and '"status": "failing"' in body
        assert "C-STORE refused below" in body
        assert node.http("/metrics")[0] == 200
    finally:
        node.stop()


def test_busy_monitoring_port_stops_the_node_with_the_key_to_change(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = node_config(tmp_path)
        config["monitoring"]["port"] = busy.getsockname()[1]
        path = write_toml(config, tmp_path / "config.toml")
        run = subprocess.run([sys.executable, "-m", "node.operate.cli", "serve", "--config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "[monitoring] port" in run.stderr and "Traceback" not in run.stderr


# ---- retention rules on a real index -------------------------------------------------------


def _instance(spool: Spool, index: Index, study: str, series: str, sop: str) -> Path:
    path = spool.instance_path(study, series, sop)
    spool.write(path, b"DICM")
    index.record_instance(InstanceRecord(sop, series, study, "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1", path, 4), None)
    return path


def _routed_job(index: Index, spool: Spool, study: str, series: str) -> tuple[int, Path]:
    generation = index.series(series).generation
    index.mark_complete(series, generation)
    index.route_series(series, generation, [JobSpec(
        route="r", pipeline="p", subject=series, study_uid=study, generation=generation,
        inputs={"series": series}, destinations=["pacs"])])
    job = index.claim_job(pid=1, timeout=60)
    result = spool.result_dir(job.id) / "seg.dcm"
    spool.write(result, b"DICM")
    index.finish_job(job.id, [ResultFile(result, "9.9", "1.2.840.10008.5.1.4.1.1.66.4")], "ok", attempt=job.attempts)
    return job.id, result


def test_retention_keeps_what_is_still_needed(tmp_path: Path):
    spool, index = Spool(tmp_path / "spool"), Index(tmp_path / "index.sqlite")
    delivered = _instance(spool, index, "1.1", "1.1.1", "1.1.1.1")
    delivered_job, delivered_result = _routed_job(index, spool, "1.1", "1.1.1")
    index.mark_delivery_sent(index.deliveries()[0].id)
    undeliverable = _instance(spool, index, "2.1", "2.1.1", "2.1.1.1")
    dead_job, dead_result = _routed_job(index, spool, "2.1", "2.1.1")
    index.mark_delivery_failed(index.deliveries("pending")[0].id, "PACS refused", None)
    receiving = _instance(spool, index, "3.1", "3.1.1", "3.1.1.1")

    retention = Retention(RetentionSettings(instances_days=7, results_days=7), index, spool)
    assert retention.sweep(time.time() + 6 * DAY).studies == 0  # too recent: nothing goes
    swept = retention.sweep(time.time() + 8 * DAY)

    assert not delivered.exists() and not delivered_result.exists()
    assert not delivered.parent.exists(), "emptied series folders are removed too"
    assert index.results(delivered_job) == []
    assert not undeliverable.exists(), "received instances go once their jobs ended"
    assert dead_result.exists() and index.results(dead_job), "results wait for `radnode retry`"
    assert receiving.exists() and index.series("3.1.1") is not None, "a series still arriving stays"
    assert (swept.studies, swept.instance_files, swept.result_jobs) == (2, 2, 1)


def test_a_delivered_jobs_history_goes_after_history_days_and_a_dead_delivery_keeps_its_job(tmp_path: Path):
    spool, index = Spool(tmp_path / "spool"), Index(tmp_path / "index.sqlite")
    _instance(spool, index, "1.1", "1.1.1", "1.1.1.1")
    delivered_job, _ = _routed_job(index, spool, "1.1", "1.1.1")
    delivery = index.deliveries()[0]
    index.mark_delivery_failed(delivery.id, "PACS busy", time.time())  # one failed attempt on record
    index.mark_delivery_sent(delivery.id)
    _instance(spool, index, "2.1", "2.1.1", "2.1.1.1")
    dead_job, _ = _routed_job(index, spool, "2.1", "2.1.1")
    index.mark_delivery_failed(index.deliveries("pending")[0].id, "PACS refused", None)
    index.record_problem("router", "2.1.1", 0, "a route's pattern failed")

    retention = Retention(RetentionSettings(instances_days=7, results_days=7, history_days=30), index, spool)
    assert retention.sweep(time.time() + 8 * DAY).history_jobs == 0, "the study and results go first"
    assert index.job(delivered_job) is not None and index.problems(), "history stays history_days"
    swept = retention.sweep(time.time() + 31 * DAY)

    assert swept.history_jobs == 1
    assert index.job(delivered_job) is None
    assert [d.job_id for d in index.deliveries()] == [dead_job], "the delivered job's delivery went with it"
    assert index.job(dead_job) is not None, "a dead delivery keeps its job for `radnode retry`"
    assert index.problems() == []


@pytest.mark.slow
def test_health_stays_up_but_names_an_unreachable_destination_with_its_last_error(tmp_path: Path):
    web_port, password = free_port(), "correct horse battery"
    config = node_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                  "port": free_port()}],  # nothing listens there
                         web={"enabled": True, "port": web_port, "password_hash": hash_password(password)})
    node = NodeProcess(config, tmp_path).start()
    try:
        body = wait_until(lambda: (reply := node.http("/health"))[0] == 200 and "unreachable" in reply[1]
                          and json.loads(reply[1]), 30, what="the destination's first C-ECHO on record")
        check = body["checks"]["destination pacs"]
        assert body["status"] == "degraded" and check["ok"] is False, body
        assert "unreachable since" in check["detail"] and "no association with PACS@127.0.0.1" in check["detail"]
        login = base64.b64encode(f"admin:{password}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{web_port}/", headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            overview = response.read().decode()
        row = re.search(r'<tr class="destination">(.*?)</tr>', overview, re.S)
        assert row and "pacs" in row.group(1) and "unreachable (degraded)" in row.group(1), overview
    finally:
        node.stop()


@pytest.mark.slow
def test_sigterm_lets_an_association_in_progress_finish_and_keeps_what_it_sent(tmp_path: Path, data_dir):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:4]
    node = NodeProcess(node_config(tmp_path), tmp_path).start()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADNODE")
    try:
        assert assoc.is_established
        statuses = [assoc.send_c_store(files[0]).Status, assoc.send_c_store(files[1]).Status]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the node is stopping now
        statuses += [assoc.send_c_store(files[2]).Status, assoc.send_c_store(files[3]).Status]
        assoc.release()
    finally:
        assert node.stop() == 0
    assert statuses == [0, 0, 0, 0], "the association in progress is served to its end"
    assert node.index().count_instances() == 4
