"""A bad config stops the node at start with a message that names the key; no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import REPO

GOOD = """
[node]
port = 11112
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 104
[[routes]]
name = "r"
pipeline = "hu-threshold"
destinations = ["pacs"]
[routes.match]
Modality = "CT"
[pipelines.hu-threshold]
entry = "tests.hu_threshold:HUThreshold"
"""


def serve(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("port = 11112", "prot = 11112"), "node.prot", "unknown key"),
        (("port = 11112", 'port = "eleven"'), "node.port", "valid integer"),
        (("port = 11112", "port = 70000"), "node.port", "less than or equal to 65535"),
        (('destinations = ["pacs"]', 'destinations = ["archive"]'), "routes[0].destinations",
         "unknown destination 'archive'"),
        (('pipeline = "hu-threshold"', 'pipeline = "lung-magic"'), "routes[0].pipeline",
         "no pipeline named 'lung-magic'"),
        (('Modality = "CT"', 'Modalty = "CT"'), "routes[0].match", "'Modalty' is not a DICOM keyword"),
        (('Modality = "CT"', 'SliceThickness = {le = "thin"}'), "routes[0].match", "le takes a number"),
        (('ae_title = "PACS"', 'ae_title = "A_VERY_LONG_AE_TITLE"'), "destinations[0].ae_title",
         "at most 16 characters"),
        (('entry = "tests.hu_threshold:HUThreshold"', 'entry = "nowhere.mod:Cls"'), "pipelines.hu-threshold",
         "not importable"),
        (("[node]", "[node]\n[node.extra]"), "node.extra", "unknown key"),
        (("port = 104", 'port = 104\ntls = { ca_file = "no-such-ca.pem" }'), "destinations[0].tls.ca_file",
         "does not point to a file"),
        (("port = 104", 'port = 104\ntls = { ca_file = "config.toml", cert_file = "config.toml" }'),
         "destinations[0].tls", "cert_file and key_file go together"),

        (("[node]", '[workers]\nengine = "spark"\n[node]'), "workers.engine", "'local' or 'ray'"),
        (("[node]", '[workers.ray]\ntls_ca_cert = "config.toml"\n[node]'), "workers.ray",
         "tls_ca_cert, tls_cert and tls_key go together"),
    ],
)
def test_config_error_names_the_key(tmp_path, change, key, problem):
    old, new = change
    assert old in GOOD
    result = serve(tmp_path, GOOD.replace(old, new, 1))
    assert result.returncode == 2
    assert key in result.stderr and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_toml_is_reported_with_its_position(tmp_path):
    result = serve(tmp_path, GOOD + "\n[[routes]\n")
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_reported(tmp_path):
    result = subprocess.run([sys.executable, "-m", "node.cli", "jobs", "--config", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "cannot read config" in result.stderr


def test_shipped_config_is_valid_and_routes_only_to_shipped_pipelines():
    from node.config import load_config
    from pipelines.registry import SHIPPED

    config = load_config(REPO / "config.toml")
    assert config.routes, "the shipped config should show at least one working route"
    assert {route.pipeline for route in config.routes} <= set(SHIPPED)
    assert all(route.destinations == ["pacs"] for route in config.routes)
