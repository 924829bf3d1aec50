"""What a developer needs from a failed or finished job, and the offline commands' answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.answers import route_verdicts, words
from tests.support.harness import REPO, NodeProcess, node_config, threshold_route, wait_until
from tests.support.peers import storescu
from tests.support.slow_import import IMPORT_SECONDS

pytestmark = [pytest.mark.slow]

CT = ("ct-chest", "lung-pet-ct-dx-A0002")
NOWHERE = [{"name": "pacs", "ae_title": "NOBODY", "host": "127.0.0.1", "port": 9}]


def events(node: NodeProcess, name: str) -> list[dict]:
    return [e for e in map(json.loads, node.logs().splitlines()) if e["event"] == name]


@pytest.mark.peers
def test_failed_job_keeps_its_traceback_done_job_its_summary_and_pipelines_load_at_start(tmp_path, data_dir):
    config = node_config(
        tmp_path, destinations=NOWHERE,
        routes=[threshold_route("ok", match={"SeriesDescription": {"regex": "B40f"}}),
                {**threshold_route("broken", match={"SeriesDescription": {"regex": "B70f"}}), "pipeline": "broken"}],
        pipelines={"hu-threshold": {"entry": "tests.support.slow_import:SlowImportThreshold"},
                   "broken": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"fail": True}}})
    node = NodeProcess(config, tmp_path).start()
    try:
        # both routed pipelines load when the worker starts, before any study arrives
        loaded = wait_until(lambda: len(events(node, "pipeline.loaded")) == 2 and events(node, "pipeline.loaded"),
                            30, what="pipelines preloaded")
        seconds = {e["pipeline"]: e["seconds"] for e in loaded}
        # measured: 2.23 s with the 1.5 s import (0.0 s when the timer started after the import)
        assert seconds["hu-threshold"] >= IMPORT_SECONDS, f"load measured {seconds} without its import"
        for kernel in ("B40f", "B70f"):
            files = sorted(data_dir.joinpath(*CT, kernel).glob("*.dcm"))[:5]
            assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: index.jobs("done") and index.jobs("failed"), 60, what="both jobs ended")
        done, failed = index.jobs("done")[0], index.jobs("failed")[0]
        done_view = node.cli("jobs", "--id", str(done.id))
        failed_view = node.cli("jobs", "--id", str(failed.id))
        missing = node.cli("jobs", "--id", "99")
    finally:
        node.stop()
    assert done.summary.details["voxels"] > 0  # the pipeline's JobResult.summary, kept on the job
    assert done_view.returncode == 0 and f'"voxels": {done.summary.details["voxels"]}' in done_view.stdout
    assert "RuntimeError: the test pipeline was told to fail" in failed.outcome
    assert 'tests/support/hu_threshold.py", line' in failed.traceback and "in run" in failed.traceback
    assert 'tests/support/hu_threshold.py", line' in failed_view.stdout and "traceback:" in failed_view.stdout
    (logged,) = events(node, "job.failed")
    assert any("tests/support/hu_threshold.py:" in frame and frame.endswith("in run") for frame in logged["where"])
    assert missing.returncode == 1 and "99" in words(missing.stderr)
    # the first job did not pay the load: preloading came before it
    assert events(node, "pipeline.loaded")[-1]["ts"] < events(node, "job.start")[0]["ts"]


def cli_without_config(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.operate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=300)


def test_run_and_route_test_work_without_a_config_and_run_fails_when_nothing_applies(tmp_path, data_dir):
    assert not (tmp_path / "config.toml").exists()
    routes = cli_without_config(tmp_path, "route-test", str(data_dir / "ct-chest" / "cptac-luad-C3N-00247" / "000022.dcm"))
    assert routes.returncode == 0, routes.stderr
    assert route_verdicts(routes.stdout)["chest-ct-nodules"] == "MATCH", routes.stdout
    assert "defaults" in words(routes.stderr), routes.stderr  # says it runs on the built-in config
    report = tmp_path / "in"
    report.mkdir()
    shutil.copy(data_dir / "reference-seg-sr" / "highdicom" / "sr_document_with_multiple_groups.dcm", report)
    run = cli_without_config(tmp_path, "run", "--pipeline", "ct-denoise", "--input", str(report),
                             "--output", str(tmp_path / "out"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "not applicable" in run.stdout, run.stdout  # the series' state, with the loader's reason
    assert "ct-denoise" in words(run.stderr) and str(report) in run.stderr and "Traceback" not in run.stderr, run.stderr
