"""Jobs on a real Ray cluster (``[workers] engine = "ray"``): a head and a second node started
as separate processes, radnode sending its series to Ray actors and keeping the truth in its
index, so that whatever dies (a worker machine, the node, the head) every result reaches the
PACS exactly once.

The cluster runs as README "Running jobs on a Ray cluster" sets one up for patient data: TLS
between all its processes and token authentication; its head also serves Ray Client. It is
shared by the tests of this module (starting it costs about 15 s); the test that stops the head
runs last.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import pydicom
import pytest

from node.config import RaySettings, Route, parse_config
from node.index.store import Index
from node.route.router import job_spec
from node.run.invoke import pipeline_settings
from node.run.ray_actor import PipelineActor
from node.run.ray_executor import hand_back_or_fail, ship
from node.run.ray_probe import speaks_tls, tls_mismatch
from tests.operate.test_patient_data import identifiable_series, leaks
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, storescu
from tests.support.ray_cluster import RayCluster, RayTls, has_ray_client

SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def secret_file(path: Path) -> Path:
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster runs with TLS and Ray's token authentication, as the README sets it up:
    every job of these tests reaches it through the node's ``[workers.ray] tls_*`` and
    ``token_file``."""
    if shutil.which("ray") is None:
        pytest.fail("the ray command is missing: pip install 'radnode[ray]' (the test extra has it)")
    if not has_ray_client():
        pytest.fail("Ray Client (grpcio) is missing: pip install 'radnode[ray-client]' (the test extra has it)")
    secrets_dir = tmp_path_factory.mktemp("ray-auth")
    ray_cluster = RayCluster(token_file=secret_file(secrets_dir / "ray-token"), tls=RayTls.make(secrets_dir))
    try:
        yield ray_cluster.start_head().start_second_node()
    finally:
        ray_cluster.stop()


def ct_series(data_dir: Path, name: str = "B40f", count: int = 10) -> list[Path]:
    return sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / name).glob("*.dcm"))[:count]


def another_ct(data_dir: Path, count: int = 3) -> list[Path]:
    """``count`` adjacent slices of a CT of another patient (a third series for tests that need
    three); its files are not named in slice order."""
    files = (data_dir / "ct-chest" / "cptac-luad-C3N-00247").glob("*.dcm")
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))[:count]


def new_ct(data_dir: Path, folder: Path, count: int = 3) -> list[Path]:
    """Slices of a CT as a new study and series (new UIDs), for tests that need one more."""
    folder.mkdir()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    paths = []
    for path in ct_series(data_dir, "B40f", count):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / path.name, enforce_file_format=True)
        paths.append(folder / path.name)
    return paths


def ray_settings(cluster: RayCluster) -> dict[str, str]:
    """``[workers.ray]`` of a node the cluster accepts: its address, token and TLS files."""
    assert cluster.tls is not None
    return {"address": cluster.address, "token_file": str(cluster.token_file), **cluster.tls.settings()}


def ray_node(tmp_path: Path, orthanc: Orthanc, cluster: RayCluster, count: int = 1,
             job_timeout_seconds: float = 120, ray: dict[str, str] | None = None, num_cpus: float = 1.0,
             **pipeline_options: float) -> NodeProcess:
    return unstarted_ray_node(tmp_path, orthanc, cluster, count, job_timeout_seconds, ray, num_cpus,
                              **pipeline_options).start()


def unstarted_ray_node(tmp_path: Path, orthanc: Orthanc, cluster: RayCluster, count: int = 1,
                       job_timeout_seconds: float = 120, ray: dict[str, str] | None = None,
                       num_cpus: float = 1.0, **pipeline_options: float) -> NodeProcess:
    """``num_cpus``: what each actor holds (a test node has one CPU: 0.5 fits two actors on it)."""
    pipelines = {name: {**table, "num_cpus": num_cpus} for name, table in threshold_pipeline(**pipeline_options).items()}
    config = node_config(
        tmp_path, routes=[threshold_route()], pipelines=pipelines,
        destinations=[orthanc.destination()],
        workers={"engine": "ray", "count": count, "job_timeout_seconds": job_timeout_seconds,
                 "ray": ray_settings(cluster) if ray is None else ray})
    return NodeProcess(config, tmp_path)


def ray_cluster_check(node: NodeProcess) -> tuple[int, dict]:
    status, body = node.http("/health")
    return status, json.loads(body)["checks"]["ray_cluster"]


def probe_verdict(node: NodeProcess) -> tuple[int, dict] | None:
    """/health's ray_cluster check once the probe has judged; None while it is being checked."""
    status, check = ray_cluster_check(node)
    return None if "being checked" in check["detail"] else (status, check)


def study_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def assert_pacs_holds_each_result_once(orthanc: Orthanc, index: Index, studies: list[str]) -> None:
    """Orthanc holds exactly the results the index committed: one copy each, none from an
    attempt the node gave up on."""
    time.sleep(1.0)  # a duplicate send would have arrived by now
    committed = sorted(r.sop_uid for job in index.jobs("done") for r in index.results(job.id))
    in_pacs = sorted(i["MainDicomTags"]["SOPInstanceUID"] for s in studies for i in orthanc.instances_of_study(s))
    assert in_pacs == committed
    assert orthanc.get("/statistics")["CountInstances"] == len(committed)


def test_outputs_made_on_a_cluster_machine_name_the_node_not_that_machine(tmp_path, data_dir):
    config = parse_config(node_config(tmp_path, routes=[threshold_route()], pipelines=threshold_pipeline(),
                                      destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                     "port": 104}]))
    actor = PipelineActor(*pipeline_settings(config, "hu-threshold", station_name="radnode-host"))
    outcome = actor.run({"series": ship(ct_series(data_dir, count=3))}, "7")
    ((name, data),) = outcome.files
    result = tmp_path / name
    result.write_bytes(data)
    seg = pydicom.dcmread(result)
    assert seg.DeviceSerialNumber == "radnode-host"
    assert seg.SOPInstanceUID.startswith(config.node.uid_root)


def test_lost_attempts_are_retried_up_to_max_attempts_then_the_job_fails(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    index.add_job(job_spec(Route.model_validate(threshold_route()), subject="1.2.3", study_uid="1.2",
                           generation=0, inputs={}))
    settings = RaySettings(max_attempts=2)
    hand_back_or_fail(index, index.claim_job(None, 60), "ActorDiedError: node died", settings)
    assert index.jobs()[0].state == "queued"
    hand_back_or_fail(index, index.claim_job(None, 60), "ActorDiedError: node died", settings)
    (job,) = index.jobs()
    assert job.state == "failed" and job.outcome.endswith("(2 of 2 attempts lost)")


def test_series_run_over_tls_with_a_token_on_one_ray_actor_that_loaded_its_pipeline_once_and_each_result_arrives_once(
        tmp_path, orthanc, cluster, data_dir):
    files = ct_series(data_dir, "B40f") + ct_series(data_dir, "B70f")
    assert speaks_tls("127.0.0.1", cluster.port), "the cluster's GCS port must answer in TLS only"
    node = ray_node(tmp_path, orthanc, cluster)
    try:
        assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: len(index.deliveries("sent")) == 2, 90, what="both results delivered")
        jobs = index.jobs("done")
        assert len(jobs) == 2 and all(job.attempts == 1 for job in jobs)
        # the actor's host:pid: the second job ran in the process that loaded the pipeline for the first
        assert jobs[0].summary.ran_on and jobs[0].summary.ran_on == jobs[1].summary.ran_on
        assert '"engine": "ray"' in node.logs() and '"event": "ray.connected"' in node.logs()
        assert_pacs_holds_each_result_once(orthanc, index, sorted({study_of(files[:1]), study_of(files[-1:])}))
        assert [r.sop_class for job in jobs for r in index.results(job.id)] == [SEG, SEG]
        status, check = ray_cluster_check(node)
        assert status == 200 and check == {"ok": True, "detail": f"Ray head {cluster.address} accepts this node"}
    finally:
        node.stop()


def test_a_node_with_a_wrong_token_no_token_or_no_tls_certificates_is_refused_and_health_says_which_key_to_fix(
        tmp_path, orthanc, cluster, data_dir):
    """Ray's own connect retries for about 20 s (13 s without TLS) before it fails; the node's
    probe says within seconds what is wrong, and no job is claimed meanwhile (it waits queued,
    nothing is lost)."""
    right = ray_settings(cluster)
    wrong_token = secret_file(tmp_path / "wrong-token")
    settings = {"wrong token": {**right, "token_file": str(wrong_token)},
                "no token": {k: v for k, v in right.items() if k != "token_file"},
                "no TLS": {k: v for k, v in right.items() if not k.startswith("tls_")}}
    started = time.monotonic()
    nodes = {name: unstarted_ray_node(folder(tmp_path / f"node-{name.replace(' ', '-')}"), orthanc, cluster,
                                      ray=ray).launch() for name, ray in settings.items()}
    try:
        for node in nodes.values():
            node.wait_started()
        assert storescu(nodes["wrong token"].port, ct_series(data_dir, count=3)).returncode == 0
        verdicts = {name: wait_until(lambda node=node: probe_verdict(node), 30, what=f"the probe's verdict ({name})")
                    for name, node in nodes.items()}
        seconds = time.monotonic() - started  # measured: 10.8 s for the three from their start, at load 2.4
        assert seconds < 30, f"refusal said after {seconds:.0f} s"
        assert all(status == 503 and not check["ok"] for status, check in verdicts.values()), verdicts
        details = {name: check["detail"] for name, (_status, check) in verdicts.items()}
        assert f"refused this node's token: [workers.ray] token_file {wrong_token}" in details["wrong token"]
        assert "requires a token and this node has none: set [workers.ray] token_file" in details["no token"]
        assert "uses TLS (RAY_USE_TLS=1) and this node does not: set [workers.ray] tls_ca_cert" in details["no TLS"]
        index = nodes["wrong token"].index()
        wait_until(lambda: index.jobs(), 30, what="the series routed")
        time.sleep(2)  # four rounds of the scheduler, which would have claimed it by now
        (job,) = index.jobs()
        assert job.state == "queued" and job.attempts == 0, "a job must not be claimed for a cluster that refuses"
        assert '"event": "ray.refused"' in nodes["wrong token"].logs()
    finally:
        for node in nodes.values():
            node.stop()
    # certificates of a CA the cluster does not know: the probe's TLS check, without a node
    other_ca = RayTls.make(folder(tmp_path / "other-ca"))
    mismatch = tls_mismatch(RaySettings.model_validate({**right, **other_ca.settings()}), "127.0.0.1", cluster.port)
    assert mismatch and "do not trust each other's certificates (certificate verify failed)" in mismatch


def test_a_node_outside_the_cluster_runs_its_job_through_the_heads_ray_client_server(
        tmp_path, orthanc, cluster, data_dir):
    files = ct_series(data_dir, count=3)
    node = ray_node(tmp_path, orthanc, cluster, ray={**ray_settings(cluster),
                                                     "address": f"ray://127.0.0.1:{cluster.client_port}"})
    try:
        assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 120, what="the result delivered through Ray Client")
        (job,) = index.jobs("done")
        # Ray Client's server may fail to start the driver it runs for a connection (seen once in
        # four runs, after 40 s, "Starting Ray client server failed"): that attempt is handed
        # back, not counted as lost, and the next one runs
        assert job.lost_attempts == 0 and job.summary.ran_on
        assert job.attempts == 1 or "Ray cluster unreachable" in node.logs()
        assert_pacs_holds_each_result_once(orthanc, index, [study_of(files)])
        status, check = ray_cluster_check(node)
        assert status == 200 and check["ok"], check
    finally:
        node.stop()
    # its actor goes with its driver's connection, not after Ray Client's reconnect grace (30 s);
    # 20 s leaves room for a loaded machine (10 s timed out once with the two cores busy)
    wait_until(lambda: not cluster.actors(), 20, what="the node's actor gone with its Ray Client connection")


def test_a_job_past_its_timeout_is_failed_and_its_task_cancelled_on_the_cluster(
        tmp_path, orthanc, cluster, data_dir):
    node = ray_node(tmp_path, orthanc, cluster, job_timeout_seconds=15, sleep_seconds=120)
    try:
        assert storescu(node.port, ct_series(data_dir, count=3)).returncode == 0
        index = node.index()
        wait_until(lambda: cluster.running_tasks() or index.jobs("failed"), 60, 0.1, what="the task running")
        assert cluster.running_tasks(), "the actor did not start within the job's 15 s: machine too busy"
        (job,) = wait_until(lambda: index.jobs("failed"), 30, what="the job timed out")
        assert job.outcome == "timed out after 15 s"
        # without the cancel the task would sleep on for about 100 s more
        wait_until(lambda: not cluster.running_tasks(), 10, what="the task stopped on the cluster")
        assert '"event": "job.cancelled_on_cluster"' in node.logs()
        assert index.deliveries() == []
    finally:
        node.stop()


def test_kill_9_of_a_ray_worker_node_mid_job_runs_the_retry_on_the_surviving_node_within_a_minute_and_the_pacs_holds_one_copy(
        tmp_path, orthanc, cluster, data_dir):
    """Two drivers, one actor on each Ray node; a third job waits. When the second node dies,
    the retry and the third job go to both drivers, so one of them needs a new actor while the
    other's, loaded and idle once its job is done, holds the only room left: it releases it.
    The second node stays dead (the tests after this one need the head only)."""
    series = [ct_series(data_dir, "B40f"), ct_series(data_dir, "B70f"), another_ct(data_dir)]
    node = ray_node(tmp_path, orthanc, cluster, count=2, sleep_seconds=4)  # one actor per Ray node
    try:
        for files in series:
            assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: cluster.running_tasks("second"), 60, 0.1, what="a job running on the second node")
        cluster.kill_second_node()
        lost = wait_until(lambda: [j for j in index.jobs() if j.lost_attempts], 60, what="the attempt lost")
        assert "Actor" in lost[0].outcome  # ActorUnavailableError / ActorDiedError, from Ray
        # measured: 24 s from the loss to the third delivery (before: the retry's actor waited in
        # PENDING_CREATION behind the idle one until the job's timeout)
        wait_until(lambda: len(index.deliveries("sent")) == 3, 60, what="every result delivered by the head alone")
        jobs = index.jobs("done")
        assert len(jobs) == 3 and sorted(j.lost_attempts for j in jobs) == [0, 0, 1]
        assert '"event": "ray.actors_released"' in node.logs()
        assert_pacs_holds_each_result_once(orthanc, index, sorted({study_of(files) for files in series}))
        assert orthanc.get("/statistics")["CountInstances"] == 3
    finally:
        node.stop()


def test_a_library_warning_on_a_ray_actor_keeps_the_patient_out_of_the_clusters_log_files(
        tmp_path, orthanc, cluster, data_dir):
    """highdicom warns, quoting a single-component patient name; Ray keeps the actor's stderr
    in the worker files of its session folder, which must hold no patient value."""
    series = identifiable_series(data_dir, tmp_path / "in", count=3)
    node = ray_node(folder(tmp_path / "node"), orthanc, cluster)
    try:
        assert storescu(node.port, series).returncode == 0
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 90, what="the SEG delivered")
    finally:
        node.stop()

    def logs_with_the_warning() -> str | None:
        files = [p for d in [*cluster.head_dirs, *cluster.node_dirs] for p in d.rglob("logs/*") if p.is_file()]
        text = "\n".join(p.read_text(errors="replace") for p in files)
        return text if "unlikely to represent the intended person name" in text else None
    text = wait_until(logs_with_the_warning, 15, what="highdicom's warning in the actor's log file")
    assert leaks(text) == [], leaks(text)[:3]


def test_the_job_timeout_counts_from_when_the_actor_has_loaded_its_pipeline(tmp_path, orthanc, cluster, data_dir):
    node = ray_node(tmp_path, orthanc, cluster, job_timeout_seconds=10, load_seconds=12)
    try:
        assert storescu(node.port, ct_series(data_dir, count=3)).returncode == 0
        index = node.index()
        wait_until(lambda: index.jobs("done") or index.jobs("failed"), 90, what="the job ended")
        (job,) = index.jobs()
        assert job.state == "done", job.outcome
        assert '"actor_ready_seconds"' in node.logs()
    finally:
        node.stop()


def test_kill_9_of_the_node_while_its_job_runs_on_ray_delivers_the_result_exactly_once_after_restart(
        tmp_path, orthanc, cluster, data_dir):
    files = ct_series(data_dir)
    node = ray_node(tmp_path, orthanc, cluster, sleep_seconds=4)
    assert storescu(node.port, files).returncode == 0
    wait_until(cluster.running_tasks, 60, 0.1, what="the job running on the cluster")
    node.kill()
    # the actor belongs to the node's driver: it dies with it, and nothing of attempt 1 goes on
    wait_until(lambda: not cluster.running_tasks(), 15, what="the orphaned task ended on the cluster")
    node.start()
    try:
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 90, what="the result delivered after the restart")
        (job,) = index.jobs("done")
        assert job.attempts == 2, "the restart runs the job again under a new attempt number"
        assert len(index.deliveries()) == 1
        assert_pacs_holds_each_result_once(orthanc, index, [study_of(files)])
        assert orthanc.get("/statistics")["CountInstances"] == 1
    finally:
        node.stop()


def test_with_the_ray_head_down_receiving_acknowledges_jobs_wait_queued_and_health_says_so_until_it_is_back(
        tmp_path, orthanc, cluster, data_dir):
    first, second = ct_series(data_dir, "B40f"), ct_series(data_dir, "B70f")
    node = ray_node(tmp_path, orthanc, cluster)
    try:
        assert storescu(node.port, first).returncode == 0
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 90, what="a first result, over a live connection")

        cluster.kill_head()
        assert storescu(node.port, second).returncode == 0, "receiving must go on without the cluster"
        wait_until(lambda: len(index.jobs()) == 2, 30, what="the second series routed")
        status, check = ray_cluster_check(node)
        assert status == 503 and not check["ok"] and "does not answer" in check["detail"]
        time.sleep(2)  # jobs are not claimed while the head is away: nothing is lost or failed
        assert [j.state for j in index.jobs()] == ["done", "queued"]

        cluster.start_head()
        wait_until(lambda: len(index.deliveries("sent")) == 2, 120, what="the waiting job run after the head is back")
        assert [j.state for j in index.jobs()] == ["done", "done"]
        assert index.jobs()[1].lost_attempts == 0
        assert_pacs_holds_each_result_once(orthanc, index, [study_of(first)])
        assert ray_cluster_check(node)[0] == 200
    finally:
        node.stop()


#: How long a driver waits for a head that went away before Ray ends it (a minute by default): set
#: in the node's environment, as a site may set it, so that the outage test waits 30 s, not 70.
RECONNECT_TIMEOUT_SECONDS = 20


@pytest.mark.parametrize("outage_seconds", [RECONNECT_TIMEOUT_SECONDS + 10, pytest.param(300, marks=pytest.mark.long)],
                         ids=["past the timeout", "5min"])
def test_after_a_head_outage_past_rays_reconnect_timeout_a_new_ct_runs_and_the_attempt_the_crash_broke_costs_no_retry(
        tmp_path, orthanc, cluster, data_dir, monkeypatch, outage_seconds):
    """Ray ends a connected driver when its head has been away for its reconnect timeout: each
    driver dies (idle, or having handed its attempt back) and is replaced, and none of them can
    wedge another."""
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", str(RECONNECT_TIMEOUT_SECONDS))
    first = [ct_series(data_dir, "B40f", 3), another_ct(data_dir)]
    broken, new = ct_series(data_dir, "B70f", 3), new_ct(data_dir, tmp_path / "new")
    cluster.kill_second_node()  # the head alone: the job in hand runs there and dies with it
    node = ray_node(tmp_path, orthanc, cluster, count=2, num_cpus=0.5, sleep_seconds=3)
    try:
        for files in first:
            assert storescu(node.port, files).returncode == 0
        index = node.index()
        wait_until(lambda: len(index.deliveries("sent")) == 2, 90, what="two first results: both drivers connected")
        assert storescu(node.port, broken).returncode == 0
        wait_until(cluster.running_tasks, 60, 0.1, what="the third job running on the head")
        cluster.kill_head()
        time.sleep(outage_seconds)
        assert index.jobs()[2].state == "queued"
        assert '"event": "node.child_died"' in node.logs(), "Ray did not end the idle driver"
        cluster.start_head()
        assert storescu(node.port, new).returncode == 0
        wait_until(lambda: len(index.deliveries("sent")) == 4, 120, what="the broken job and a new CT run")
        jobs = index.jobs("done")
        assert len(jobs) == 4 and (jobs[2].lost_attempts, jobs[2].attempts) == (0, 2)
        status, body = node.http("/health")
        assert status == 200 and json.loads(body)["checks"]["ray_drivers"] == {"ok": True, "detail": "2 of 2 running"}
    finally:
        node.stop()
