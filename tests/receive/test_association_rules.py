"""Who may associate: the called AE title must be ours, and every association is logged."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.harness import NodeProcess, node_config
from tests.support.peers import dcmtk_bin, dcmtk_env

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def echoscu(port: int, called: str, calling: str = "MODALITY1") -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk_bin("echoscu"), "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=30)


def events(node: NodeProcess, name: str) -> list[dict]:
    return [e for e in map(json.loads, node.logs().splitlines()) if e["event"] == name]


def test_a_wrong_called_ae_title_is_rejected_and_every_association_is_logged(tmp_path):
    node = NodeProcess(node_config(tmp_path), tmp_path).start()
    try:
        wrong = echoscu(node.port, called="OTHERNODE")
        right = echoscu(node.port, called="RADNODE", calling="MODALITY2")
    finally:
        node.stop()
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr, wrong.stderr
    assert right.returncode == 0, right.stderr
    (rejected,) = events(node, "association.rejected")
    assert {k: rejected[k] for k in ("calling_aet", "called_aet", "address")} == {
        "calling_aet": "MODALITY1", "called_aet": "OTHERNODE", "address": "127.0.0.1"}
    assert "called AE title is not RADNODE" in rejected["reason"]
    (accepted,) = events(node, "association.accepted")
    assert {k: accepted[k] for k in ("calling_aet", "called_aet", "address")} == {
        "calling_aet": "MODALITY2", "called_aet": "RADNODE", "address": "127.0.0.1"}
    assert isinstance(accepted["port"], int)


def test_the_called_ae_title_check_can_be_turned_off(tmp_path):
    node = NodeProcess(node_config(tmp_path, node={"require_called_ae": False}), tmp_path).start()
    try:
        result = echoscu(node.port, called="ANY-SCP")
    finally:
        node.stop()
    assert result.returncode == 0, result.stderr
    (accepted,) = events(node, "association.accepted")
    assert accepted["called_aet"] == "ANY-SCP"
