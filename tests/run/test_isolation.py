"""One item a loop cannot handle is set aside with its reason; every other item still flows
(a poison instance used to stop completion for every later series)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom
import pytest

from node.config import RetentionSettings, Route
from node.index.store import Index, InstanceRecord, Job, ResultFile
from node.operate.retention import Retention
from node.receive.spool import Spool, part10_header
from node.route.router import job_spec
from pipelines.base import SERIES_ROLE
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import BitPreservingStorescp, storescu
from tests.support.probes import ct_files, with_nested_sequences


def poison_instance(spool: Spool, index: Index, data_dir: Path) -> str:
    """An instance already in the spool and the index (as one accepted before the receiver
    screened structure, or re-indexed from an old spool) that pydicom cannot read: sequences
    nested 10,000 deep between its identifying attributes and its pixel data."""
    dataset, sop_uid = with_nested_sequences(ct_files(data_dir, 1)[0], 10_000)
    study, series = "1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.1.1"
    path = spool.instance_path(study, series, sop_uid)
    header = part10_header("1.2.840.10008.5.1.4.1.1.2", sop_uid, "1.2.840.10008.1.2", "OLD")
    spool.write(path, [header, dataset])
    index.record_instance(InstanceRecord(sop_uid, series, study, "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2", path, path.stat().st_size), None)
    return series


def claim_own(index: Index, subject: str) -> Job:
    """Start an attempt of the queued job of ``subject``, handing back any other claimed first."""
    others = []
    while (job := index.claim_job(None, 60)) is not None and job.subject != subject:
        others.append(job)
    for other in others:
        index.hand_back_job(other.id, attempt=other.attempts, reason="claimed by a test", lost=False)
    assert job is not None, f"no queued job of {subject}"
    return job


def finished_job(spool: Spool, index: Index, subject: str, result_bytes: bytes, sop_uid: str) -> int:
    """A job already done with one result file of ``result_bytes``: its delivery to "pacs" is due."""
    route = Route.model_validate(threshold_route("old-route"))
    index.add_job(job_spec(route, subject=subject, study_uid="1.2", generation=0, inputs={},
                           outcome=""))
    job = claim_own(index, subject)  # a job ends (done) only from running: node.index.states
    result = spool.result_dir(job.id) / "result.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(result_bytes)
    index.finish_job(job.id, [ResultFile(result, sop_uid, "1.2.840.10008.5.1.4.1.1.2")], "1 objects",
                     attempt=job.attempts)
    return job.id


def poison_delivery(spool: Spool, index: Index) -> int:
    """A finished job whose result file is not DICOM, due before anything else to the PACS."""
    return finished_job(spool, index, "1.2.3", b"not DICOM at all", "1.2.3.4")


def lost_series(index: Index, folder: Path, modality: str, description: str) -> tuple[str, str]:
    """(study, series) indexed and complete, whose files were then removed from the spool by hand:
    the router, a study route and a job on it all meet FileNotFoundError."""
    from tests.complete.test_completion import Study

    study = Study(index, folder)
    series = study.series(modality, description, count=1)
    index.mark_complete(series, 0)
    for path in index.instance_paths(series):
        path.unlink()
    return study.uid, series


def test_a_poison_item_in_each_loop_is_set_aside_while_a_normal_series_flows_end_to_end(
        tmp_path, data_dir, orthanc):
    """Before the node starts, one item each loop cannot handle: a stray spool file that is not
    DICOM (reconcile), an instance nested 10,000 deep (completion), a complete CT series whose files
    are gone (router), an MR study whose series is gone (assembler, study route), a queued job on a
    lost series (worker), a result that is not DICOM (dispatcher). Then a normal CT series is sent:
    it is processed and reaches Orthanc, and each poison item is set aside with its reason.
    (Supervisor and retention: the tests below, on the loop objects.)"""
    from tests.complete.test_completion import MR_ROUTE

    destinations = [orthanc.destination()]
    config = node_config(tmp_path, destinations=destinations, routes=[threshold_route(), MR_ROUTE],
                         pipelines=threshold_pipeline(), delivery={"max_attempts": 2})
    spool = Spool(Path(config["node"]["spool"]))
    index = Index(spool.root / "index.sqlite")
    stray = spool.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    spool.write(stray, b"\x00" * 128 + b"DICM" + b"truncated")
    bad_series = poison_instance(spool, index, data_dir)
    _, unroutable = lost_series(index, tmp_path, "CT", "removed by hand")
    bad_study, bad_mr = lost_series(index, tmp_path, "MR", "T1 AX POST GD")
    route = Route.model_validate(threshold_route())
    _, gone = lost_series(index, tmp_path, "CT", "removed by hand")
    index.route_series(gone, 0, [])  # routed before its files were removed
    index.add_job(job_spec(route, subject=gone, study_uid="1.2", generation=0, inputs={SERIES_ROLE: gone}))
    bad_job = poison_delivery(spool, index)
    normal = str(pydicom.dcmread(ct_files(data_dir, 1)[0], stop_before_pixels=True).SeriesInstanceUID)
    node = NodeProcess(config, tmp_path).start()
    try:
        assert storescu(node.port, ct_files(data_dir, 5)).returncode == 0
        job = wait_until(lambda: [j for j in index.jobs() if j.subject == normal and j.state in ("done", "failed")],
                         90, what="the normal series' job")[0]
        assert job.state == "done", job.outcome
        wait_until(lambda: [d for d in index.deliveries("sent") if d.job_id == job.id], 60, what="delivery")
        assert len(orthanc.instances_of_study(job.study_uid)) == len(index.results(job.id)) > 0
        series_problems = {p.subject: p.reason for p in index.problems() if p.kind == "series"}
        assert set(series_problems) == {bad_series, unroutable, bad_mr}, series_problems
        assert "RecursionError" in series_problems[bad_series]
        assert "FileNotFoundError" in series_problems[unroutable] and "FileNotFoundError" in series_problems[bad_mr]
        # the study route reads every arrived series of a study: each poison's study is set aside too
        study_problems = {p.subject: p.reason for p in index.problems() if p.kind == "study"}
        assert "FileNotFoundError" in study_problems[bad_study] and job.study_uid not in study_problems
        assert index.series(bad_series).state == index.series(unroutable).state == "routed"
        (lost_job,) = [j for j in index.jobs() if j.subject == gone]
        assert lost_job.state == "failed" and "FileNotFoundError" in lost_job.outcome
        assert not stray.exists() and len(list(spool.quarantine.glob("*.reason.txt"))) == 1
        bad = wait_until(lambda: [d for d in index.deliveries("dead") if d.job_id == bad_job], 30,
                         what="the poison delivery to end dead")[0]
        assert "InvalidDicomError" in bad.last_error
        listed = node.cli("problems")
        assert listed.returncode == 0 and bad_series in listed.stdout
    finally:
        node.stop()


def test_retention_sweeps_other_studies_and_quarantined_files_when_one_cannot_be_removed(tmp_path):
    spool = Spool(tmp_path / "spool")
    index = Index(spool.root / "index.sqlite")
    for study in ("1.2.1", "1.2.2"):
        series = f"{study}.1"
        path = spool.instance_path(study, series, f"{series}.1")
        path.parent.mkdir(parents=True)
        if study == "1.2.1":
            (path / "stuck").mkdir(parents=True)  # a folder where the file should be: unlink fails
        else:
            path.write_bytes(b"instance")
        index.record_instance(InstanceRecord(f"{series}.1", series, study, "CT", "1.2", "1.2", path, 8), None)
        index.mark_complete(series, 0)
        index.route_series(series, 0, [])
    (spool.quarantine / "a.dcm").mkdir()  # likewise in the quarantine folder
    refused = spool.quarantine_bytes(b"refused long ago", "missing SOPInstanceUID")
    swept = Retention(RetentionSettings(instances_days=1, history_days=0), index, spool).sweep(now=4e9)
    assert (swept.studies, swept.instance_files, swept.quarantined) == (1, 1, 1)
    assert index.study_files("1.2.2") == [] and index.study_files("1.2.1") != [] and not refused.exists()
    problems = {(p.kind, p.subject): p.reason for p in index.problems()}
    assert set(problems) == {("retention", "1.2.1"), ("retention", "quarantine a.dcm")}
    assert all("IsADirectoryError" in reason for reason in problems.values())


def test_quarantined_datasets_are_removed_after_instances_days(tmp_path):
    spool = Spool(tmp_path / "spool")
    index = Index(spool.root / "index.sqlite")
    old = spool.quarantine_bytes(b"refused long ago", "missing SOPInstanceUID")
    os.utime(old, (1e9, 1e9))
    os.utime(old.with_suffix(".reason.txt"), (1e9, 1e9))
    recent = spool.quarantine_bytes(b"refused today", "missing Modality")
    swept = Retention(RetentionSettings(instances_days=7), index, spool).sweep(now=time.time())
    assert swept.quarantined == 1
    assert sorted(p.name for p in spool.quarantine.iterdir()) == sorted(
        [recent.name, recent.with_suffix(".reason.txt").name])


def test_a_study_whose_headers_cannot_be_read_does_not_hold_back_another_study(tmp_path):
    from node.complete.assembler import Assembler
    from tests.complete.test_completion import MR_ROUTE, Study, config

    index = Index(tmp_path / "index.sqlite")
    broken, fine = Study(index, tmp_path), Study(index, tmp_path)
    lost = broken.series("MR", "T1 AX POST GD")
    t1c = fine.series("MR", "T1 AX POST GD")
    for path in index.instance_paths(lost):
        path.unlink()  # e.g. removed by hand from the spool
    Assembler(config(tmp_path, [MR_ROUTE]), index).tick(time.time() + 61)  # past the study timeout
    assert [(j.subject, j.inputs) for j in index.jobs()] == [(fine.uid, {"t1c": t1c})]
    problems = {(p.kind, p.subject): p.reason for p in index.problems()}
    assert set(problems) == {("series", lost), ("study", broken.uid)}
    assert all("FileNotFoundError" in reason for reason in problems.values())


def test_a_complete_series_the_router_cannot_read_is_set_aside_and_the_next_is_routed(tmp_path):
    from node.complete.assembler import Assembler
    from tests.complete.test_completion import SERIES_ROUTE, Study, config

    index = Index(tmp_path / "index.sqlite")
    study = Study(index, tmp_path)
    lost, fine = study.series("CT", "lost"), study.series("CT", "fine")
    for series in (lost, fine):
        assert index.mark_complete(series, 0)
    for path in index.instance_paths(lost):
        path.unlink()  # removed by hand between completion and routing
    Assembler(config(tmp_path, [SERIES_ROUTE]), index).tick()
    assert [(j.subject, j.state) for j in index.jobs()] == [(fine, "queued")]
    (problem,) = index.problems()
    assert (problem.kind, problem.subject) == ("series", lost) and "FileNotFoundError" in problem.reason
    assert index.series(lost).state == index.series(fine).state == "routed"


def supervised_node(tmp_path: Path):
    from node.config import parse_config
    from node.operate.service import Node

    config = parse_config({"node": {"spool": str(tmp_path / "spool")},
                           "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
                           "routes": [threshold_route()], "pipelines": threshold_pipeline()})
    return Node(config, tmp_path / "config.toml")


def running_jobs(node, pids: list[int], timeout: float) -> list[int]:
    """One running job per worker pid, claimed with ``timeout`` seconds to run."""
    route = Route.model_validate(threshold_route())
    for number, _ in enumerate(pids):
        node.index.add_job(job_spec(route, subject=f"1.2.{number}", study_uid="1.2", generation=0, inputs={}))
    return [node.index.claim_job(pid, timeout).id for pid in pids]


def test_the_scheduler_times_out_every_other_job_when_one_cannot_be_failed(tmp_path, monkeypatch):
    import sqlite3

    node = supervised_node(tmp_path)
    stuck, *others = running_jobs(node, [101, 102, 103], timeout=-1)  # all past their deadline
    # (the outcome names the configured job_timeout_seconds, 1800 by default)
    scheduler = node.scheduler
    fail_job = scheduler.index.fail_job

    def locked_for_one(job_id: int, *args, **kwargs):
        if job_id == stuck:
            raise sqlite3.OperationalError("database is locked")
        return fail_job(job_id, *args, **kwargs)

    monkeypatch.setattr(scheduler.index, "fail_job", locked_for_one)
    scheduler.tick()
    states = {j.id: (j.state, j.outcome) for j in node.index.jobs()}
    assert states[stuck][0] == "running"
    assert all(states[j] == ("failed", "timed out after 1800 s") for j in others), states
    monkeypatch.setattr(scheduler.index, "fail_job", fail_job)
    scheduler.tick()  # the next round meets it again
    assert node.index.job(stuck).state == "failed"


def test_the_supervisor_restarts_every_other_dead_worker_when_one_restart_fails(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from node.operate.service import _Child

    node = supervised_node(tmp_path)
    dead = [_Child("receiver", print, SimpleNamespace(pid=pid, exitcode=-9, is_alive=lambda: False))
            for pid in (201, 202)]
    node._children.extend(dead)
    spawned = []

    def spawn(child) -> None:
        if child is dead[0] and not spawned:
            raise OSError(11, "Resource temporarily unavailable")  # fork refused, say by a pids limit
        spawned.append(child)
        child.process = SimpleNamespace(pid=300 + len(spawned), exitcode=None, is_alive=lambda: True)

    monkeypatch.setattr(node, "_spawn", spawn)
    node.supervise_once()
    assert spawned == [dead[1]]
    node.supervise_once()  # the next round restarts the first
    assert spawned == [dead[1], dead[0]]


@pytest.mark.peers
def test_a_delivery_whose_result_cannot_be_read_fails_alone_and_the_rest_of_its_batch_is_sent(
        tmp_path, data_dir):
    from node.config import parse_config
    from node.deliver.dispatcher import Dispatcher

    spool = Spool(tmp_path / "spool")
    index = Index(spool.root / "index.sqlite")
    bad_job = poison_delivery(spool, index)
    good = ct_files(data_dir, 1)[0]
    good_job = finished_job(spool, index, "1.2.4", good.read_bytes(),
                            str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID))
    with BitPreservingStorescp(tmp_path / "pacs") as pacs:
        config = parse_config({"node": {"spool": str(spool.root)},
                               "destinations": [{"name": "pacs", "ae_title": "RADNODE", "host": "127.0.0.1",
                                                 "port": pacs.port}],
                               "routes": [threshold_route()], "pipelines": threshold_pipeline()})
        assert len(index.due_deliveries(time.time(), 10)) == 2  # one batch, the poison first
        assert Dispatcher(config, index).tick() == 1
    states = {d.job_id: (d.state, d.last_error) for d in index.deliveries()}
    assert states[good_job] == ("sent", "")
    assert states[bad_job][0] == "retrying" and "InvalidDicomError" in states[bad_job][1]
    assert len(list((tmp_path / "pacs").iterdir())) == 1
