"""A PACS outage costs no one a manual retry, and a stop delivers what finished before it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.config import DeliverySettings, load_config
from node.deliver.dispatcher import retry_schedule
from tests.support.harness import REPO, NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, storescu

CT = ("ct-chest", "lung-pet-ct-dx-A0002")


def series(data_dir: Path, kernel: str, count: int = 5) -> list[Path]:
    return sorted(data_dir.joinpath(*CT, kernel).glob("*.dcm"))[:count]


def test_shipped_defaults_retry_a_delivery_for_a_day_at_most_ten_minutes_apart():
    for source, settings in (("config.toml", load_config(REPO / "config.toml").delivery),
                             ("built-in", DeliverySettings())):
        schedule = retry_schedule(settings)
        gaps = np.diff([0.0, *schedule])
        # measured: 150 tries over 24.0 h, at most 600 s apart
        assert schedule[-1] >= 24 * 3600, f"{source}: dead after {schedule[-1] / 3600:.2f} h"
        assert gaps.max() <= 600, f"{source}: {gaps.max():.0f} s between tries"


@pytest.mark.peers
@pytest.mark.slow
def test_a_delivery_outlives_a_pacs_outage_and_goes_dead_only_after_its_window(tmp_path, data_dir):
    pacs = Orthanc(tmp_path / "orthanc").start()
    pacs.kill()  # down when the first result is ready
    # 14.4 s: the test's stand-in for the default 24 h. The 7th try comes 4.9 s after the first, so
    # the PACS has over 9 s to come up before the window closes, on a loaded machine too.
    retry_hours = 0.004
    config = node_config(tmp_path, destinations=[pacs.destination()], routes=[threshold_route()],
                         pipelines=threshold_pipeline(),
                         delivery={"retry_hours": retry_hours, "backoff_seconds": 0.3, "backoff_max_seconds": 1.0})
    del config["delivery"]["max_attempts"]
    node = NodeProcess(config, tmp_path).start()
    index = node.index()
    try:
        assert storescu(node.port, series(data_dir, "B40f")).returncode == 0
        (first,) = wait_until(lambda: [d for d in index.deliveries() if d.attempts >= 7], 60,
                              what="seven failed tries")
        assert first.state == "retrying", "7 tries is past the old default of 6 attempts"
        pacs.start()
        assert not index.deliveries("dead"), "the window closed before the PACS was up: the test's timing, not the node"
        wait_until(lambda: index.deliveries("sent"), 30, what="delivery once the PACS is up")

        pacs.stop()
        assert storescu(node.port, series(data_dir, "B70f")).returncode == 0
        (second,) = wait_until(lambda: [d for d in index.deliveries() if d.state != "sent" and d.attempts], 60,
                               what="the second result failing")
        dead = wait_until(lambda: index.deliveries("dead"), 60, what="dead delivery")[0]
        window = time.time() - second.created_at
        assert window >= retry_hours * 3600, f"dead after {window:.1f} s, before the {retry_hours * 3600:.1f} s window"
        assert window < retry_hours * 3600 + 5, f"dead after {window:.1f} s"  # measured: 14.7 s, 14 tries
        assert "no association" in dead.last_error

        pacs.start()
        assert "1 dead deliveries queued again" in node.cli("retry").stdout
        wait_until(lambda: len(index.deliveries("sent")) == 2, 30, what="delivery after radnode retry")
    finally:
        node.stop()
        pacs.kill()


def test_sigterm_delivers_a_job_finished_in_the_grace_and_hands_back_a_longer_one(tmp_path, orthanc, data_dir):
    quick = {"hu-threshold": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"sleep_seconds": 3}}}
    slow = {"slow": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"sleep_seconds": 60}}}
    config = node_config(
        tmp_path, destinations=[orthanc.destination()],
        routes=[threshold_route("quick", match={"SeriesDescription": {"regex": "B40f"}}),
                {**threshold_route("slow", match={"SeriesDescription": {"regex": "B70f"}}), "pipeline": "slow"}],
        pipelines={**quick, **slow}, workers={"count": 2, "shutdown_grace_seconds": 8})
    node = NodeProcess(config, tmp_path).start()
    index = node.index()
    assert storescu(node.port, series(data_dir, "B40f")).returncode == 0
    assert storescu(node.port, series(data_dir, "B70f")).returncode == 0
    wait_until(lambda: len(index.jobs("running")) == 2, 60, what="both jobs running")
    stopped = time.monotonic()
    assert node.stop(timeout=60) == 0
    took = time.monotonic() - stopped
    jobs = {j.route: j for j in index.jobs()}
    assert jobs["quick"].state == "done"
    (delivery,) = index.deliveries()
    assert delivery.state == "sent", f"the result made during the grace was left {delivery.state}"
    seg_uid = index.results(jobs["quick"].id)[0].sop_uid
    study = str(pydicom.dcmread(series(data_dir, "B40f")[0], stop_before_pixels=True).StudyInstanceUID)
    assert seg_uid in [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances_of_study(study)]
    # the job still running at the end of the grace is queued again for the next start
    assert jobs["slow"].state == "queued" and jobs["slow"].outcome == ""
    assert '"jobs_handed_back": 1' in node.logs() and '"deliveries_sent_at_stop": 1' in node.logs()
    assert took < 8 + 10, f"stop took {took:.1f} s with an 8 s grace"  # measured: about 9 s


def test_a_worker_restarted_after_a_crash_finishes_its_job_in_the_stops_grace(tmp_path, orthanc, data_dir):
    """The scheduler's thread restarts a dead worker, and a child dies with the thread that
    spawned it (PR_SET_PDEATHSIG): that thread must outlive it until the stop's grace ends."""
    import os
    import signal

    quick = {"hu-threshold": {"entry": "tests.support.hu_threshold:HUThreshold", "options": {"sleep_seconds": 3}}}
    config = node_config(
        tmp_path, destinations=[orthanc.destination()],
        routes=[threshold_route("first", match={"SeriesDescription": {"regex": "B40f"}}),
                threshold_route("second", match={"SeriesDescription": {"regex": "B70f"}})],
        pipelines=quick, workers={"count": 1, "shutdown_grace_seconds": 8})
    node = NodeProcess(config, tmp_path).start()
    index = node.index()
    assert storescu(node.port, series(data_dir, "B40f")).returncode == 0
    wait_until(lambda: [j.state for j in index.jobs()] == ["done"], 60, what="the first job done")
    (first,) = index.jobs()
    assert first.worker_pid is not None
    os.kill(first.worker_pid, signal.SIGKILL)
    wait_until(lambda: '"node.child_died"' in node.logs(), 30, what="the worker's restart")
    assert storescu(node.port, series(data_dir, "B70f")).returncode == 0
    wait_until(lambda: len(index.jobs("running")) == 1 and index.jobs("running")[0].worker_pid, 90,
               what="the second job running on the restarted worker")
    assert node.stop(timeout=60) == 0
    second = next(j for j in index.jobs() if j.route == "second")
    assert second.worker_pid != first.worker_pid
    assert second.state == "done", f"the restarted worker's job ended {second.state}: {second.outcome}"
