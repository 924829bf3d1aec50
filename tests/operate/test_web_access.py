"""The web page's doors: basic auth, TLS client certificates, CSRF tokens, the config keys, the
cancel button and the route tester's upload.

These run the page's server in the test process over an index the test fills itself (no DICOM
traffic); tests/operate/test_web_browser.py drives the real node in a browser.
"""

from __future__ import annotations

import base64
import html
import logging
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pydicom
import pytest

from node.config import ConfigError, load_config, parse_config
from node.index.store import Index, InstanceRecord, JobSpec, Lineage, ResultFile
from node.operate.web import WebServer
from node.passwords import hash_password
from node.tls import ServerTls
from pipelines.base import JobSummary
from tests.support.harness import REPO, threshold_pipeline, threshold_route
from tests.support.peers import free_port
from tests.support.pki import issue, make_ca

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def _auth(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _request(url: str, headers: dict[str, str] | None = None, form: dict[str, str] | None = None,
             body: bytes | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str, dict[str, str]]:
    data = urllib.parse.urlencode(form).encode() if form is not None else body
    request = urllib.request.Request(url, data=data, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # the test reads the 303 itself
            return None

    try:
        handlers: list[urllib.request.BaseHandler] = [NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        with urllib.request.build_opener(*handlers).open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def _serve(config: dict):
    parsed = parse_config(config)
    server = WebServer(parsed, lambda: {"receiver": (1, 1), "worker": (1, 1)})
    server.start()
    return parsed, server


@pytest.fixture
def web(tmp_path: Path, password_hash: str):
    config, server = _serve({
        "node": {"spool": str(tmp_path / "spool")},
        "web": {"enabled": True, "port": free_port(), "password_hash": password_hash},
    })
    yield f"http://127.0.0.1:{server.port}", Index(config.node.index_path)
    server.stop()


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)


def _text(page: str) -> str:
    """What the browser shows of a page: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    """A browser's multipart/form-data upload of ``files`` under the input named "files"."""
    boundary = "----radnode-test-boundary-7MA4YWxkTrZu0gW"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return ({"Content-Type": f"multipart/form-data; boundary={boundary}"},
            b"".join(parts) + f"--{boundary}--\r\n".encode())


def _queued_job(index: Index) -> int:
    index.record_instance(InstanceRecord("1.2.3.1", "1.2.3", "1.2", "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1", Path("/nonexistent"), 4), None)
    index.mark_complete("1.2.3", 0)
    index.route_series("1.2.3", 0, [JobSpec(route="r", pipeline="p", subject="1.2.3", study_uid="1.2",
                                            generation=0, inputs={"series": "1.2.3"}, destinations=["pacs"])])
    return index.jobs("queued")[0].id


def test_every_page_asks_for_the_password_and_refuses_a_wrong_one(web):
    url, _ = web
    for page in ("/", "/studies", "/jobs", "/deliveries", "/routes", "/jobs/1"):
        status, _, headers = _request(url + page)
        assert status == 401, page
        assert headers["WWW-Authenticate"].startswith("Basic")
        assert _request(url + page, _auth(password="wrong password"))[0] == 401
        assert _request(url + page, _auth(user="root"))[0] == 401
    assert _request(url + "/actions/cancel-job", form={"target": "1"})[0] == 401
    status, body, headers = _request(url + "/", _auth())
    assert status == 200 and "Overview" in body
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in \
        headers["Content-Security-Policy"], "the page runs no script at all"


def test_an_action_with_a_wrong_or_missing_csrf_token_is_refused_and_changes_nothing(web):
    url, index = web
    job = _queued_job(index)
    assert f'id="job-{job}"' in _request(url + "/jobs?state=queued", _auth())[1]
    assert f'id="job-{job}"' not in _request(url + "/jobs?state=done", _auth())[1], "the state filter"
    for form in ({"target": str(job)}, {"target": str(job), "csrf": "0" * 64}):
        status, body, _ = _request(url + "/actions/cancel-job", _auth(), form)
        assert status == 403 and "CSRF" in body
    assert index.job(job).state == "queued"

    token = _csrf(_request(url + "/jobs", _auth())[1])
    status, _, headers = _request(url + "/actions/cancel-job", _auth(),
                                  {"target": str(job), "csrf": token, "back": "/jobs"})
    assert status == 303 and headers["Location"].startswith("/jobs?notice=")
    assert index.job(job).state == "failed" and index.job(job).outcome == "cancelled by the administrator"
    assert f"job {job} cancelled" in _notice(url, headers)

    again = _request(url + "/actions/cancel-job", _auth(), {"target": str(job), "csrf": token, "back": "/jobs"})
    assert _notice(url, again[2]).startswith("refused: job"), "a failed job cannot be cancelled"
    for elsewhere in ("//evil.example", "/\\evil.example", "https://evil.example/"):
        offsite = _request(url + "/actions/retry-job", _auth(), {"target": "x", "csrf": token, "back": elsewhere})
        assert offsite[2]["Location"].startswith("/?notice="), "the redirect never leaves the node"
        assert "is not a number" in _notice(url, offsite[2])


def _notice(url: str, headers: dict[str, str]) -> str:
    """The notice of the page a 303 after an action sends the browser to."""
    page = _request(url + headers["Location"], _auth())[1]
    found = re.search(r'id="notice">([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


def test_a_notice_in_the_address_is_not_shown_unless_the_node_wrote_it(web):
    url, _ = web
    for page in ("/", "/jobs", "/deliveries", "/studies"):
        body = _request(url + page + "?notice=" + urllib.parse.quote("Call the helpdesk at 555-0100"), _auth())[1]
        assert "555-0100" not in body and 'id="notice"' not in body, page


def test_the_route_tester_reads_only_folders_under_its_roots_and_never_the_index(
        tmp_path: Path, password_hash: str, data_dir: Path):
    series = data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
    spool = tmp_path / "spool"
    config, server = _serve({
        "node": {"spool": str(spool)},
        "web": {"enabled": True, "port": free_port(), "password_hash": password_hash,
                "route_test_roots": [str(data_dir), str(spool)]},
    })
    (spool / "elsewhere").symlink_to("/usr/share/common-licenses")
    url = f"http://127.0.0.1:{server.port}/routes?path="
    try:
        outside = _request(url + "/usr/share", _auth())[1]
        escaped = _request(url + urllib.parse.quote(f"{series}/../../../../../../../usr/share"), _auth())[1]
        inside = _request(url + urllib.parse.quote(str(series)), _auth())[1]
        linked = _request(url + urllib.parse.quote(str(spool / "elsewhere")), _auth())[1]
        own_spool = _request(url + urllib.parse.quote(str(spool)), _auth())[1]
    finally:
        server.stop()
    for refused in (outside, escaped, linked):
        assert "is not under a folder the route tester may read" in _text(refused) and len(refused) < 20_000
    assert "Series " in _text(inside) and "not under" not in _text(inside)
    assert "index.sqlite" not in own_spool, "the node's own index is never opened"


def test_web_config_errors_name_the_key(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"web\.password_hash: required when enabled"):
        parse_config({"web": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"web\.password_hash: not a hash radnode writes"):
        parse_config({"web": {"enabled": True, "password_hash": "hunter2"}})
    with pytest.raises(ConfigError, match=r"web\.tls\.cert_file"):
        parse_config({"web": {"tls": {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(tmp_path)}}})
    garbage = tmp_path / "web.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"web\.tls: cannot load the certificates"):
        parse_config({"web": {"tls": {"cert_file": str(garbage), "key_file": str(garbage)}}})
    with pytest.raises(ConfigError, match=r"web\.show_patient_data"):
        parse_config({"web": {"show_patient_data": "yes please"}})
    assert parse_config({}).web.enabled is False, "off by default"


def test_the_jobs_pages_say_which_job_a_later_answer_replaces(web):
    url, index = web
    first = _queued_job(index)
    index.route_series("1.2.3", 0, [JobSpec(route="r", pipeline="p", subject="1.2.3", study_uid="1.2",
                                            generation=1, inputs={"series": "1.2.3"}, destinations=["pacs"])])
    second = max(job.id for job in index.jobs())
    # the rerun ends with its lineage, in the transaction of its attempt's end, as the worker records it
    for job_id, lineage in ((first, None), (second, Lineage([], replaces=first, version=2))):
        attempt = index.claim_job(None, 60)
        assert attempt is not None and attempt.id == job_id, "a rerun waits for its route's earlier job"
        assert index.finish_job(job_id, [], "0 objects", attempt=attempt.attempts, lineage=lineage)
    listing = _request(url + "/jobs", _auth())[1]
    rows = {job: _text(re.search(rf'<tr class="job" id="job-{job}">.*?</tr>', listing, re.DOTALL).group(0))
            for job in (first, second)}
    assert f"job {first} (v1)" in rows[second] and f"job {second} (v2)" in rows[first], rows
    detail = _text(_request(url + f"/jobs/{second}", _auth())[1])
    assert f"replaces job {first} (v1) replaced by -" in detail, detail


@pytest.mark.slow
def test_hash_password_prints_a_line_the_config_accepts(tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "node.operate.cli", "hash-password"], check=False, input=PASSWORD + "\n",
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert line.startswith('password_hash = "scrypt$') and PASSWORD not in line
    stored = line.split('"')[1]
    assert parse_config({"web": {"enabled": True, "password_hash": stored}}).web.password_hash == stored
    short = subprocess.run([sys.executable, "-m", "node.operate.cli", "hash-password"], check=False, input="short\n",
                           capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_the_route_tester_reads_an_upload_in_memory_and_names_the_failed_condition_without_patient_data(
        tmp_path: Path, password_hash: str, data_dir: Path):
    dicom = min(data_dir.joinpath("ct-chest", "lung-pet-ct-dx-A0002", "B40f").glob("*.dcm"))
    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    description = " ".join(str(header.SeriesDescription).split())  # as the page's text shows it
    config, server = _serve({
        "node": {"spool": str(tmp_path / "spool")},
        "web": {"enabled": True, "port": free_port(), "password_hash": password_hash},
        "routes": [threshold_route(), threshold_route("sharp-kernel", match={"SeriesDescription": {"regex": "B70f"}}),
                   threshold_route("by-patient", match={"PatientID": {"regex": "^NO-SUCH-PREFIX"}})],
        "pipelines": threshold_pipeline(), "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                             "port": 104}],
    })
    url = f"http://127.0.0.1:{server.port}/routes"
    try:
        token = _csrf(_request(url, _auth())[1])
        upload = [(dicom.name, dicom.read_bytes()), ("notes.txt", b"not an image")]
        headers, body = _multipart({}, upload)
        assert _request(url, {**_auth(), **headers}, body=body)[0] == 403, "an upload without the CSRF token"
        headers, body = _multipart({"csrf": token}, upload)
        status, page, _ = _request(url, {**_auth(), **headers}, body=body)
    finally:
        server.stop()
    assert status == 200
    text = _text(page)
    assert "2 uploaded files, 1 series" in text, text
    assert f"Series {header.SeriesInstanceUID} CT {description}" in text, "the upload arrived whole"
    assert "threshold match" in text
    assert f"sharp-kernel no match SeriesDescription = '{description}' does not match /B70f/" in text
    assert "by-patient no match PatientID = '<redacted>' does not match /^NO-SUCH-PREFIX/" in text
    assert "notes.txt : not a DICOM file" in text
    assert str(header.PatientID) not in page and str(header.PatientName) not in page
    assert not [p for p in config.node.spool.rglob("*") if p.is_file() and p.name != "index.sqlite"
                and not p.name.startswith("index.sqlite-")], "uploaded files are not kept on the node"


def _client(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A browser that trusts the node's CA and presents ``cert`` (or no certificate)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


@pytest.mark.slow
def test_a_client_certificate_signed_by_the_configured_ca_is_the_login_and_its_name_is_logged(
        tmp_path: Path, pki, password_hash: str, caplog: pytest.LogCaptureFixture):  # noqa: F811 (the fixture)
    written = pki.ca.parent / "web.toml"  # config.toml's relative certificate paths are from its folder
    written.write_text('[web]\nenabled = true\n[web.tls]\ncert_file = "localhost.crt"\nkey_file = "localhost.key"\n'
                       'ca_file = "ca.crt"\n')
    assert load_config(written).web.tls == ServerTls(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca)
    stranger_ca = make_ca(tmp_path, "stranger-ca")
    stranger = issue(tmp_path, stranger_ca, "stranger")
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "ca_file": str(pki.ca)}
    port = free_port()
    config, server = _serve({"node": {"spool": str(tmp_path / "spool")},
                             "web": {"enabled": True, "host": "127.0.0.1", "port": port, "tls": tls}})
    url = f"https://localhost:{port}"
    caplog.set_level(logging.INFO, logger="radnode")
    try:
        job = _queued_job(Index(config.node.index_path))
        status, page, _ = _request(url + "/jobs", context=_client(pki.ca, (pki.client_cert, pki.client_key)))
        assert status == 200 and _text(page).count("radnode RADNODE · radnode") == 1, "logged in as the CN"
        status, _, headers = _request(url + "/actions/cancel-job", form={"target": str(job), "csrf": _csrf(page)},
                                      context=_client(pki.ca, (pki.client_cert, pki.client_key)))
        assert status == 303 and Index(config.node.index_path).job(job).state == "failed", "cancelled"
        for refused in (None, stranger):  # no certificate; one from a CA the node does not trust
            with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
                _request(url + "/", context=_client(pki.ca, refused))
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _request(f"http://127.0.0.1:{port}/")  # plain HTTP on the TLS port gets no page
    finally:
        server.stop()
    actions = [r for r in caplog.records if r.getMessage() == "web.action"]
    assert [(r.fields["action"], r.fields["user"]) for r in actions] == [("cancel-job", "radnode")]
    assert len([r for r in caplog.records if r.getMessage() == "web.tls_refused"]) >= 2, "refusals are logged"

    # both doors configured: the certificate alone is not enough, the password is asked too
    config, server = _serve({"node": {"spool": str(tmp_path / "spool2")},
                             "web": {"enabled": True, "port": port, "tls": tls, "password_hash": password_hash}})
    try:
        client = _client(pki.ca, (pki.client_cert, pki.client_key))
        assert _request(url + "/", context=client)[0] == 401
        status, page, _ = _request(url + "/", _auth(), context=client)
        assert status == 200 and "radnode RADNODE · admin / radnode" in _text(page)
    finally:
        server.stop()


def test_a_job_page_reads_as_tables_and_a_retried_job_and_delivery_keep_their_history(web):
    url, index = web
    job = _queued_job(index)
    index._db.execute("UPDATE jobs SET created_at = created_at - 3600 WHERE id = ?", (job,))  # queued an hour ago
    first = index.claim_job(pid=1, timeout=60)
    index.fail_job(job, "out of memory", attempt=first.attempts)
    assert index.requeue_job(job)  # the administrator's retry: its queue time starts now
    second = index.claim_job(pid=1, timeout=60)
    results = [ResultFile(Path(f"/spool/results/{job}/ct{i}.dcm"), f"9.{i}", "1.2.840.10008.5.1.4.1.1.2")
               for i in range(3)] + [ResultFile(Path(f"/spool/results/{job}/seg.dcm"), "9.9", "1.2.840.10008.5.1.4.1.1.66.4")]
    index.finish_job(job, results, "3 slices", JobSummary(model="unet", seconds={"load": 0.5, "infer": 1.25}),
                     attempt=second.attempts)
    (delivery,) = index.deliveries()
    index.mark_delivery_failed(delivery.id, "association rejected by PACS", None)
    index.retry_dead_deliveries(delivery.id)
    index.mark_delivery_sent(delivery.id)
    late = _queued_job_of(index, "1.2.4")  # created before a reboot whose clock then ran an hour behind
    index._db.execute("UPDATE jobs SET created_at = created_at + 3600 WHERE id = ?", (late,))
    index.claim_job(pid=1, timeout=60)

    page = _text(_request(f"{url}/jobs/{job}", _auth())[1])
    assert "seconds load 0.5 seconds infer 1.25" in page and "\"load\": 0.5" not in page, "a table, not JSON"
    assert "CT Image Storage 3" in page and "Segmentation Storage 1" in page
    assert "1.2.840.10008.5.1.4.1.1.2" not in page, "object types by name, not SOP Class UID"
    queued = float(re.search(r"queued ([0-9.-]+) s", page).group(1))
    assert 0 <= queued < 60, f"the retry waited {queued} s, not since the job's creation"
    assert re.search(r"1 .* association rejected by PACS 2 .* sent", page), "both tries of the retried delivery"
    overview = _request(url + "/", _auth())[1]
    assert float(re.search(rf"job {job} p: ([0-9.]+) s", overview).group(1)) < 60, "the chart's bar of the retry"
    assert "queued -" not in _text(_request(f"{url}/jobs", _auth())[1]), "no negative queue time"


def _queued_job_of(index: Index, series: str) -> int:
    index.record_instance(InstanceRecord(f"{series}.1", series, "1.2", "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1", Path("/nonexistent"), 4), None)
    index.mark_complete(series, 0)
    index.route_series(series, 0, [JobSpec(route="r", pipeline="p", subject=series, study_uid="1.2",
                                           generation=0, inputs={"series": series}, destinations=["pacs"])])
    return max(j.id for j in index.jobs("queued"))
