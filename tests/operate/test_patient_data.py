"""Patient data stays out of logs and out of other users' reach, whatever a library prints."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.support.harness import REPO, NodeProcess, node_config, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import storescu

SOURCE = ("ct-chest", "lung-pet-ct-dx-A0002", "B40f")
#: Single-component name (no "^"): highdicom's UserWarning quotes it.
PATIENT = {"PatientName": "Trustme-Doe", "PatientID": "PID-7731-XQ", "PatientBirthDate": "19450817",
           "AccessionNumber": "ACC55102937"}


def identifiable_series(data_dir: Path, folder: Path, count: int = 12) -> list[Path]:
    """A real CT series relabelled with patient values that are easy to find in a log."""
    folder.mkdir(parents=True)
    paths = []
    for path in sorted(data_dir.joinpath(*SOURCE).glob("*.dcm"))[:count]:
        ds = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / path.name, enforce_file_format=True)
        paths.append(folder / path.name)
    return paths


def leaks(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(value in line for value in PATIENT.values())]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_warnings_quoting_the_patient_never_reach_stderr_and_files_are_private(tmp_path, orthanc, data_dir):
    series = identifiable_series(data_dir, tmp_path / "in")
    broken = tmp_path / "broken.dcm"  # refused (no SeriesInstanceUID) and kept in quarantine
    ds = pydicom.dcmread(series[0])
    del ds.SeriesInstanceUID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(broken, enforce_file_format=True)
    config = node_config(tmp_path, destinations=[orthanc.destination()], routes=[threshold_route()],
                         pipelines=threshold_pipeline())
    old_umask = os.umask(0o022)  # an administrator's usual umask: radnode must not rely on it
    try:
        node = NodeProcess(config, tmp_path).start()
    finally:
        os.umask(old_umask)
    try:
        assert storescu(node.port, series).returncode == 0
        storescu(node.port, [broken])
        index = node.index()
        wait_until(lambda: index.deliveries("sent"), 90, what="the SEG delivered")
        (job,) = index.jobs("done")
        spool = Path(config["node"]["spool"])
        files = [p for p in spool.rglob("*") if p.is_file()]
        results = [r.path for r in index.results(job.id)]
        quarantined = list((spool / "quarantine").glob("*.dcm"))
        assert results and quarantined and len(list((spool / "instances").rglob("*.dcm"))) == len(series)
    finally:
        node.stop()
    log = node.logs()
    assert leaks(log) == [], leaks(log)[:3]
    # the warning did happen, and went through the logger as JSON with the name scrubbed
    assert '"python.warning"' in log and "unlikely to represent the intended person name" in log
    for line in log.splitlines():
        json.loads(line)  # every line of every process is one JSON object
    # files that hold patient data: 0640 at most, the index (and its WAL) 0600
    index_files = {p for p in files if p.name.startswith("index.sqlite")}
    assert {p.name: oct(mode(p)) for p in index_files} == {p.name: "0o600" for p in index_files}
    loose = {str(p.relative_to(spool)): oct(mode(p)) for p in set(files) - index_files if mode(p) & 0o137}
    assert loose == {}, f"{len(loose)} of {len(files)} spool files readable by others: {list(loose.items())[:3]}"
    assert all(mode(p) == 0o640 for p in results + quarantined)
    folders = [p for p in spool.rglob("*") if p.is_dir()]
    assert [p for p in folders if mode(p) & 0o007] == []


def test_offline_run_keeps_the_patient_off_stderr(tmp_path, data_dir):
    series = identifiable_series(data_dir, tmp_path / "in", count=6)
    config = tmp_path / "config.toml"
    config.write_text('[pipelines.hu-threshold]\nentry = "tests.support.hu_threshold:HUThreshold"\n')
    run = subprocess.run(
        [sys.executable, "-m", "node.operate.cli", "run", "--config", str(config), "--pipeline", "hu-threshold",
         "--input", str(series[0].parent), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert leaks(run.stderr + run.stdout) == [], leaks(run.stderr)
    assert "python.warning" in run.stderr
    (seg,) = (tmp_path / "out").glob("*.dcm")
    assert mode(seg) & 0o137 == 0, oct(mode(seg))


def test_the_systemd_unit_creates_nothing_other_users_can_read():
    unit = (REPO / "systemd" / "radnode.service").read_text().splitlines()
    assert "UMask=0027" in unit


def test_a_library_exception_quoting_a_value_is_redacted_in_the_error_field_as_in_the_message():
    """pynetdicom logs "Exception in DUL.run()" with the exception, whose text may quote what the
    peer sent; ``message`` was redacted, ``error`` repeated it."""
    code = ("import logging; from node import logs; logs.setup()\n"
            "try:\n    raise ValueError(\"invalid value 'Trustme-Doe' in 'PID-7731-XQ'\")\n"
            "except ValueError:\n"
            "    logging.getLogger('pynetdicom.dul').exception(\"bad value 'Trustme-Doe'\")\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    (line,) = map(json.loads, run.stderr.splitlines())
    assert line["event"] == "library.log" and line["message"] == 'bad value "<redacted>"'
    assert line["error"] == 'ValueError: invalid value "<redacted>" in "<redacted>"', line
    assert not leaks(run.stderr)
