"""The radnode command line as an administrator uses it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.index.store import Index, JobSpec, ResultFile
from tests.support.answers import route_verdicts, words
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route

pytestmark = [pytest.mark.slow]


def test_route_test_shows_matches_and_failed_conditions(tmp_path, data_dir):
    config = node_config(tmp_path, destinations=[{"name": "pacs", "ae_title": "P", "host": "127.0.0.1", "port": 9}],
                         routes=[threshold_route("ct-chest", match={"Modality": "CT", "SliceThickness": {"le": 5}}),
                                 threshold_route("mr-only", match={"Modality": "MR"})],
                         pipelines=threshold_pipeline())
    node = NodeProcess(config, tmp_path)
    result = node.cli("route-test", str(data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len([line for line in lines if "series" in line]) == 1  # one series, listed once
    verdicts = route_verdicts(result.stdout)
    assert set(verdicts) == {"ct-chest", "mr-only"}, result.stdout  # each route once, with its verdict
    # a route that does not match names the failing condition's key, the series' value and the limit
    assert all(word in verdicts["ct-chest"] for word in ("SliceThickness", "8", "5")), result.stdout
    assert all(word in verdicts["mr-only"] for word in ("Modality", "CT", "MR")), result.stdout
    cptac = node.cli("route-test", str(data_dir / "ct-chest" / "cptac-luad-C3N-00247" / "000022.dcm"))
    assert cptac.returncode == 0, cptac.stderr
    assert route_verdicts(cptac.stdout)["ct-chest"] == "MATCH", cptac.stdout


def test_echo_a_destination(tmp_path, orthanc):
    config = node_config(tmp_path, destinations=[
        orthanc.destination(), {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": 9}])
    node = NodeProcess(config, tmp_path)
    ok = node.cli("echo", "pacs")
    assert ok.returncode == 0 and "0x0000" in ok.stdout  # the status the peer answered
    down = node.cli("echo", "down")
    assert down.returncode == 1 and "down" in down.stderr and "Traceback" not in down.stderr
    unknown = node.cli("echo", "nope")  # a usage error, naming the destinations there are
    assert unknown.returncode == 2 and all(name in unknown.stderr for name in ("nope", "pacs", "down"))


def test_run_offline_writes_results_into_the_output_folder(tmp_path, data_dir):
    config = node_config(tmp_path, pipelines=threshold_pipeline(threshold_hu=200))
    node = NodeProcess(config, tmp_path)
    source = data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
    out = tmp_path / "out"
    result = node.cli("run", "--pipeline", "hu-threshold", "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr
    (seg_path,) = out.glob("*.dcm")
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == pydicom.dcmread(next(source.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID


def test_run_offline_prints_each_finding_of_the_report_in_one_line(tmp_path, data_dir):
    config = node_config(tmp_path, pipelines=threshold_pipeline(threshold_hu=200, report=True))
    source = data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
    result = NodeProcess(config, tmp_path).cli("run", "--pipeline", "hu-threshold", "--input", str(source),
                                               "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    series, report, finding = result.stdout.splitlines()[:3]
    assert series.startswith("series 1:") and "2" in series.split() and str(tmp_path / "out") in series
    assert report.startswith("  report:") and "1" in report.split()  # indented under its series
    assert re.fullmatch(r"  dense-1: .*\b\d+ mm3", finding), result.stdout  # one finding, one line, its volume


def test_run_offline_names_a_pipeline_error_in_one_line_without_a_traceback_and_exits_1(tmp_path, data_dir):
    config = node_config(tmp_path, pipelines=threshold_pipeline(fail=True))
    source = data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
    result = NodeProcess(config, tmp_path).cli("run", "--pipeline", "hu-threshold", "--input", str(source),
                                               "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    # one line for the series with the exception's type and message, one naming the pipeline
    assert [line for line in lines if line.startswith("series 1:") and "RuntimeError" in line
            and "the test pipeline was told to fail" in line], result.stderr
    assert [line for line in lines if "hu-threshold" in line and "series 1" in line], result.stderr


def test_every_command_has_help(tmp_path):
    node = NodeProcess(node_config(tmp_path), tmp_path)
    for command in ("serve", "run", "route-test", "jobs", "deliveries", "retry", "echo", "backfill"):
        result = node.cli(command, "--help")
        assert result.returncode == 0 and "--config" in result.stdout, command


# ---- jobs and retry on an index the test fills ----------------------------------------------

CT, SEG = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.66.4"


def _finished_job(index: Index, spool: Path, subject: str, results: list[tuple[str, str]]) -> int:
    """A done job of route ``r`` with result files (name, SOP class) and a pending delivery to pacs."""
    index.add_job(JobSpec(route="r", pipeline="p", subject=subject, study_uid="1.1", generation=0,
                          inputs={"series": subject}, destinations=["pacs"]))
    job = index.claim_job(pid=1, timeout=60)
    files = [ResultFile(spool / "results" / str(job.id) / name, f"9.{i}", sop_class)
             for i, (name, sop_class) in enumerate(results)]
    index.finish_job(job.id, files, "ok", attempt=job.attempts)
    return job.id


def test_retry_names_a_delivery_or_job_that_is_unknown_or_not_failed(tmp_path: Path):
    node = NodeProcess(node_config(tmp_path), tmp_path)
    index = node.index()
    _finished_job(index, tmp_path / "spool", "1.1.1", [("seg.dcm", SEG)])
    (delivery,) = index.deliveries()
    index.mark_delivery_sent(delivery.id)

    # each refusal exits 1 and names what was asked for and, when it exists, the state it is in
    sent = node.cli("retry", "--delivery", str(delivery.id))
    assert sent.returncode == 1 and {str(delivery.id), "sent", "dead"} <= words(sent.stderr), sent
    unknown = node.cli("retry", "--delivery", "999")
    assert unknown.returncode == 1 and "999" in words(unknown.stderr), unknown
    no_job = node.cli("retry", "--job", "999")
    assert no_job.returncode == 1 and "999" in words(no_job.stderr), no_job
    done_job = node.cli("retry", "--job", "1")
    assert done_job.returncode == 1 and {"1", "done", "failed"} <= words(done_job.stderr), done_job
    assert index.deliveries()[0].state == "sent" and index.job(1).state == "done"  # nothing was changed


def test_job_detail_groups_its_result_files_by_object_type(tmp_path: Path):
    node = NodeProcess(node_config(tmp_path), tmp_path)
    results = [(f"ct{i:03}.dcm", CT) for i in range(97)] + [("seg.dcm", SEG), ("sr.dcm", "1.2.840.10008.5.1.4.1.1.88.34")]
    job_id = _finished_job(node.index(), tmp_path / "spool", "1.1.1", results)
    shown = node.cli("jobs", "--id", str(job_id))
    assert shown.returncode == 0, shown.stderr
    folder = tmp_path / "spool" / "results" / str(job_id)
    groups = [re.fullmatch(r"results: (\d+) (.+) in (.+)", line.strip()) for line in shown.stdout.splitlines()
              if line.strip().startswith("results:")]
    # one line per object type: its count, its name and the folder, the biggest group first
    assert [(int(g[1]), g[2], g[3]) for g in groups if g] == [
        (97, "CT Image Storage", str(folder)), (1, "Comprehensive 3D SR Storage", str(folder)),
        (1, "Segmentation Storage", str(folder))], shown.stdout
    assert "ct000.dcm" not in shown.stdout


def test_jobs_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path: Path):
    node = NodeProcess(node_config(tmp_path), tmp_path)
    index = node.index()
    for i in range(1500):  # more than a pipe's 64 KB buffer of lines
        index.add_job(JobSpec(route="r", pipeline="p", subject=f"1.1.{i}", study_uid="1.1", generation=0,
                              inputs={"series": f"1.1.{i}"}, destinations=["pacs"]))
    command = f"{sys.executable} -m node.operate.cli jobs --config {node.config_path} | head -1"
    piped = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=node.env, timeout=120)
    assert piped.stdout.startswith("ID"), piped
    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr
