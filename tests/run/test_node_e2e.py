"""storescu -> radnode -> pipeline -> Orthanc, with real data and real peers."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.support.harness import start_node, wait_until
from tests.support.peers import BitPreservingStorescp, send

#: NEMA WG04 folder -> (storescu option that proposes its transfer syntax, storescp option that
#: accepts it). Debian's dcmtk has no JPEG 2000 codec, so storescp cannot be the reference there.
LOSSLESS_SYNTAXES = {"JLSL": ("-xt", "+xt"), "J2KR": ("-xv", None), "JPLL": ("-xs", "+xs"),
                     "RLE": ("-xr", "+xr")}
#: NEMA WG04 images whose SOP class the node accepts by default (US and NM need accept_all_storage)
DEFAULT_CLASSES = ("CT", "MR")


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta group: what travels in the C-STORE."""
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return f.read()


def assert_stored_as_sent(index, files: list[Path], reference_dir: Path | None) -> None:
    """Each file is indexed and its stored bytes are what dcmtk's bit-preserving storescp received
    for the same send (storescu may re-encode a file on the way); without that reference, the
    stored object must equal the source file."""
    wire = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in (reference_dir.iterdir() if reference_dir else ())}
    for path in files:
        source = pydicom.dcmread(path)
        uid = str(source.SOPInstanceUID)
        row = index.instance(uid)
        assert row is not None, f"{path.name} acknowledged but not indexed"
        if wire:
            assert dataset_bytes(row.path) == dataset_bytes(wire[uid])
        else:
            assert pydicom.dcmread(row.path) == source


def send_to_both(node, files: list[Path], tmp_path: Path, prefer: str | None = "+x=",
                 propose: tuple[str, ...] = ("--required",)) -> Path | None:
    reference_dir = None
    if prefer is not None:
        with BitPreservingStorescp(tmp_path / "wire", prefer) as reference:
            send(reference.port, files, propose=propose)
        reference_dir = reference.folder
    send(node.port, files, propose=propose)
    return reference_dir


@pytest.fixture
def node(tmp_path: Path, orthanc):
    process = start_node(tmp_path, orthanc)
    yield process
    process.stop()


def test_chest_ct_is_stored_byte_identical_routed_and_delivered(node, orthanc, data_dir, tmp_path):
    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
    wire = send_to_both(node, files, tmp_path)
    index = node.index()
    assert_stored_as_sent(index, files, wire)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    job = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 90, what="job end")[0]
    assert job.state == "done", job.outcome
    wait_until(lambda: index.deliveries("sent"), 60, what="delivery")

    def seg_in_pacs(pacs):
        return [i for i in pacs.instances_of_study(study_uid) if i["MainDicomTags"].get("SOPInstanceUID")
                == index.results(job.id)[0].sop_uid]
    assert orthanc.wait_for(seg_in_pacs, timeout=30)


@pytest.mark.parametrize("syntax", sorted(LOSSLESS_SYNTAXES))
def test_compressed_transfer_syntaxes_are_stored_as_received(node, data_dir, syntax, tmp_path):
    folder = data_dir / "transfer-syntaxes" / "nema-wg04" / syntax
    files = sorted(p for p in folder.iterdir() if p.name.startswith(DEFAULT_CLASSES))
    propose, accept = LOSSLESS_SYNTAXES[syntax]
    wire = send_to_both(node, files, tmp_path, accept, (propose,))
    index = node.index()
    assert_stored_as_sent(index, files, wire)
    for path in files:
        row = index.instance(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        assert row.transfer_syntax == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
