"""DICOMweb destinations: results reach an archive by STOW-RS with the bookkeeping of C-STORE
(retries, dead letters, every try recorded), each instance's answer read, its credentials and
its TLS checked. The archive is a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

import json
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from node.config import ConfigError, Route, parse_config
from node.deliver.dispatcher import Dispatcher
from node.index.store import Index, ResultFile
from node.operate.admin import retry_deliveries
from node.passwords import hash_password
from node.route.router import job_spec
from tests.operate.test_web_access import PASSWORD, _auth, _request, _text
from tests.support.harness import NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import Orthanc, free_port, storescu
from tests.support.pki import issue, make_ca
from tests.support.probes import ct_files
from tests.support.tls_proxy import TlsProxy


def derived(sources: list[Path], folder: Path, study_uid: str | None = None) -> list[Path]:
    """A derived copy of ``sources`` with new series and instance UIDs (what a pipeline writes),
    in ``study_uid`` when given."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    out = []
    for n, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        ds.save_as(folder / f"{n:04d}.dcm")
        out.append(folder / f"{n:04d}.dcm")
    return out


def finished_job(index: Index, study_uid: str, files: list[Path]) -> int:
    """A job of study ``study_uid`` done with ``files`` as its results: its delivery is due."""
    index.add_job(job_spec(Route.model_validate(threshold_route()), subject=generate_uid(), study_uid=study_uid,
                           generation=0, inputs={}))
    job = index.claim_job(None, 600)
    assert job is not None
    results = []
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        results.append(ResultFile(path, str(header.SOPInstanceUID), str(header.SOPClassUID),
                                  str(header.file_meta.TransferSyntaxUID)))
    index.finish_job(job.id, results, f"{len(files)} objects", attempt=job.attempts)
    return job.id


def dicomweb(tmp_path: Path, url: str, delivery: dict[str, Any] | None = None, **destination: Any) -> tuple[Any, Index]:
    """A config with one DICOMweb destination "pacs" and the index of its spool."""
    spool = tmp_path / "spool"
    config = parse_config({"node": {"spool": str(spool)},
                           "destinations": [{"name": "pacs", "protocol": "dicomweb", "url": url, **destination}],
                           "delivery": delivery or {}, "routes": [threshold_route()], "pipelines": threshold_pipeline()})
    spool.mkdir(exist_ok=True)
    return config, Index(spool / "index.sqlite")


def study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def sop_uids(orthanc: Orthanc) -> list[str]:
    """Every SOP Instance UID Orthanc holds, once per stored instance."""
    return [orthanc.get(f"/instances/{i}?simplify")["MainDicomTags"]["SOPInstanceUID"]  # type: ignore[index]
            for i in orthanc.get("/instances")]  # type: ignore[union-attr]


def due_now(index: Index) -> None:
    """Every delivery due at once (instead of waiting out its backoff)."""
    with sqlite3.connect(index.path) as db:
        db.execute("UPDATE deliveries SET next_attempt_at = 0")


@pytest.mark.peers
@pytest.mark.slow
def test_a_derived_series_reaches_orthanc_by_stow_rs_in_batches_byte_for_byte(tmp_path, data_dir):
    files = derived(ct_files(data_dir, 30), tmp_path / "results")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        config, index = dicomweb(tmp_path, orthanc.dicomweb_url, instances_per_request=8)
        finished_job(index, study_of(files[0]), files)
        assert Dispatcher(config, index).tick() == 1
        (delivery,) = index.deliveries()
        assert (delivery.state, delivery.attempts) == ("sent", 1)
        stored = sop_uids(orthanc)
        sent = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        assert sorted(stored) == sorted(sent), "every instance once, nothing else"
        first = orthanc.get("/instances")[0]  # type: ignore[index]
        uid = orthanc.get(f"/instances/{first}?simplify")["MainDicomTags"]["SOPInstanceUID"]  # type: ignore[index]
        assert orthanc.get_bytes(f"/instances/{first}/file") == files[sent.index(uid)].read_bytes()
        check = index.destination_checks()["pacs"]
        assert check.ok and check.detail == f"delivery {delivery.id} sent"
    finally:
        orthanc.kill()


@pytest.mark.peers
@pytest.mark.slow
def test_an_instance_orthanc_refuses_fails_its_delivery_with_the_failure_reason(tmp_path, data_dir):
    """Orthanc's STOW-RS refuses an object of another study than the one the request names (the
    job's): the pipeline's stray object is not filed in the wrong study, and the delivery says why."""
    sources = ct_files(data_dir, 4)
    files = derived(sources[:3], tmp_path / "results")
    stray = derived(sources[3:], tmp_path / "stray", study_uid=generate_uid())
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        config, index = dicomweb(tmp_path, orthanc.dicomweb_url)
        finished_job(index, study_of(files[0]), [*files, *stray])
        assert Dispatcher(config, index).tick() == 0
        (delivery,) = index.deliveries()
        stray_uid = str(pydicom.dcmread(stray[0], stop_before_pixels=True).SOPInstanceUID)
        assert delivery.state == "retrying"
        assert delivery.last_error == (f"STOW-RS refused 1 of 4 objects: {stray_uid}: FailureReason 0x0110 "
                                       "(processing failure)")
        assert [a.error for a in index.delivery_attempts(delivery.id)] == [delivery.last_error]
        assert len(sop_uids(orthanc)) == 3, "the others were stored"
        assert not index.destination_checks()["pacs"].ok
    finally:
        orthanc.kill()


@pytest.mark.peers
@pytest.mark.slow
def test_orthanc_down_mid_delivery_loses_nothing_and_stores_each_instance_once(tmp_path, data_dir):
    """The 2-minute outage of the target, scaled to the test's backoff (0.5 s doubling to 2 s):
    Orthanc is killed while the series is being sent and comes back 8 s later (4 or more failed tries)."""
    files = derived(ct_files(data_dir, 30) * 4, tmp_path / "results")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    config, index = dicomweb(tmp_path, orthanc.dicomweb_url, instances_per_request=2,
                             delivery={"backoff_seconds": 0.5, "backoff_max_seconds": 2.0})
    finished_job(index, study_of(files[0]), files)
    stop = threading.Event()

    def dispatch() -> None:
        dispatcher = Dispatcher(config, Index(index.path))
        while not stop.is_set():
            dispatcher.tick()
            stop.wait(0.1)

    loop = threading.Thread(target=dispatch, daemon=True)
    try:
        loop.start()
        wait_until(lambda: orthanc.get("/statistics")["CountInstances"] >= 8, 60,  # type: ignore[index]
                   what="the first requests stored")
        orthanc.kill()
        down = time.monotonic()
        assert index.deliveries()[0].state != "sent", "the whole series went before Orthanc stopped: the test's timing"
        wait_until(lambda: index.deliveries()[0].attempts >= 4, 30, what="four failed tries while Orthanc is down")
        time.sleep(max(0.0, 8 - (time.monotonic() - down)))
        assert index.deliveries()[0].state == "retrying"
        orthanc.start()
        (delivery,) = wait_until(lambda: index.deliveries("sent"), 60, what="the delivery once Orthanc is back")
    finally:
        stop.set()
        loop.join(60)
        orthanc.stop()
    orthanc.start()
    try:
        stored = sop_uids(orthanc)
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert len(stored) == len(sent) == 120 and set(stored) == sent, "each instance exactly once"
        assert orthanc.get("/statistics")["CountInstances"] == 120  # type: ignore[index]
        tries = index.delivery_attempts(delivery.id)
        assert tries[-1].error == "" and len(tries) == delivery.attempts >= 5
        assert all("no HTTP answer from STOW-RS" in t.error for t in tries[:-1]), tries
    finally:
        orthanc.kill()


@pytest.mark.peers
@pytest.mark.slow
def test_a_dicomweb_delivery_goes_dead_after_its_tries_and_radnode_retry_sends_it(tmp_path, data_dir):
    files = derived(ct_files(data_dir, 3), tmp_path / "results")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)  # not started: the archive is down
    config, index = dicomweb(tmp_path, orthanc.dicomweb_url, delivery={"max_attempts": 2})
    finished_job(index, study_of(files[0]), files)
    dispatcher = Dispatcher(config, index)
    for _ in range(2):
        due_now(index)
        assert dispatcher.tick() == 0
    (delivery,) = index.deliveries()
    assert (delivery.state, delivery.attempts) == ("dead", 2)
    assert delivery.last_error.startswith(f"no HTTP answer from STOW-RS {orthanc.dicomweb_url} (ConnectError")
    orthanc.start()
    try:
        assert retry_deliveries(index).message == "1 dead deliveries queued again"  # radnode retry
        assert dispatcher.tick() == 1
        assert len(sop_uids(orthanc)) == 3
        tries = index.delivery_attempts(delivery.id)
        assert [t.error == "" for t in tries] == [False, False, True], "the history keeps the dead tries"
    finally:
        orthanc.kill()


@pytest.mark.peers
@pytest.mark.slow
def test_basic_auth_from_a_file_over_https_verified_against_the_ca_file_and_not_without_it(tmp_path, data_dir):
    ca = make_ca(tmp_path, "ca")
    cert, key = issue(tmp_path, ca, "archive")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, AuthenticationEnabled=True,
                      RegisteredUsers={"radnode": "s3cret-pw"}).start()
    files = derived(ct_files(data_dir, 2), tmp_path / "results")
    secret = tmp_path / "pacs.basic"
    secret.write_text("radnode:wrong\n")
    try:
        with TlsProxy(orthanc.http_port, cert, key) as https:
            url = f"https://127.0.0.1:{https.port}/dicom-web"
            config, index = dicomweb(tmp_path, url, auth={"type": "basic", "file": str(secret)})
            finished_job(index, study_of(files[0]), files)
            assert Dispatcher(config, index).tick() == 0
            (delivery,) = index.deliveries()
            assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error, "verification is on without a ca_file"

            config, _ = dicomweb(tmp_path, url, auth={"type": "basic", "file": str(secret)}, ca_file=str(ca[0]))
            due_now(index)
            assert Dispatcher(config, index).tick() == 0
            assert index.deliveries()[0].last_error == ("STOW-RS HTTP 401: the server refused our credentials "
                                                        "(check auth and its file)")

            secret.write_text("radnode:s3cret-pw\n")  # read at each batch: no restart for a new password
            due_now(index)
            assert Dispatcher(config, index).tick() == 1
            answer = httpx.get(f"{url}/instances", auth=("radnode", "s3cret-pw"), verify=ssl.create_default_context(cafile=ca[0]))
            assert len(answer.json()) == 2
    finally:
        orthanc.kill()


BEARER_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if uri:find('^/dicom%-web/') then
    return httpHeaders['authorization'] == 'Bearer token-of-radnode'
  end
  return true
end
"""


@pytest.mark.peers
@pytest.mark.slow
def test_a_bearer_token_from_a_file_reaches_the_server(tmp_path, data_dir):
    """Orthanc checks the Authorization header in a Lua filter (it has no bearer tokens of its own)."""
    lua = tmp_path / "bearer.lua"
    lua.write_text(BEARER_FILTER)
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, LuaScripts=[str(lua)]).start()
    files = derived(ct_files(data_dir, 2), tmp_path / "results")
    token = tmp_path / "pacs.token"
    token.write_text("an-old-token\n")
    try:
        config, index = dicomweb(tmp_path, orthanc.dicomweb_url, auth={"type": "bearer", "file": str(token)})
        finished_job(index, study_of(files[0]), files)
        dispatcher = Dispatcher(config, index)
        assert dispatcher.tick() == 0
        assert index.deliveries()[0].last_error.startswith("STOW-RS HTTP 403: the server refused this client")
        assert not index.destination_checks()["pacs"].ok
        token.write_text("token-of-radnode\n")
        due_now(index)
        assert dispatcher.tick() == 1
        assert len(orthanc.get("/instances")) == 2  # type: ignore[arg-type]
    finally:
        orthanc.kill()


@pytest.mark.peers
@pytest.mark.slow
def test_the_node_delivers_by_stow_rs_and_health_cli_and_web_name_the_destination(tmp_path, data_dir):
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    config = node_config(tmp_path, routes=[threshold_route()], pipelines=threshold_pipeline(),
                         destinations=[{"name": "pacs", "protocol": "dicomweb", "url": orthanc.dicomweb_url}],
                         web={"enabled": True, "port": free_port(), "password_hash": hash_password(PASSWORD)})
    node = NodeProcess(config, tmp_path).start()
    index = node.index()
    try:
        sources = ct_files(data_dir, 5)
        assert storescu(node.port, sources).returncode == 0
        (delivery,) = wait_until(lambda: index.deliveries("sent"), 90, what="the result delivered by STOW-RS")
        results = index.results(delivery.job_id)
        assert {r.sop_uid for r in results} <= set(sop_uids(orthanc))
        status, body = node.http("/health")
        check = json.loads(body)["checks"]["destination pacs"]
        assert status == 200 and check["ok"], body
        assert check["detail"].startswith(f"STOW-RS {orthanc.dicomweb_url}: answered at ")
        status, page, _ = _request(f"http://127.0.0.1:{config['web']['port']}/", _auth())
        assert status == 200
        assert f"pacs reachable STOW-RS {orthanc.dicomweb_url}: answered at" in _text(page), _text(page)
        listing = node.cli("destinations").stdout
        assert f"pacs  dicomweb  STOW-RS {orthanc.dicomweb_url}  reachable" in listing, listing
        echo = node.cli("echo", "pacs")
        assert echo.returncode == 0 and "QIDO-RS answered HTTP 200" in echo.stdout, echo.stdout + echo.stderr
        orthanc.stop()
        echo = node.cli("echo", "pacs")
        assert echo.returncode == 1 and "no HTTP answer from STOW-RS" in echo.stdout + echo.stderr
    finally:
        node.stop()
        orthanc.kill()


@pytest.mark.parametrize(("destination", "problem"), [
    ({"protocol": "ftp"}, "destinations[0].protocol: unknown protocol 'ftp'; known: dimse, dicomweb"),
    ({"protocol": "dicomweb"}, "destinations[0].url: required key is missing"),
    ({"protocol": "dicomweb", "url": "https://radnode:pw@vna.example.org/dicom-web"},
     "destinations[0].url: credentials do not go in the url"),
    ({"protocol": "dicomweb", "url": "http://vna/dicom-web", "ca_file": __file__},
     "destinations[0]: ca_file verifies an HTTPS server: give an https:// url"),
    ({"protocol": "dicomweb", "url": "https://vna/dicom-web", "auth": {"type": "bearer", "file": "nowhere.token"}},
     "destinations[0].auth.file: "),
    ({"protocol": "dicomweb", "url": "https://vna/dicom-web", "ae_title": "VNA"},
     "destinations[0].ae_title: unknown key"),
])
def test_a_dicomweb_destination_misconfigured_is_refused_naming_the_key(tmp_path, destination, problem):
    with pytest.raises(ConfigError) as refused:
        parse_config({"destinations": [{"name": "vna", **destination}]})
    assert problem in str(refused.value), str(refused.value)


def test_a_basic_auth_file_without_a_colon_is_refused_at_start(tmp_path):
    secret = tmp_path / "vna.basic"
    secret.write_text("just-a-password\n")
    with pytest.raises(ConfigError) as refused:
        parse_config({"destinations": [{"name": "vna", "protocol": "dicomweb", "url": "https://vna/dicom-web",
                                        "auth": {"type": "basic", "file": str(secret)}}]})
    assert f"destinations[0].auth: {secret} must hold user:password on one line" in str(refused.value)


def test_a_ca_file_that_holds_no_certificate_is_refused_at_start(tmp_path):
    ca = tmp_path / "vna-ca.crt"
    ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as refused:
        parse_config({"destinations": [{"name": "vna", "protocol": "dicomweb", "url": "https://vna/dicom-web",
                                        "ca_file": str(ca)}]})
    assert "destinations[0].ca_file: cannot load the certificates" in str(refused.value)


def test_a_warning_reason_counts_as_stored_and_an_instance_the_answer_leaves_out_as_refused():
    """The parts of a Store Instances Response Orthanc never sends (it warns of nothing): a
    ReferencedSOPSequence item with a WarningReason (coercion, PS3.18 10.5.3), an instance in
    neither sequence."""
    from node.deliver.stow import _per_instance

    def item(uid: str, warning: int | None = None) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        ds.ReferencedSOPClassUID, ds.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", uid
        if warning is not None:
            ds.WarningReason = warning
        return ds

    answer = pydicom.Dataset()
    answer.ReferencedSOPSequence = [item("1.2.3.1", 0xB000), item("1.2.3.2")]
    files = [ResultFile(Path(f"{n}.dcm"), f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2") for n in (1, 2, 3)]
    response = httpx.Response(202, json=answer.to_json_dict())
    refused, warnings = _per_instance(response, files)
    assert warnings == ["1.2.3.1: WarningReason 0xB000 (coercion of data elements)"]
    assert refused == ["1.2.3.3: not in the server's answer (HTTP 202)"]
    assert _per_instance(httpx.Response(200), files) == ([], []), "a 200 without a body took the request whole"
