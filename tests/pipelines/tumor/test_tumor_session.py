"""A real brain MR session as the scanner sends it: TCGA-FG-6692's raw T1c, T1, T2 and FLAIR (skull on,
26 slices of 5.5 mm each) written as four DICOM series of one study and one FrameOfReferenceUID.

The T1 was prescribed on the T1c's grid; the T2 and FLAIR on a grid tilted 13 degrees from it. A
same-session series on the reference's grid needs no registration, and a contrast that cannot be
aligned is left out with a note, never the study: offline, through ``radnode run`` and through
the shipped brain route of a real node (storescu -> radnode serve -> Orthanc).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import torch

from pipelines.base import JobInput, PipelineSettings
from pipelines.tumor.pipeline import TumorSegmentation
from pipelines.volume import load_series
from tests.pipelines.tumor.test_tumor_clinical import sr_texts
from tests.support.cpu_share import CPU_THREADS
from tests.support.harness import REPO, NodeProcess, node_config, wait_until
from tests.support.mr_dicom import Study, moved, write_series
from tests.support.peers import dciodvfy, send
from training.tumor.data import load_clinical

pytestmark = [pytest.mark.slow]

ROLES = ("t1c", "t1", "t2", "flair")


@pytest.fixture(scope="module")
def session(data_dir, tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    """The study folder and each role's files, as one session of one scanner."""
    folder = tmp_path_factory.mktemp("tcga-fg-6692")
    study = Study()
    return folder, {role: write_series(load_clinical(role, data_dir), role, folder / role, study) for role in ROLES}


def shipped_brain_route() -> dict:
    """The brain route of the shipped config.toml, exactly as a site gets it."""
    shipped = tomllib.loads((REPO / "config.toml").read_text())
    return next(route for route in shipped["routes"] if route["pipeline"] == "tumor-segmentation")


def test_a_t1_on_the_t1c_grid_of_the_same_session_shares_it_and_nothing_else_does(session):
    _, series = session
    t1c, t1, t2 = (load_series(series[role]) for role in ("t1c", "t1", "t2"))
    assert t1c.shares_grid(t1)
    assert not t1c.shares_grid(t2)  # same session, another grid: registered
    assert not t1c.shares_grid(replace(t1, frame_of_reference_uid="1.2.3"))  # another frame: registered


@pytest.mark.peers
def test_a_contrast_that_cannot_be_aligned_is_left_out_with_a_note_and_the_study_is_still_segmented(
        session, data_dir, tmp_path):
    """The T2 sent upside down (a wrong series): the study is segmented from T1c and FLAIR, the
    validated set among T1c, T1 and FLAIR (the T1 left out as not validated with them)."""
    _, series = session
    study = Study(study_uid=str(pydicom.dcmread(series["t1c"][0], stop_before_pixels=True).StudyInstanceUID))
    upside_down, _ = moved(load_clinical("t2", data_dir), (180.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    wrong_t2 = write_series(upside_down, "t2", tmp_path / "t2", study)
    torch.set_num_threads(CPU_THREADS)
    pipeline = TumorSegmentation(PipelineSettings(name="tumor-segmentation", device="cpu"))

    result = pipeline.run(JobInput(series={**series, "t2": wrong_t2}, output_dir=tmp_path / "out"))

    print("summary:", result.summary)
    assert result.summary.contrasts_used == ["T1c", "FLAIR"]
    assert list(result.summary.left_out) == ["T1", "T2"]
    assert result.summary.left_out["T2"].startswith("not aligned to T1c: edge alignment")
    assert result.summary.left_out["T1"] == "not used: the model is validated without it"
    assert result.summary.registration["t1"] == {"registered": False,
                                                 "why": "same frame of reference and grid as the reference"}
    datasets = {ds.Modality: ds for ds in map(pydicom.dcmread, result.outputs)}
    assert set(datasets) == {"SEG", "SR", "OT", "PR", "KO"}  # SEG, SR, key images, presentation state, KOS
    report = datasets["SR"]
    assert report.SeriesDescription.endswith("(T1c, FLAIR; T1, T2 left out)")
    left_out = result.summary.left_out
    assert f"contrasts left out: T1 ({left_out['T1']}); T2 ({left_out['T2']})" in sr_texts(report)
    for path in result.outputs:
        assert not dciodvfy(path).errors


@pytest.mark.peers
def test_radnode_run_on_the_four_series_study_prints_its_findings_and_no_traceback(session, tmp_path):
    folder, _ = session
    config = node_config(tmp_path, routes=[shipped_brain_route()], pipelines={"tumor-segmentation": {"device": "cpu"}},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}])
    out = tmp_path / "out"
    ran = NodeProcess(config, tmp_path).cli("run", "--pipeline", "tumor-segmentation", "--input", str(folder),
                                            "--output", str(out))
    print(ran.stdout)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    lines = ran.stdout.splitlines()
    assert re.fullmatch(rf"study: \d+ objects written to {re.escape(str(out))}", lines[0]), lines[0]
    assert lines[1].startswith("  report: Brain tumor ") and lines[1].endswith(" mL (T1c, T1, T2, FLAIR)")
    assert [line.split(":")[0] for line in lines[2:5]] == ["  necrosis", "  edema", "  enhancing-tumor"]
    # where each sub-region lies: a brain lobe and its side (or the brain, for an empty region)
    assert all(re.search(r" in [A-Z][a-z ]+( \((left|right)\))?, Volume ", line) and line.endswith(" mL")
               for line in lines[2:5]), lines[2:5]
    for path in out.iterdir():
        assert not dciodvfy(path).errors


def _pacs_files(orthanc, study_uid: str, folder: Path) -> dict[str, Path]:
    """SEG, SR, a key image (OT), the presentation state (PR) and the KOS of the study, once all arrived."""
    return orthanc.result_files(study_uid, folder, {"SEG", "SR", "OT", "PR", "KO"})


def test_the_shipped_brain_route_runs_once_t1c_and_flair_are_there_without_waiting_600_s_for_t2(
        session, orthanc, tmp_path):
    """T1c, T1 and FLAIR in one association; no T2 comes. The job must start within seconds of the
    settle time, not after the route's 600 s study timeout; the T1 shares the T1c's grid (unregistered)
    and is left out: T1c + FLAIR is the validated set among the three."""
    _, series = session
    route = shipped_brain_route()
    config = node_config(tmp_path, routes=[route], pipelines={"tumor-segmentation": {"device": "cpu"}},
                         destinations=[orthanc.destination()], workers={"job_timeout_seconds": 300})
    node = NodeProcess(config, tmp_path).start()
    try:
        send(node.port, [*series["t1c"], *series["t1"], *series["flair"]])
        index = node.index()
        (job,) = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 150,
                            what=f"the tumor job, without waiting {route['study_timeout_seconds']} s for T2")
        assert job.state == "done", job.outcome
        assert sorted(job.inputs) == ["flair", "t1", "t1c"]
        assert job.summary.details["contrasts_used"] == ["T1c", "FLAIR"]
        assert job.summary.details["registration"]["t1"]["registered"] is False
        files = _pacs_files(orthanc, job.study_uid, tmp_path)
        assert set(files) == {"SEG", "SR", "OT", "PR", "KO"}
        for path in files.values():
            report = dciodvfy(path)
            assert not report.errors, report.errors
        assert "contrasts used: T1c, FLAIR" in sr_texts(pydicom.dcmread(files["SR"]))
    finally:
        node.stop()
