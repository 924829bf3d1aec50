"""One item a loop cannot handle is set aside with its reason; every other item still flows
(issue 23: a poison instance used to stop the scheduler for every later series)."""

from __future__ import annotations

import os
import time
from pathlib import Path


from node.config import RetentionSettings
from node.retention import Retention
from node.router import job_spec
from node.config import Route
from node.spool import Spool, part10_header
from node.store import Index, InstanceRecord, ResultFile
from tests.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.peers import storescu
from tests.test_hostile_input import ct_files, with_nested_sequences


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


def poison_delivery(spool: Spool, index: Index) -> int:
    """A finished job whose result file is not DICOM, due before anything else to the PACS."""
    route = Route.model_validate(threshold_route("old-route"))
    index.add_job(job_spec(route, subject="1.2.3", study_uid="1.2", generation=0, inputs={},
                           state="queued", outcome=""))
    job = index.claim_job(None, 60)  # a job ends (done) only from running: node.jobstates
    assert job is not None
    result = spool.result_dir(job.id) / "result.dcm"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"not DICOM at all")
    index.finish_job(job.id, [ResultFile(result, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.66.4")], "1 objects",
                     attempt=job.attempts)
    return job.id


def test_poison_series_and_delivery_are_set_aside_while_a_normal_series_flows_end_to_end(
        tmp_path, data_dir, orthanc):
    destinations = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    config = node_config(tmp_path, destinations=destinations, routes=[threshold_route()],
                         pipelines=threshold_pipeline(), delivery={"max_attempts": 2})
    spool = Spool(Path(config["node"]["spool"]))
    index = Index(spool.root / "index.sqlite")
    bad_series = poison_instance(spool, index, data_dir)
    bad_job = poison_delivery(spool, index)
    node = NodeProcess(config, tmp_path).start()
    try:
        assert storescu(node.port, ct_files(data_dir, 5)).returncode == 0
        job = wait_until(lambda: [j for j in index.jobs() if j.id != bad_job and j.state in ("done", "failed")],
                         90, what="the normal series' job")[0]
        assert job.state == "done", job.outcome
        wait_until(lambda: [d for d in index.deliveries("sent") if d.job_id == job.id], 60, what="delivery")
        (problem,) = index.problems()
        assert (problem.kind, problem.subject) == ("series", bad_series)
        assert "RecursionError" in problem.reason
        assert index.series(bad_series).state == "routed"
        bad = wait_until(lambda: [d for d in index.deliveries("dead") if d.job_id == bad_job], 30,
                         what="the poison delivery to end dead")[0]
        assert "InvalidDicomError" in bad.last_error
        listed = node.cli("problems")
        assert listed.returncode == 0 and bad_series in listed.stdout
    finally:
        node.stop()


def test_retention_sweeps_other_studies_when_one_cannot_be_removed(tmp_path):
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
    swept = Retention(RetentionSettings(instances_days=1), index, spool).sweep(now=4e9)
    assert (swept.studies, swept.instance_files) == (1, 1)
    assert index.study_files("1.2.2") == [] and index.study_files("1.2.1") != []
    (problem,) = index.problems()
    assert (problem.kind, problem.subject) == ("retention", "1.2.1")
    assert "IsADirectoryError" in problem.reason


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
    from node.assembler import Assembler
    from tests.test_completion import MR_ROUTE, Study, config

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
