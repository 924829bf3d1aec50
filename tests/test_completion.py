"""When a series or a study counts as arrived, and what is routed then."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.assembler import Assembler, Timing, series_is_complete
from node.config import parse_config
from node.store import Index, InstanceRecord, SeriesRow
from tests.harness import threshold_pipeline

TIMING = Timing(settle_seconds=2.0, quiet_seconds=30.0)


def row(last: float, open_assocs: int, released: float | None) -> SeriesRow:
    return SeriesRow("1.2", "1.1", "CT", "receiving", 0, 10, last - 5, last, Path("x"), open_assocs, released)


def test_released_series_completes_after_settle_time():
    now = 1000.0
    assert not series_is_complete(row(now - 1, 0, now - 1), now, TIMING)
    assert series_is_complete(row(now - 3, 0, now - 2.5), now, TIMING)


def test_release_later_than_last_instance_counts_from_the_release():
    now = 1000.0
    assert not series_is_complete(row(now - 10, 0, now - 1), now, TIMING)


def test_open_association_waits_for_quiet_timeout():
    now = 1000.0
    assert not series_is_complete(row(now - 10, 1, None), now, TIMING)
    assert series_is_complete(row(now - 31, 1, None), now, TIMING)


# ---- the assembler on a real index ---------------------------------------------------------

MR_ROUTE = {
    "name": "brain", "pipeline": "hu-threshold-study", "destinations": ["pacs"], "level": "study",
    "study_timeout_seconds": 60, "match": {"Modality": "MR"},
    "inputs": {
        "t1c": {"required": True, "match": {"SeriesDescription": {"regex": "(?i)t1.*post"}}},
        "flair": {"required": False, "match": {"SeriesDescription": {"regex": "(?i)flair"}}},
    },
}


def config(tmp: Path, routes: list[dict]):
    return parse_config({
        "node": {"spool": str(tmp)},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "routes": routes,
        "pipelines": threshold_pipeline(),
    })


class Study:
    """Writes small headers into a spool and indexes them as the receiver would."""

    def __init__(self, index: Index, folder: Path) -> None:
        self.index, self.folder, self.uid = index, folder, generate_uid()

    def series(self, modality: str, description: str, count: int = 2, series_uid: str | None = None) -> str:
        series_uid = series_uid or generate_uid()
        for _ in range(count):
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = self.uid, series_uid, generate_uid()
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            ds.Modality, ds.SeriesDescription = modality, description
            path = self.folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            self.index.record_instance(InstanceRecord(ds.SOPInstanceUID, series_uid, self.uid, modality,
                                                      ds.SOPClassUID, ExplicitVRLittleEndian, path, 1), None)
        return series_uid


@pytest.fixture
def index(tmp_path: Path):
    idx = Index(tmp_path / "index.sqlite")
    yield idx
    idx.close()


def test_study_route_waits_for_its_inputs_then_runs_once(tmp_path, index):
    assembler = Assembler(config(tmp_path, [MR_ROUTE]), index)
    study = Study(index, tmp_path)
    flair = study.series("MR", "AX FLAIR")
    now = time.time()
    assembler.tick(now + 5)
    assert index.jobs() == []  # the T1 post-contrast series has not come yet
    t1c = study.series("MR", "T1 AX POST GD")
    assembler.tick(time.time() + 5)
    jobs = index.jobs()
    assert [(j.state, j.inputs) for j in jobs] == [("queued", {"t1c": t1c, "flair": flair})]
    assembler.tick(time.time() + 10)
    assert len(index.jobs()) == 1


def test_study_missing_required_input_fails_after_timeout(tmp_path, index):
    assembler = Assembler(config(tmp_path, [MR_ROUTE]), index)
    study = Study(index, tmp_path)
    study.series("MR", "AX FLAIR")
    assembler.tick(time.time() + 30)
    assert index.jobs() == []
    assembler.tick(time.time() + 61)
    (job,) = index.jobs()
    assert job.state == "failed"
    assert job.outcome.startswith("missing input: t1c")


def test_study_runs_with_required_inputs_after_timeout(tmp_path, index):
    assembler = Assembler(config(tmp_path, [MR_ROUTE]), index)
    study = Study(index, tmp_path)
    t1c = study.series("MR", "T1 POST")
    assembler.tick(time.time() + 30)
    assert index.jobs() == []  # FLAIR might still come
    assembler.tick(time.time() + 61)
    (job,) = index.jobs()
    assert (job.state, job.inputs) == ("queued", {"t1c": t1c})


SERIES_ROUTE = {"name": "ct", "pipeline": "hu-threshold", "destinations": ["pacs"], "match": {"Modality": "CT"}}


@pytest.mark.parametrize(("policy", "jobs_after_late"), [("rerun", 2), ("ignore", 1)])
def test_late_instances_reopen_the_series_and_the_route_decides(tmp_path, index, policy, jobs_after_late):
    assembler = Assembler(config(tmp_path, [{**SERIES_ROUTE, "on_late_instances": policy}]), index)
    study = Study(index, tmp_path)
    series = study.series("CT", "chest", count=3)
    assembler.tick(time.time() + 5)
    assert index.series(series).state == "routed" and len(index.jobs()) == 1
    study.series("CT", "chest", count=1, series_uid=series)
    reopened = index.series(series)
    assert (reopened.state, reopened.generation, reopened.instance_count) == ("receiving", 1, 4)
    assembler.tick(time.time() + 5)
    assert index.series(series).state == "routed"
    assert len(index.jobs()) == jobs_after_late


def test_non_matching_series_is_routed_to_nothing(tmp_path, index):
    assembler = Assembler(config(tmp_path, [SERIES_ROUTE]), index)
    series = Study(index, tmp_path).series("MR", "T2")
    assembler.tick(time.time() + 5)
    assert index.series(series).state == "routed"
    assert index.jobs() == []


def test_series_arriving_slowly_gets_a_settle_time_of_several_of_its_own_gaps(tmp_path, index):
    """Instances 0.4 s apart with a 0.1 s configured settle: the settle becomes 5 x 0.4 = 2 s, so
    a pause of 0.5 s no longer completes the series, and 2.5 s does."""
    cfg = parse_config({
        "node": {"spool": str(tmp_path)}, "completion": {"settle_seconds": 0.1},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        "routes": [SERIES_ROUTE], "pipelines": {"hu-threshold": {"entry": "tests.hu_threshold:HUThreshold"}},
    })
    assembler = Assembler(cfg, index)
    study = Study(index, tmp_path)
    series = study.series("CT", "chest", count=1)
    for _ in range(3):
        time.sleep(0.4)
        study.series("CT", "chest", count=1, series_uid=series)
    last = index.series(series).last_received
    assembler.tick(last + 0.5)
    assert index.series(series).state == "receiving"
    assembler.tick(last + 2.5)
    assert index.series(series).state == "routed"
