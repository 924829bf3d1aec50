"""Studies that wait: `radnode studies`, the same counts in /metrics, `radnode complete`, and
routes that run early with the roles they declare sufficient (storescu -> radnode -> Orthanc)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.config import ConfigError, parse_config
from tests.operate.test_operations import metric
from tests.support.answers import words
from tests.support.harness import start_node, threshold_pipeline, wait_until
from tests.support.mr_dicom import ROUTE_INPUTS, Study, write_series
from tests.support.peers import send

STUDY_TIMEOUT = 600.0  # the shipped default: these tests must never wait for it


def brain_route(**extra: object) -> dict:
    return {"name": "brain", "pipeline": "hu-threshold-study", "destinations": ["pacs"], "level": "study",
            "study_timeout_seconds": STUDY_TIMEOUT, "match": {"Modality": "MR"}, "inputs": ROUTE_INPUTS,
            **extra}


def mr_series(tmp_path: Path, study: Study, role: str) -> list[Path]:
    """A small MR series (8 slices of 24x24) of the role's protocol; routing reads only headers."""
    image = sitk.GetImageFromArray(np.random.default_rng(len(role)).normal(500, 50, (8, 24, 24)))
    image.SetSpacing((2.0, 2.0, 4.0))
    return write_series(image, role, tmp_path / role, study)


def test_waiting_study_is_listed_counted_and_forced_to_run_now(tmp_path, orthanc):
    node = start_node(tmp_path, orthanc, routes=[brain_route()])
    try:
        study = Study()
        send(node.port, mr_series(tmp_path, study, "t1c"))
        index = node.index()
        wait_until(lambda: [s for s in index.all_series() if s.state == "routed"], 30, what="T1c routed")

        listing = node.cli("studies")
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert [line for line in lines if {study.study_uid, "waiting"} <= words(line)], listing.stdout
        (route,) = [line for line in lines if line.strip().startswith("route brain")]
        assert {"waiting", "t1c", "flair", "t2", "t1", "until"} <= words(route), route  # filled, missing, deadline
        _, text = node.http("/metrics")
        assert metric(text, "radnode_studies", state="waiting") == 1
        assert metric(text, "radnode_study_routes_waiting") == 1
        assert index.jobs() == []

        forced = node.cli("complete", "--study", study.study_uid)
        assert forced.returncode == 0, forced.stderr
        started = time.monotonic()
        (job,) = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 30, what="job")
        assert (job.state, list(job.inputs)) == ("done", ["t1c"]), job.outcome
        assert time.monotonic() - started < 15, "forced completion must not wait for the 600 s timeout"
        assert f"study {study.study_uid}" not in node.cli("studies").stdout
        _, text = node.http("/metrics")
        assert metric(text, "radnode_studies", state="waiting") == 0
        assert metric(text, "radnode_studies", state="routed") == 1
    finally:
        node.stop()


def test_series_waiting_for_announced_instances_is_shown_and_completed_on_request(tmp_path, orthanc, data_dir):
    source = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:10]
    folder = tmp_path / "announced"
    folder.mkdir()
    for path in source:
        ds = pydicom.dcmread(path)
        ds.ImagesInAcquisition = 30  # the scanner announces 30; only 10 come
        ds.save_as(folder / path.name)
    (tmp_path / "node").mkdir()
    node = start_node(tmp_path / "node", orthanc)
    try:
        send(node.port, sorted(folder.iterdir()))
        time.sleep(3)  # three settle times
        index = node.index()
        (series,) = index.all_series()
        assert series.state == "receiving"
        listing = node.cli("studies").stdout
        assert {"ImagesInAcquisition", "30", "10", "until"} <= words(listing), listing  # announced, arrived
        _, text = node.http("/metrics")
        assert metric(text, "radnode_series_waiting", waits_for="instances") == 1

        forced = node.cli("complete", "--series", series.series_uid)
        assert forced.returncode == 0, forced.stderr
        (job,) = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 30, what="job")
        assert job.state == "done", job.outcome
        again = node.cli("complete", "--series", series.series_uid)
        assert again.returncode == 1 and {"receiving", "routed"} <= words(again.stderr), again.stderr
    finally:
        node.stop()


def test_route_runs_early_when_its_sufficient_roles_are_there(tmp_path, orthanc):
    node = start_node(tmp_path, orthanc, routes=[brain_route(sufficient_roles=["flair"])])
    try:
        study = Study()
        send(node.port, mr_series(tmp_path, study, "t1c"))
        send(node.port, mr_series(tmp_path, study, "flair"))
        index = node.index()
        (job,) = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 30,
                            what="job without waiting for T2 and T1")
        assert job.state == "done", job.outcome
        assert sorted(job.inputs) == ["flair", "t1c"]
    finally:
        node.stop()


@pytest.mark.parametrize(("extra", "message"), [
    ({"sufficient_roles": ["flair", "dwi"]}, "routes[0]: sufficient_roles: unknown input role(s) 'dwi'"),
    ({"level": "series", "inputs": {}, "sufficient_roles": ["flair"]},
     "routes[0]: sufficient_roles: only used with level = \"study\""),
])
def test_sufficient_roles_that_name_no_input_role_are_refused_with_the_key(extra, message):
    route = {**brain_route(), **extra}
    with pytest.raises(ConfigError) as error:
        parse_config({"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
                      "routes": [route], "pipelines": threshold_pipeline()})
    assert message in str(error.value)
