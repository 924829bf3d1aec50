"""The spool's file format and its durable writes: what a received instance looks like on disk."""

from __future__ import annotations

import errno
import os
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode_file_meta

from node.receive.spool import Spool, part10_header


def test_file_meta_is_what_pynetdicom_and_pydicom_would_write():
    for sop_uid, syntax, ae in (("1.2.3.4", ExplicitVRLittleEndian, "CT_SCANNER_1"),
                                ("1.2.840.99.12345", JPEGLSLossless, "PACS")):
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
        meta.SourceApplicationEntityTitle = ae
        header = part10_header(CTImageStorage, sop_uid, syntax, ae)
        assert header[:132] == b"\x00" * 128 + b"DICM"
        assert header[132:] == encode_file_meta(meta)
        read = pydicom.dcmread(BytesIO(header), force=True).file_meta
        assert read.MediaStorageSOPInstanceUID == sop_uid and read.TransferSyntaxUID == syntax


def test_an_early_flush_covers_what_was_written_before_it_and_commit_flushes_the_rest(tmp_path, monkeypatch):
    flushed: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (flushed.append(os.fstat(fd).st_size), real(fd))[1])
    spool = Spool(tmp_path)
    part = spool.open_part()
    part.write(b"a" * 100)
    part.sync()  # the receiver's flush after the last fragment
    part.commit(tmp_path / "one.dcm")
    assert flushed == [100], "a flushed file is not flushed twice"
    part = spool.open_part()
    part.write(b"b" * 100)
    part.sync()
    part.write(b"c" * 50)  # written after the flush: the commit must flush again
    part.commit(tmp_path / "two.dcm")
    assert flushed == [100, 100, 150]


def test_a_failed_early_flush_is_repeated_by_the_commit_which_reports_it(tmp_path, monkeypatch):
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    spool = Spool(tmp_path)
    part = spool.open_part()
    part.write(b"a" * 100)
    monkeypatch.setattr(os, "fdatasync", failing)
    part.sync()  # no exception in the receiving thread
    with pytest.raises(OSError, match="Input/output"):
        part.commit(tmp_path / "one.dcm")
    assert not (tmp_path / "one.dcm").exists() and not part.tmp.exists(), "nothing half-written is left"


def test_writeback_started_before_the_checks_still_leaves_the_flush_to_the_commit(tmp_path, monkeypatch):
    """``start_writeback`` only starts the kernel writing; it promises nothing, so the commit
    flushes as if it had not run, and the file is whole under its name."""
    flushed: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    part = Spool(tmp_path).open_part()
    part.write(b"a" * 4096)
    part.start_writeback()
    part.write(b"b" * 10)
    part.start_writeback()
    part.commit(tmp_path / "one.dcm")
    assert flushed == [4106]
    assert (tmp_path / "one.dcm").read_bytes() == b"a" * 4096 + b"b" * 10
    part.start_writeback()  # after the commit: nothing to write, no error
