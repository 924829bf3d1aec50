"""The radnode command line as an administrator uses it."""

from __future__ import annotations

import pydicom

from tests.harness import NodeProcess, node_config, threshold_pipeline, threshold_route
from tests.peers import Orthanc


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
    assert any(line.strip().startswith("no match ct-chest") and "SliceThickness = 8, not <= 5" in line for line in lines)
    assert any(line.strip().startswith("no match mr-only") and "Modality = 'CT', not 'MR'" in line for line in lines)
    cptac = node.cli("route-test", str(data_dir / "ct-chest" / "cptac-luad-C3N-00247" / "000022.dcm"))
    assert "MATCH    ct-chest" in cptac.stdout


def test_echo_a_destination(tmp_path):
    orthanc = Orthanc(tmp_path / "pacs").start()
    try:
        config = node_config(tmp_path, destinations=[
            {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": 9}])
        node = NodeProcess(config, tmp_path)
        ok = node.cli("echo", "pacs")
        assert ok.returncode == 0 and "status 0x0000" in ok.stdout
        down = node.cli("echo", "down")
        assert down.returncode == 1 and "is it running" in down.stderr
        unknown = node.cli("echo", "nope")
        assert unknown.returncode == 2 and "configured: pacs, down" in unknown.stderr
    finally:
        orthanc.stop()


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


def test_every_command_has_help(tmp_path):
    node = NodeProcess(node_config(tmp_path), tmp_path)
    for command in ("serve", "run", "route-test", "jobs", "deliveries", "retry", "echo"):
        result = node.cli(command, "--help")
        assert result.returncode == 0 and "--config" in result.stdout, command
