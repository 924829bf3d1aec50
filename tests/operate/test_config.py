"""A bad config stops the node at start with a message that names the key; no traceback."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from node.config import ConfigError, load_config, parse_config
from pipelines.registry import contract
from tests.support.harness import REPO

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
entry = "tests.support.hu_threshold:HUThreshold"
"""


def serve(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "node.operate.cli", "serve", "--config", str(path)],
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
        (('entry = "tests.support.hu_threshold:HUThreshold"', 'entry = "nowhere.mod:Cls"'), "pipelines.hu-threshold",
         "not importable"),
        (("[node]", "[node]\n[node.extra]"), "node.extra", "unknown key"),
        (("port = 104", 'port = 104\ntls = { ca_file = "no-such-ca.pem" }'), "destinations[0].tls.ca_file",
         "does not point to a file"),
        (("port = 104", 'port = 104\ntls = { ca_file = "config.toml", cert_file = "config.toml" }'),
         "destinations[0].tls", "cert_file and key_file go together"),
        (("port = 104", 'port = 104\nformats = ["keyimages"]'), "destinations[0].formats",
         "unknown format 'keyimages'; did you mean 'key-images'? known: seg, sr, key-images, gsps, images"),
        (("port = 104", "port = 104\nformats = []"), "destinations[0].formats", "leave the key out"),
        (("port = 104", 'port = 104\nformats = ["sr", "seg", "sr"]'), "destinations[0].formats",
         "'sr' listed more than once"),

        (("[node]", "[monitoring]\nport = 11112\n[node]"), "monitoring.port",
         "11112 is also node.port; each listener needs a port of its own"),
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


def test_one_port_on_two_different_listen_addresses_or_a_disabled_listener_is_accepted():
    apart = tomllib.loads(GOOD.replace("[node]", '[monitoring]\nhost = "127.0.0.2"\nport = 11112\n'
                                                 '[node]\nhost = "127.0.0.1"', 1))
    config = parse_config(apart)
    assert config.monitoring.port == config.node.port
    disabled = tomllib.loads(GOOD.replace("[node]", "[monitoring]\nenabled = false\nport = 11112\n[node]", 1))
    assert not parse_config(disabled).monitoring.enabled


def test_invalid_toml_is_reported_with_its_position(tmp_path):
    result = serve(tmp_path, GOOD + "\n[[routes]\n")
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_reported(tmp_path):
    result = subprocess.run([sys.executable, "-m", "node.operate.cli", "jobs", "--config", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "cannot read config" in result.stderr


def test_shipped_config_is_valid_and_routes_only_to_shipped_pipelines():
    from node.config import load_config
    from pipelines.registry import SHIPPED

    config = load_config(REPO / "config.toml")
    assert config.routes, "the shipped config should show at least one working route"
    assert {route.pipeline for route in config.routes} <= set(SHIPPED)
    assert all(route.destinations == ["pacs"] for route in config.routes)


TUMOR_INPUTS = {"t1c": {"match": {"SeriesDescription": {"regex": "(?i)t1"}}},
                "flair": {"required": False, "match": {"SeriesDescription": {"regex": "(?i)flair"}}}}


def contract_config(route: dict, pipelines: dict | None = None) -> dict:
    """A config with one route, to the shipped pipelines (read from their light contract modules)."""
    return {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
            "routes": [{"name": "r", "destinations": ["pacs"], "match": {"Modality": "MR"}, **route}],
            "pipelines": pipelines or {}}


@pytest.mark.parametrize(
    ("route", "pipelines", "key", "problem"),
    [
        ({"pipeline": "tumor-segmentation", "level": "study",
          "inputs": {"t1ce": TUMOR_INPUTS["t1c"], "flair": TUMOR_INPUTS["flair"]}},
         None, "routes[0].inputs.t1ce", "no input role 't1ce'; did you mean 't1c'?"),
        ({"pipeline": "tumor-segmentation", "level": "study", "inputs": {"flair": TUMOR_INPUTS["flair"]}},
         None, "routes[0].inputs", "requires role 't1c'; add [routes.inputs.t1c]"),
        ({"pipeline": "tumor-segmentation", "level": "study",
          "inputs": {**TUMOR_INPUTS, "t1c": {**TUMOR_INPUTS["t1c"], "required": False}}},
         None, "routes[0].inputs.t1c.required", "requires role 't1c': set required = true"),
        ({"pipeline": "tumor-segmentation"}, None, "routes[0].level", "use level = \"study\""),
        ({"pipeline": "nodule-detection", "level": "study", "inputs": TUMOR_INPUTS},
         None, "routes[0].level", "takes one series; use level = \"series\""),
        ({"pipeline": "nodule-detection"}, {"nodule-detection": {"options": {"report_treshold": 0.9}}},
         "pipelines.nodule-detection.options.report_treshold", "unknown key"),
        ({"pipeline": "nodule-detection"}, {"nodule-detection": {"options": {"report_threshold": 90}}},
         "pipelines.nodule-detection.options.report_threshold", "less than or equal to 1"),
        ({"pipeline": "tumor-segmentation", "level": "study", "inputs": TUMOR_INPUTS},
         {"tumor-segmentation": {"options": {"min_tumor_ml": "one"}}},
         "pipelines.tumor-segmentation.options.min_tumor_ml", "valid number"),
        ({"pipeline": "tumor-segmentation", "level": "study", "inputs": TUMOR_INPUTS},
         {"tumor-segmentation": {"options": {"reference": ["t1ce"]}}},
         "pipelines.tumor-segmentation.options.reference[0]", "'t1c', 't1', 't2' or 'flair'"),
        ({"pipeline": "tumor-segmentation", "level": "study", "inputs": TUMOR_INPUTS},
         {"tumor-segmentation": {"options": {"min_validated_dice": 60}}},
         "pipelines.tumor-segmentation.options.min_validated_dice", "less than or equal to 1"),
        ({"pipeline": "ct-denoise"}, {"ct-denoise": {"options": {"batch_pixels": 0}}},
         "pipelines.ct-denoise.options.batch_pixels", "greater than 0"),
        ({"pipeline": "ct-denoise"}, {"ct-denoise": {"options": {"strength": 1.5}}},
         "pipelines.ct-denoise.options.strength", "less than or equal to 1"),
        ({"pipeline": "hu-threshold"}, {"hu-threshold": {"entry": "tests.support.hu_threshold:HUThreshold",
                                                         "options": {"sleep_second": 1}}},
         "pipelines.hu-threshold.options.sleep_second", "unknown key"),
    ],
)
def test_a_route_or_option_the_pipeline_cannot_honour_is_refused_naming_the_key(route, pipelines, key, problem):
    with pytest.raises(ConfigError) as refused:
        parse_config(contract_config(route, pipelines))
    assert f"  {key}: " in str(refused.value) and problem in str(refused.value), str(refused.value)


def test_the_shipped_routes_and_options_fit_their_pipelines_and_are_read_validated():
    config = parse_config(contract_config(
        {"pipeline": "tumor-segmentation", "level": "study", "inputs": TUMOR_INPUTS},
        {"tumor-segmentation": {"options": {"min_tumor_ml": 2, "reference": ["flair"], "min_validated_dice": 0.5,
                                            "deliver_unvalidated": True}}}))
    options = contract("tumor-segmentation", config.pipelines["tumor-segmentation"].entry).options.model_validate(
        config.pipelines["tumor-segmentation"].options)
    assert options.min_tumor_ml == 2.0 and options.reference == ("flair",)
    assert options.min_validated_dice == 0.5 and options.deliver_unvalidated


def test_checking_the_shipped_config_does_not_import_torch():
    """The contracts of the shipped pipelines are read without their models: a config check stays quick."""
    code = ("import sys; from node.config import load_config; load_config(__import__('pathlib').Path('config.toml'));"
            " print(sorted(m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("[routes.inputs.t1c]", "[routes.inputs.t1ce]"), "routes[2].inputs.t1ce",
         "pipeline 'tumor-segmentation' has no input role 't1ce'; did you mean 't1c'?"),
        (('pipeline = "nodule-detection"', 'pipeline = "tumor-segmentation"'), "routes[0].level",
         "pipeline 'tumor-segmentation' takes a study's series by role (t1c, flair, t2, t1)"),
        (('pipeline = "tumor-segmentation"', 'pipeline = "nodule-detection"'), "routes[2].level",
         "pipeline 'nodule-detection' takes one series; use level = \"series\""),
        (("# options = { report_threshold = 0.9, empty_seg = false }", "options = { report_treshold = 0.9 }"),
         "pipelines.nodule-detection.options.report_treshold", "unknown key"),
        (("# options = { min_tumor_ml = 1.0 }", 'options = { min_tumor_ml = "one" }'),
         "pipelines.tumor-segmentation.options.min_tumor_ml", "valid number"),
    ],
    ids=["role-t1ce-for-t1c", "series-route-to-study-pipeline", "study-route-to-series-pipeline",
         "misspelt-option", "option-of-wrong-type"],
)
def test_serve_refuses_the_shipped_config_with_a_route_or_option_its_pipeline_cannot_honour(
        tmp_path, change, key, problem):
    """Each case used to start and end as quiet "not applicable" jobs; now ``radnode serve``
    stops at once (exit 2) with the key and the problem, before anything is received."""
    old, new = change
    text = (REPO / "config.toml").read_text()
    assert old in text
    text = text.replace(old, new, 1).replace('spool = "spool"', f'spool = "{tmp_path / "spool"}"')
    result = serve(tmp_path, text)
    assert result.returncode == 2, result.stderr
    assert f"  {key}: " in result.stderr and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "spool").exists(), "a refused config must not start receiving"


def test_a_ray_client_address_without_ray_client_installed_is_refused_naming_the_key_and_the_install(monkeypatch):
    """Without grpcio every job would wait queued behind a driver that cannot import Ray Client."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find_spec(name, *a))
    workers = {"engine": "ray", "ray": {"address": "ray://10.0.0.1:10001"}}
    with pytest.raises(ConfigError) as refused:
        parse_config({**contract_config({"pipeline": "hu-threshold"}), "workers": workers})
    message = str(refused.value)
    assert '[workers.ray] address = "ray://10.0.0.1:10001" is a Ray Client address' in message
    assert "pip install 'radnode[ray-client]'" in message


def test_ray_token_and_tls_files_are_read_from_the_configs_folder_whatever_the_working_directory(
        tmp_path, monkeypatch):
    site = tmp_path / "etc-radnode"
    (site / "ray").mkdir(parents=True)
    for name in ("token", "ca.pem", "node.pem", "node.key"):
        (site / "ray" / name).write_text(name)
    (site / "config.toml").write_text(GOOD + """
[workers]
engine = "ray"
[workers.ray]
token_file = "ray/token"
tls_ca_cert = "ray/ca.pem"
tls_cert = "ray/node.pem"
tls_key = "ray/node.key"
""")
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as `radnode serve --config /etc/radnode/config.toml` from $HOME
    ray = load_config(site / "config.toml").workers.ray
    assert (ray.token_file, ray.tls_ca_cert, ray.tls_cert, ray.tls_key) == (
        site / "ray" / "token", site / "ray" / "ca.pem", site / "ray" / "node.pem", site / "ray" / "node.key")
