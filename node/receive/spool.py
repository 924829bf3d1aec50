"""The spool: the folder of DICOM files next to the index.

A file is either complete under its final name or not there at all: bytes go to a temporary
name in the same file system, are fsynced, renamed, and the folder is fsynced, so an
acknowledged instance survives a crash or a power cut, and a crash mid-write leaves only a
``tmp/`` file that the next start removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.receive.screening import uid_problem

#: Nothing radnode creates is readable by other users: files 0640, folders 0750 at most.
PRIVATE_UMASK = 0o027
#: How much of a data set is gathered in memory before it is written (a 512 x 512 CT slice is
#: 0.5 MiB): memory held per data set being received.
BUFFER_BYTES = 2 * 1024 * 1024


def keep_private() -> None:
    """Add ``PRIVATE_UMASK`` to this process's umask (children inherit it).

    Received images, results, the index and quarantined objects all hold patient data; the
    explicit modes on the files radnode writes itself do not cover what SQLite and libraries
    create, and a service started by hand does not get the systemd unit's ``UMask=0027``.
    """
    os.umask(os.umask(0) | PRIVATE_UMASK)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.results = root / "results"
        self.quarantine = root / "quarantine"
        self.tmp = root / "tmp"
        for folder in (self.instances, self.results, self.quarantine, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The file of one instance, named by its UIDs themselves.

        Only valid UIDs (digits and dots) are accepted, so a peer's string can never climb out
        of the spool, and two different SOP Instance UIDs never share a file.
        """
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                          ("SOPInstanceUID", sop_uid)):
            problem = uid_problem(name, uid)
            if problem is not None:
                raise ValueError(problem)
        return self.instances / study_uid / series_uid / f"{sop_uid}.dcm"

    def result_dir(self, job_id: int) -> Path:
        return self.results / str(job_id)

    def write(self, path: Path, data: bytes | Sequence[bytes]) -> None:
        """Durably place ``data`` (bytes, or chunks written in order) at ``path``, replacing any
        earlier file atomically."""
        part = self.open_part()
        try:
            for chunk in [data] if isinstance(data, bytes) else data:
                part.write(chunk)
        except BaseException:
            part.discard()
            raise
        part.commit(path)

    def open_part(self) -> PartFile:
        """A new file under ``tmp/`` to be written piece by piece, then committed to its name."""
        return PartFile(self.tmp / f"{os.getpid()}-{time.monotonic_ns()}.part")

    def quarantine_bytes(self, data: bytes | Sequence[bytes], reason: str) -> Path:
        """Keep a refused object with the reason beside it, so that nothing sent is lost."""
        kept = self._quarantine_slot(reason)
        self.write(kept, data)
        return kept

    def quarantine_part(self, part: PartFile, reason: str) -> Path:
        """Keep a refused object received into ``part`` with the reason beside it."""
        kept = self._quarantine_slot(reason)
        part.commit(kept)
        return kept

    def quarantine_file(self, path: Path, reason: str) -> Path:
        """Move a spool file the node cannot use out of the way, with the reason beside it."""
        kept = self._quarantine_slot(reason)
        os.replace(path, kept)
        _fsync_dir(self.quarantine)
        return kept

    def _quarantine_slot(self, reason: str) -> Path:
        """A new quarantine file name, its reason already written beside it."""
        stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
        (self.quarantine / f"{stem}.reason.txt").write_text(reason + "\n")
        return self.quarantine / f"{stem}.dcm"

    def remove_replaced(self, path: Path) -> None:
        """Remove the earlier copy of an instance sent again under another study or series
        (``SeriesIndex.record_instance`` returned it), durably: a reboot must not find it."""
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def instance_files(self) -> Iterator[Path]:
        """Every stored instance file (study/series/instance.dcm under ``instances``)."""
        return self.instances.glob("*/*/*.dcm")

    def series_folders(self) -> Iterator[Path]:
        """Every series folder (study/series under ``instances``): its name is the series' UID."""
        return (folder for folder in self.instances.glob("*/*") if folder.is_dir())

    def clear_partial_writes(self, pid: int | None = None) -> int:
        """Remove temporary files a crash left behind (of one dead process, or all); they were
        never acknowledged."""
        removed = 0
        for part in self.tmp.glob("*.part" if pid is None else f"{pid}-*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free


class PartFile:
    """A file written under ``tmp/`` that appears at its final name only once it is durable.

    The receiver streams a data set into one fragment by fragment as the P-DATA arrives: its
    first ``BUFFER_BYTES`` are gathered in memory and written with one call (each ``write`` to
    a new file costs the kernel more than the copy), the rest as it comes, so memory stays
    bounded; ``commit`` makes it durable and gives it its name.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.size = 0
        self._fd: int | None = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)  # read by ``mapped``
        #: Every byte written so far while they fit ``BUFFER_BYTES`` (None once the file outgrew
        #: it), of which the first ``_handed`` were handed to the kernel.
        self._memory: bytearray | None = bytearray()
        self._handed = 0
        #: Whether every byte written so far is on the disk (``sync``).
        self._synced = False
        #: ``sync`` may run in one thread while another commits or discards the file.
        self._lock = threading.Lock()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._fd is not None, "write to a committed or discarded part file"
        view = memoryview(data)
        self.size += len(view)
        self._synced = False
        with self._lock:
            if self._memory is not None and self.size <= BUFFER_BYTES:
                self._memory += view
                return
            self._flush()
            self._memory = None
        _write_all(self._fd, view)

    def _flush(self) -> None:
        """Hand what is gathered to the kernel (the caller holds the lock)."""
        if self._memory is None or self._fd is None:
            return
        with memoryview(self._memory) as whole:
            while self._handed < len(whole):  # counted as it goes: a failed write is retried from there
                self._handed += os.write(self._fd, whole[self._handed:])

    @contextlib.contextmanager
    def mapped(self) -> Iterator[memoryview | mmap.mmap]:
        """What was written so far, read-only: from memory while it all fits there, else the file
        mapped into memory (not read, not opened again)."""
        with self._lock:
            assert self._fd is not None, "map of a committed or discarded part file"
            view = None if self._memory is None else memoryview(self._memory).toreadonly()
        if view is not None:
            with view:
                yield view
            return
        mapping = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        with mapping:
            yield mapping

    def start_writeback(self) -> None:
        """Ask the kernel to start writing what was written so far to the disk, without waiting
        (sync_file_range SYNC_FILE_RANGE_WRITE): the receiver calls it before it checks a data
        set, so that ``commit``'s flush finds most of the data already on its way. A no-op
        where the call does not exist; ``commit`` flushes and reports errors either way."""
        with self._lock:
            try:
                self._flush()
            except OSError:
                return  # a full disk: ``commit`` writes again and reports it
            if self._fd is not None and not self._synced and _sync_file_range is not None:
                _sync_file_range(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def sync(self) -> None:
        """Flush what was written to the disk now, ahead of ``commit``. The receiver calls it
        from the thread that wrote the last fragment while the C-STORE handler checks the data
        set in its own thread: the flush, the longest step before an acknowledgement, then
        overlaps the checks. A failed flush is left for ``commit`` to repeat and report."""
        with self._lock:
            if self._fd is None or self._synced:
                return
            try:
                self._flush()
                os.fdatasync(self._fd)
            except OSError:
                return
            self._synced = True

    def commit(self, path: Path) -> None:
        """fsync, rename to ``path`` (replacing any earlier file atomically) and fsync the
        folders that changed; on failure the temporary file is gone (a partial file on a full
        disk would keep it full and every later write refused)."""
        folder = path.parent
        try:
            with self._lock:
                assert self._fd is not None, "commit of a committed or discarded part file"
                try:
                    self._flush()
                    if not self._synced:
                        os.fdatasync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
            new_folder = False
            try:
                os.replace(self.tmp, path)  # into its series' folder, there already but for the first
            except FileNotFoundError:
                new_folder = not folder.exists()
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(self.tmp, path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        if new_folder:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)

    def discard(self) -> None:
        """Remove the file; it was never acknowledged. Safe to call more than once."""
        with self._lock:
            self._memory = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self.tmp.unlink(missing_ok=True)


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, "DICM" and the file meta group of a received instance, as PS3.10 lays them out.

    This runs once per received image, so it is encoded directly: building a pydicom
    FileMetaDataset and writing it cost more than the rest of the receive path together.
    The elements are those pynetdicom itself writes, in the same explicit VR little endian form.
    """
    elements = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _short_element(0x0002, b"UI", _padded(sop_class, b"\x00")),
        _short_element(0x0003, b"UI", _padded(sop_instance, b"\x00")),
        _short_element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _short_element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _short_element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        _short_element(0x0016, b"AE", _padded(source_ae.strip(), b" ")),
    ))
    group_length = _short_element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements


def _short_element(element: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian group 0x0002 element with a 2-byte length field."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _libc_sync_file_range()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
