"""Backfill from a PACS (Orthanc, real C-FIND and C-MOVE): by an accession list and by a date
query, resumed after a kill -9, behind live traffic on the same worker, and exported as CSV."""

from __future__ import annotations

import csv
import json
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.index.states import BackfillState, JobState
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, free_port, send, storescu

#: Orthanc is started by the tests' own fixture (it must know the node's AE title for C-MOVE)
pytestmark = [pytest.mark.peers, pytest.mark.slow]

STUDIES = 20
SLICES = 3


def make_studies(data_dir: Path, folder: Path, count: int, date: str, first: int = 0) -> dict[str, list[Path]]:
    """``count`` small CT studies (3 slices of a real chest CT each), with their own UIDs,
    accession numbers ``ACC0000``... and StudyDate ``date``: {accession: files}."""
    sources = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[10:10 + SLICES]
    studies = {}
    for n in range(first, first + count):
        accession, study_uid, series_uid = f"ACC{n:04d}", generate_uid(), generate_uid()
        files = []
        for i, source in enumerate(sources):
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.AccessionNumber, ds.StudyDate, ds.PatientID = accession, date, f"BF{n:04d}"
            path = folder / f"{accession}-{i}.dcm"
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(path)
            files.append(path)
        studies[accession] = files
    return studies


def orthanc_find(pacs: Orthanc, query: dict) -> list:
    request = urllib.request.Request(pacs.url + "/tools/find", data=json.dumps(query).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def site(tmp_path: Path, data_dir: Path):
    """A node (one worker, the threshold pipeline 0.5 s a job) and Orthanc as its PACS, which
    knows the node's AE title for C-MOVE; yields (node config, Orthanc, model folder)."""
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"radnode": ["RADNODE", "127.0.0.1", node_port]}).start()
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"threshold weights " * 64)
    pipelines = threshold_pipeline(sleep_seconds=0.5, report=True)
    pipelines["hu-threshold"]["model"] = str(model)
    config = node_config(tmp_path, destinations=[pacs.destination()],
                         routes=[threshold_route()], pipelines=pipelines, backfill={"retrieves_in_flight": 2})
    config["sources"] = [pacs.destination()]
    config["node"]["port"] = node_port
    yield config, pacs, model
    pacs.kill()


def upload(pacs: Orthanc, studies: dict[str, list[Path]]) -> None:
    send(pacs.dicom_port, [f for files in studies.values() for f in files])


def backfill_done(node: NodeProcess, backfill_id: int, timeout: float) -> None:
    index = node.index()
    wait_until(lambda: index.backfill(backfill_id).state == BackfillState.DONE, timeout, 0.5,
               f"backfill {backfill_id} done")


def test_a_backfill_by_accession_list_resumes_after_kill_9_runs_each_study_once_and_names_the_one_not_found(
        site, tmp_path, data_dir):
    config, pacs, model = site
    studies = make_studies(data_dir, tmp_path / "studies", STUDIES, "20261005")
    upload(pacs, studies)
    (tmp_path / "accessions.txt").write_text("\n".join([*studies, "ACC9999"]) + "\n")  # not in the PACS
    node = NodeProcess(config, tmp_path).start()
    created = node.cli("backfill", "--accessions", str(tmp_path / "accessions.txt"))
    assert created.returncode == 0, created.stderr
    assert "backfill 1 created: 21 listed studies" in created.stdout
    index = node.index()
    wait_until(lambda: index.progress(1).run >= 5, 120, 0.2, "5 studies run")
    node.kill_group()  # mid-backfill: studies retrieving, a job running, others queued
    before = index.progress(1)
    assert before.run < STUDIES, before
    node.start()
    backfill_done(node, 1, 240)

    # the backfill is done once every study has run; the last delivery may still be on its way
    wait_until(lambda: index.progress(1).delivered == 20, 60, 0.2, "every result delivered")
    progress = index.progress(1)
    assert (progress.queried, progress.retrieved, progress.run, progress.delivered, progress.failed) == (20, 20, 20, 20, 0)
    jobs = index.jobs()
    assert len(jobs) == STUDIES and all(j.state == JobState.DONE for j in jobs), [(j.id, j.outcome) for j in jobs]
    assert {j.lane for j in jobs} == {"backfill"}
    assert len({j.study_uid for j in jobs}) == STUDIES  # one job a study: nothing ran twice
    reports = orthanc_find(pacs, {"Level": "Series", "Query": {"Modality": "SR"}})
    assert len(reports) == STUDIES  # one report a study reached the PACS

    status = node.cli("backfill", "--status", "1")
    assert "20/20 run" in status.stdout and "(1 of 21 listed not found at pacs)" in status.stdout, status.stdout
    assert "ACC0" not in status.stdout and "ACC9999" not in status.stdout, status.stdout
    exported = node.cli("backfill", "--report", str(tmp_path / "out.csv"), "--id", "1")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    missing = rows.pop()  # the listed accession the PACS did not know: the export's last row
    assert (missing["accession"], missing["outcome"], missing["job"]) == ("ACC9999", "not found at pacs", "")
    assert sorted(r["accession"] for r in rows) == sorted(studies)  # one finding a study: one row each
    digest = index.job(jobs[0].id).summary.model_sha256
    assert digest and len(digest) == 64
    assert {r["model_sha256"] for r in rows} == {digest}
    assert all(r["finding_id"] == "dense-1" and "Volume" in r["size"] and r["delivered_at"] for r in rows), rows[0]
    assert "PatientName" not in rows[0]
    logs = node.logs()
    assert "ACC0" not in logs and "ACC9999" not in logs  # accession numbers stay in the export
    node.stop()


def test_a_backfill_by_date_query_is_a_silent_trial_when_the_route_does_not_deliver(site, tmp_path, data_dir):
    config, pacs, _ = site
    wanted = make_studies(data_dir, tmp_path / "october", STUDIES, "20261012")
    others = make_studies(data_dir, tmp_path / "earlier", 3, "20250301", first=100)
    upload(pacs, {**wanted, **others})
    config["routes"] = [threshold_route(deliver=False, destinations=[])]
    node = NodeProcess(config, tmp_path).start()
    created = node.cli("backfill", "--modality", "CT", "--from", "2026-10-01", "--to", "2026-10-31")
    assert created.returncode == 0, created.stderr
    backfill_done(node, 1, 240)
    progress = node.index().progress(1)
    assert (progress.queried, progress.retrieved, progress.run, progress.failed) == (20, 20, 20, 0)
    assert node.index().deliveries() == []
    assert orthanc_find(pacs, {"Level": "Series", "Query": {"Modality": "SR"}}) == []  # nothing sent
    assert node.cli("backfill", "--report", str(tmp_path / "out.csv")).returncode == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert sorted(r["accession"] for r in rows) == sorted(wanted)
    assert {r["delivered_at"] for r in rows} == {"not delivered (deliver = false)"}
    node.stop()


def test_a_live_study_starts_within_one_job_while_a_backfill_keeps_the_worker_busy(site, tmp_path, data_dir):
    config, pacs, _ = site
    config["pipelines"]["hu-threshold"]["options"]["sleep_seconds"] = 2.0  # one job: about 2.5 s
    upload(pacs, make_studies(data_dir, tmp_path / "past", STUDIES, "20261020"))
    live = make_studies(data_dir, tmp_path / "live", 1, "20261127", first=500)["ACC0500"]
    node = NodeProcess(config, tmp_path).start()
    assert node.cli("backfill", "--from", "2026-10-20", "--to", "2026-10-20").returncode == 0
    index = node.index()
    wait_until(lambda: len([j for j in index.jobs() if j.state == JobState.DONE]) >= 2, 120, 0.2, "2 backfill jobs")
    assert storescu(node.port, live).returncode == 0
    live_uid = str(pydicom.dcmread(live[0], stop_before_pixels=True).StudyInstanceUID)
    job = wait_until(lambda: next((j for j in index.jobs() if j.study_uid == live_uid and j.started_at), None),
                     60, 0.1, "the live job started")
    backfill_jobs = [j for j in index.jobs() if j.lane == "backfill"]
    longest = max((j.finished_at or 0) - (j.started_at or 0) for j in backfill_jobs if j.finished_at)
    waited = job.started_at - job.created_at
    print(f"live job waited {waited:.2f} s in the queue; longest backfill job {longest:.2f} s")
    # measured (4 runs, 2 cores shared): waited 1.3-1.6 s, the longest backfill job 2.8-3.9 s
    assert waited <= longest + 0.5
    assert any(j.state == JobState.QUEUED or (j.started_at or 0) > job.started_at for j in backfill_jobs)
    assert job.lane == "live"
    node.cli("backfill", "--cancel", "1")
    time.sleep(0.5)
    node.stop()
