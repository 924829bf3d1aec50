"""The spool's file format: what a received instance looks like on disk."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode_file_meta

from node.spool import part10_header


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
