"""The dispatcher's pynetdicom SCU, as patched by node.dicomnet.patches: it never loses a
response, and the PDUs it sends in batches are the ones the PACS asked for."""

from __future__ import annotations

import io
import logging
import time

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from node.deliver import cstore
from node.dicomnet import command_sets, patches
from tests.receive.test_pdata_stream import data_set_bytes
from tests.support.peers import BitPreservingStorescp
from tests.support.probes import ct_file

pytestmark = [pytest.mark.peers]


def test_a_c_store_response_the_reactor_takes_in_the_pause_race_still_reaches_the_delivery(tmp_path, data_dir,
                                                                                          caplog):
    """pynetdicom's ``send_c_store`` pauses the association's reactor by waiting for a flag that
    still says "paused" from the previous C-STORE while the reactor has been released and not yet
    run; that reactor can take the next response, which stock pynetdicom drops, and the delivery
    then waits out its DIMSE timeout (CI saw it in a test's SCU). Here the reactor runs unpaused
    for a whole C-STORE, the widest that window can be: the response still reaches the caller."""
    patches.install(patches.SENDER)
    ds = pydicom.dcmread(ct_file(data_dir))
    with BitPreservingStorescp(tmp_path / "pacs") as pacs:
        ae = AE("RADNODE")
        ae.dimse_timeout = 10
        ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title="RADNODE")
        assert assoc.is_established
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CTImageStorage
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = io.BytesIO(encode(ds, True, True))
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            assoc.dimse.send_msg(request, assoc.accepted_contexts[0].context_id)
            time.sleep(0.5)  # storescp answers in milliseconds: the running reactor takes the response
            _, response = assoc.dimse.get_msg(block=True)
        assoc.release()
    assert response is not None, "the response was dropped: the caller waited out its 10 s DIMSE timeout"
    assert int(response.Status) == 0x0000
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(list((tmp_path / "pacs").iterdir())) == 1, "storescp stored the image once"


@pytest.mark.parametrize("max_pdu", [4096, 131072])
def test_a_ct_image_sent_in_batched_pdus_arrives_bit_identical_within_the_pacs_max_pdu(tmp_path, data_dir, max_pdu):
    """The patch queues a message's P-DATA-TF PDUs in batches and writes each batch at once;
    dcmtk storescp rejects a PDU longer than the maximum it announced, and writes what it
    received byte for byte (--bit-preserving)."""
    patches.install(patches.SENDER)
    source = ct_file(data_dir)
    with BitPreservingStorescp(tmp_path / "pacs", max_pdu=max_pdu) as pacs:
        ae = AE("RADNODE")
        ae.add_requested_context(CTImageStorage, [str(pydicom.dcmread(source).file_meta.TransferSyntaxUID)])
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title="RADNODE")
        assert assoc.is_established
        status = assoc.send_c_store(source)
        assoc.release()
    assert int(status.Status) == 0x0000
    (received,) = (tmp_path / "pacs").iterdir()
    assert data_set_bytes(received) == data_set_bytes(source)


@pytest.mark.parametrize("max_pdu", [4096, 16384, 131072])
def test_a_file_sent_as_the_dispatcher_sends_it_arrives_bit_identical_within_the_pacs_max_pdu(tmp_path, data_dir,
                                                                                            max_pdu, monkeypatch):
    """The dispatcher's C-STORE of a file (its bytes as they are, the PDUs encoded by
    node.dicomnet.sending without pynetdicom's message objects): dcmtk storescp rejects a
    PDU longer than it announced and keeps the bytes it received (--bit-preserving)."""
    patches.install(patches.SENDER)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sources = sorted(ct_file(data_dir).parent.glob("*.dcm"))[:2]
    with BitPreservingStorescp(tmp_path / "pacs", max_pdu=max_pdu) as pacs:
        ae = AE("RADNODE")
        ae.add_requested_context(CTImageStorage, [str(pydicom.dcmread(sources[0]).file_meta.TransferSyntaxUID)])
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title="RADNODE")
        assert assoc.is_established
        cstore._without_message_logging(assoc)
        statuses = [int(assoc.send_c_store(source).Status) for source in sources]
        assoc.release()
    assert statuses == [0x0000, 0x0000]
    received = {pydicom.dcmread(path).SOPInstanceUID: path for path in (tmp_path / "pacs").iterdir()}
    for source in sources:
        assert data_set_bytes(received[pydicom.dcmread(source).SOPInstanceUID]) == data_set_bytes(source)


def test_a_c_store_request_command_is_the_bytes_pynetdicom_would_send():
    from pynetdicom.dimse_messages import C_STORE_RQ

    for sop_class, sop_uid, message_id, priority in ((CTImageStorage, "1.2.3.4", 1, 2),
                                                     ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 65535, 0)):
        primitive = C_STORE()
        primitive.MessageID = message_id
        primitive.AffectedSOPClassUID = sop_class
        primitive.AffectedSOPInstanceUID = sop_uid
        primitive.Priority = priority
        primitive.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        expected = encode(message.command_set, True, True)
        assert command_sets.store_request(sop_class, message_id, priority, sop_uid) == expected


def test_a_c_store_response_read_lean_is_the_primitive_pynetdicom_decodes_from_the_same_bytes():
    from pynetdicom.dimse_messages import C_STORE_RSP

    from node.dicomnet import responses

    for status, sop_uid, message_id in ((0x0000, "1.2.3.4", 1), (0xB000, "1.2.3.45", 65535), (0xA700, "1.2.3", 7)):
        sent = C_STORE()
        sent.MessageIDBeingRespondedTo = message_id
        sent.AffectedSOPClassUID = CTImageStorage
        sent.AffectedSOPInstanceUID = sop_uid
        sent.Status = status
        message = C_STORE_RSP()
        message.primitive_to_message(sent)
        command = encode(message.command_set, True, True)
        decoded = C_STORE_RSP()
        decoded.command_set = pydicom.dcmread(io.BytesIO(command), force=True)  # as pynetdicom reads it
        theirs, ours = decoded.message_to_primitive(), responses.store_response(command)
        assert ours is not None and ours.is_valid_response
        for field in ("MessageIDBeingRespondedTo", "Status", "AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            assert getattr(ours, field) == getattr(theirs, field), field
    # a response with an element the lean reader does not read is left to pynetdicom
    sent.ErrorComment = "disk full"
    message = C_STORE_RSP()
    message.primitive_to_message(sent)
    assert responses.store_response(encode(message.command_set, True, True)) is None
