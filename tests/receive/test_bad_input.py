"""Bad input gets a clear DIMSE answer, loses nothing, and the node keeps serving."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests.support.harness import NodeProcess, node_config
from tests.support.peers import dcmtk_bin, dcmtk_env, storescu
from tests.support.probes import ct_file, quarantine_reasons
from tests.support.raw_scu import exchange

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def raw_store(port: int, context_class: str, dataset: pydicom.Dataset, sop_uid: str) -> int:
    """C-STORE a dataset exactly as given (pynetdicom's send_c_store would refuse or fix it)."""
    ae = AE("BADSCU")
    ae.add_requested_context(context_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = context_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    implicit = context.transfer_syntax[0] == ImplicitVRLittleEndian
    request.DataSet = io.BytesIO(encode(dataset, implicit, True))
    response = exchange(assoc, request, context.context_id)
    assoc.release()
    return int(response.Status)


def echo_ok(port: int, calling: str = "ECHOSCU") -> bool:
    result = subprocess.run([dcmtk_bin("echoscu"), "-aet", calling, "-aec", "RADNODE", "127.0.0.1", str(port)],
                            capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    return result.returncode == 0


def test_dataset_without_sop_instance_uid_is_refused_and_quarantined(node, data_dir):
    ds = pydicom.dcmread(ct_file(data_dir))
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    assert raw_store(node.port, CTImageStorage, ds, uid) == 0xC000
    assert quarantine_reasons(Path(node.config["node"]["spool"])) == ["missing SOPInstanceUID"]
    assert node.index().count_instances() == 0
    assert echo_ok(node.port)


def test_sop_class_not_matching_its_context_is_refused(node, data_dir):
    ds = pydicom.dcmread(ct_file(data_dir))
    ds.SOPClassUID = MRImageStorage
    assert raw_store(node.port, CTImageStorage, ds, ds.SOPInstanceUID) == 0xA900
    assert quarantine_reasons(Path(node.config["node"]["spool"])) == ["SOPClassUID does not match the presentation context"]
    assert node.index().count_instances() == 0
    good = storescu(node.port, [ct_file(data_dir)])
    assert good.returncode == 0 and node.index().count_instances() == 1


def test_disk_below_watermark_answers_out_of_resources(tmp_path, data_dir):
    config = node_config(tmp_path, node={"min_free_disk_mb": 1 << 40})
    with_full_disk = NodeProcess(config, tmp_path).start()
    try:
        ds = pydicom.dcmread(ct_file(data_dir))
        assert raw_store(with_full_disk.port, CTImageStorage, ds, ds.SOPInstanceUID) == 0xA700
        assert with_full_disk.index().count_instances() == 0
        assert echo_ok(with_full_disk.port)
    finally:
        with_full_disk.stop()


def test_calling_ae_not_on_allow_list_is_rejected(tmp_path, data_dir):
    config = node_config(tmp_path)
    config["allow"] = [{"ae_title": "CT_SCANNER"}, {"ae_title": "MR_SCANNER", "addresses": ["10.0.0.0/8"]}]
    process = NodeProcess(config, tmp_path).start()
    try:
        sent = storescu(process.port, [ct_file(data_dir)], calling_aet="INTRUDER")
        assert sent.returncode != 0 and "Association Rejected" in sent.stderr
        # allowed title, but not from this address
        assert not echo_ok(process.port, calling="MR_SCANNER")
        assert process.index().count_instances() == 0
        assert storescu(process.port, [ct_file(data_dir)], calling_aet="CT_SCANNER").returncode == 0
        assert process.index().count_instances() == 1
        assert '"association.rejected"' in process.logs()
    finally:
        process.stop()


def test_storage_class_outside_the_list_needs_accept_all(tmp_path, data_dir):
    us = data_dir / "transfer-syntaxes" / "nema-wg04" / "REF" / "US1_UNC"
    config = node_config(tmp_path)
    process = NodeProcess(config, tmp_path).start()
    try:
        assert storescu(process.port, [us]).returncode != 0
    finally:
        process.stop()
    (tmp_path / "all").mkdir()
    config = node_config(tmp_path / "all", node={"accept_all_storage": True})
    process = NodeProcess(config, tmp_path / "all").start()
    try:
        assert storescu(process.port, [us]).returncode == 0
        assert process.index().count_instances() == 1
    finally:
        process.stop()


def test_repeated_instance_replaces_and_counts_once(node, data_dir):
    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))[:3]
    assert storescu(node.port, files).returncode == 0
    assert storescu(node.port, files[:1]).returncode == 0
    index = node.index()
    assert index.count_instances() == 3
    (series,) = index.all_series()
    assert series.instance_count == 3
