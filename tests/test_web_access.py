"""The web page's doors: basic auth, CSRF tokens, the config keys, and the cancel button.

These run the page's server in the test process over an index the test fills itself (no DICOM
traffic); tests/test_web_browser.py drives the real node in a browser.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from node.config import ConfigError, parse_config
from node.passwords import hash_password
from node.store import Index, InstanceRecord
from node.web import WebServer
from tests.harness import REPO
from tests.peers import free_port

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


def _auth(user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _request(url: str, headers: dict[str, str] | None = None, form: dict[str, str] | None = None
             ) -> tuple[int, str, dict[str, str]]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # the test reads the 303 itself
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.fixture
def web(tmp_path: Path, password_hash: str):
    config = parse_config({
        "node": {"spool": str(tmp_path / "spool")},
        "web": {"enabled": True, "port": free_port(), "password_hash": password_hash},
    })
    index = Index(config.node.index_path)
    server = WebServer(config, lambda: {"receiver": (1, 1), "worker": (1, 1)})
    server.start()
    yield f"http://127.0.0.1:{server.port}", index
    server.stop()


def _queued_job(index: Index) -> int:
    index.record_instance(InstanceRecord("1.2.3.1", "1.2.3", "1.2", "CT", "1.2.840.10008.5.1.4.1.1.2",
                                         "1.2.840.10008.1.2.1", Path("/nonexistent"), 4), None)
    index.mark_complete("1.2.3", 0)
    index.route_series("1.2.3", 0, [{"route": "r", "pipeline": "p", "subject": "1.2.3", "study_uid": "1.2",
                                     "generation": 0, "inputs": {"series": ["1.2.3"]}, "destinations": ["pacs"]}])
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
    for form in ({"target": str(job)}, {"target": str(job), "csrf": "0" * 64}):
        status, body, _ = _request(url + "/actions/cancel-job", _auth(), form)
        assert status == 403 and "CSRF" in body
    assert index.job(job).state == "queued"

    page = _request(url + "/jobs", _auth())[1]
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)
    status, _, headers = _request(url + "/actions/cancel-job", _auth(),
                                  {"target": str(job), "csrf": token, "back": "/jobs"})
    assert status == 303 and headers["Location"].startswith("/jobs?notice=")
    assert index.job(job).state == "failed" and index.job(job).outcome == "cancelled by the administrator"
    notice = urllib.parse.unquote_plus(headers["Location"])
    assert f"job {job} cancelled" in notice

    again = _request(url + "/actions/cancel-job", _auth(), {"target": str(job), "csrf": token, "back": "/jobs"})
    assert "refused: job" in urllib.parse.unquote_plus(again[2]["Location"]), "a failed job cannot be cancelled"
    offsite = _request(url + "/actions/retry-job", _auth(), {"target": "x", "csrf": token, "back": "//evil.example"})
    assert offsite[2]["Location"].startswith("/?notice="), "the redirect never leaves the node"
    assert "is not a number" in urllib.parse.unquote_plus(offsite[2]["Location"])


def test_web_config_errors_name_the_key(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"web\.password_hash: required when enabled"):
        parse_config({"web": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"web\.password_hash: not a hash radnode writes"):
        parse_config({"web": {"enabled": True, "password_hash": "hunter2"}})
    with pytest.raises(ConfigError, match=r"web\.show_patient_data"):
        parse_config({"web": {"show_patient_data": "yes please"}})
    assert parse_config({}).web.enabled is False, "off by default"


def test_hash_password_prints_a_line_the_config_accepts(tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "node.cli", "hash-password"], input=PASSWORD + "\n",
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert line.startswith('password_hash = "scrypt$') and PASSWORD not in line
    stored = line.split('"')[1]
    assert parse_config({"web": {"enabled": True, "password_hash": stored}}).web.password_hash == stored
    short = subprocess.run([sys.executable, "-m", "node.cli", "hash-password"], input="short\n",
                           capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
