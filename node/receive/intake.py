"""The one way a received data set enters the spool and the index, whatever carried it.

The DIMSE receiver (node.receive.scp) and the STOW-RS receiver (node.receive.stow) both write a
data set to a spool part file as it arrives, then hand it here: its structure is walked where it
lies and its identifying attributes read on the same walk (``screen``), checked against what its
carrier claimed (the C-STORE command, or the part's file meta and the URL's study), and then it
is fsynced and renamed into the spool before the caller answers success, or kept in the
quarantine folder with the reason; its index row is committed with others within milliseconds
(``node.receive.row_batch``) and always before its association is marked closed. So a success
status, 0x0000 or HTTP 200, means the same thing whichever way an instance came.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from node import logs
from node.index.store import Index, InstanceRecord
from node.receive.row_batch import RowBatch
from node.receive.screening import StructureError, check_structure, inflated, uid_problem
from node.receive.spool import PartFile, Spool

#: The UIDs that name the spool's folders and files, or that later stages compare.
UID_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
REQUIRED_ATTRIBUTES = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")

# DIMSE statuses (PS3.4 Annex B.2.3 and PS3.7 Annex C); STOW-RS reports the same codes (PS3.18 10.5.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

#: The attributes the receiver reads, by tag; all lie in groups 0x0008 and 0x0020.
IDENTIFYING_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080060: "Modality",
                    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID"}
_MODALITY = 0x00080060


@dataclass(frozen=True)
class StoreRefusal:
    status: int
    reason: str

    def response(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.reason[:64]
        return ds


@dataclass(frozen=True)
class Claim:
    """An attribute's value as the carrier stated it (the C-STORE command, the file meta, the
    STOW-RS URL): the data set must agree, or it is refused with ``status`` and ``reason``."""

    attribute: str
    value: str
    status: int
    reason: str


@dataclass(frozen=True)
class Arrival:
    """A data set its carrier has written to a part file (file meta first, ``header_size`` bytes)."""

    part: PartFile
    transfer_syntax: str
    header_size: int
    claims: tuple[Claim, ...]


@dataclass(frozen=True)
class Source:
    """Who sent it: the association (a DIMSE association, or one STOW-RS request) whose release
    lets completion settle, with the sender's name and address as the index records them."""

    association: str
    sender: str
    address: str
    pid: int


@dataclass(frozen=True)
class Stored:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str


def missing_attributes(dataset: Dataset | Mapping[str, object]) -> list[str]:
    """The attributes the node needs to index an instance that ``dataset`` lacks or has empty."""
    return [k for k in REQUIRED_ATTRIBUTES if not str(dataset.get(k, "") or "").strip()]


def screen(part: PartFile, header_size: int, transfer_syntax: str) -> dict[str, str | list[str]]:
    """Walk a received data set's element structure where it lies (the part file, mapped into
    memory, not copied) and return its identifying attributes, read on the same walk.

    Raises StructureError for a data set a parser could not safely walk (node.receive.screening).
    Decoding every element of a 0.5 MB image with pydicom only to read five of them cost more
    than writing it. Deflated data is inflated first, within its limits (``inflated``).
    """
    syntax = UID(transfer_syntax)
    tags = frozenset(IDENTIFYING_TAGS)
    problem = None
    with part.mapped() as mapped:
        with memoryview(mapped) as whole, whole[header_size:] as data:
            try:
                if syntax == DeflatedExplicitVRLittleEndian:
                    with inflated(data) as plain:
                        raw = check_structure(plain, False, collect=tags)
                else:
                    raw = check_structure(data, syntax.is_implicit_VR, little_endian=syntax.is_little_endian,
                                          collect=tags)
            except StructureError as error:
                # raised below, once its traceback no longer holds views of the mapped file
                problem = str(error)
    if problem is not None:
        raise StructureError(problem)
    return {IDENTIFYING_TAGS[tag]: _value(tag, value) for tag, value in raw.items()}


def _value(tag: int, raw: bytes) -> str | list[str]:
    """A UI or CS value as text (a list when it has several): UIDs lose their trailing NUL or
    space padding, code strings their spaces (PS3.5 6.2), as pydicom reads them."""
    strip = " " if tag == _MODALITY else None
    values = [v.strip(strip) if strip else v.rstrip("\x00 ") for v in raw.decode("latin-1").split("\\")]
    return values[0] if len(values) == 1 else values


def check(identifiers: Mapping[str, object], claims: tuple[Claim, ...]) -> StoreRefusal | None:
    """Why an instance with these identifying attributes cannot be stored, or None."""
    missing = missing_attributes(identifiers)
    if missing:
        return StoreRefusal(CANNOT_UNDERSTAND, f"missing {', '.join(missing)}")
    for name in UID_ATTRIBUTES:
        problem = uid_problem(name, identifiers[name])
        if problem is not None:
            return StoreRefusal(CANNOT_UNDERSTAND, problem)
    for claim in claims:
        if str(identifiers[claim.attribute]) != claim.value:
            return StoreRefusal(claim.status, claim.reason)
    return None


class Intake:
    """Screen, store and index received data sets for one receiver process (its spool and its
    index connection, shared by its threads)."""

    def __init__(self, spool: Spool, index: Index) -> None:
        self.spool = spool
        self.index = index
        self._lock = threading.RLock()
        self._registered: set[str] = set()
        self.rows = RowBatch(index, self._lock, spool.remove_replaced)

    def take(self, arrival: Arrival, source: Source | None) -> Stored | StoreRefusal:
        """Check one arrived data set, then make it durable under its name and index it, or keep it
        aside with the reason; the caller answers success only for ``Stored``."""
        try:
            identifiers = screen(arrival.part, arrival.header_size, arrival.transfer_syntax)
            refusal = check(identifiers, arrival.claims)
        except StructureError as error:
            refusal = StoreRefusal(CANNOT_UNDERSTAND, f"dataset structure: {error}")
        except Exception as error:  # an undecodable dataset must not take the association down
            refusal = StoreRefusal(CANNOT_UNDERSTAND, f"dataset cannot be parsed: {type(error).__name__}")
        if refusal is not None:
            self.quarantine(arrival.part, refusal)
            return refusal
        try:
            return self.store(identifiers, arrival, source)
        except OSError as error:
            logs.error("store.failed", reason=str(error))
            return StoreRefusal(OUT_OF_RESOURCES, f"cannot write to spool: {error.strerror}")
        except sqlite3.Error as error:
            logs.error("store.failed", reason=f"index: {error}")
            return StoreRefusal(OUT_OF_RESOURCES, f"cannot write to the index: {error}")

    def quarantine(self, part: PartFile, refusal: StoreRefusal) -> None:
        """Keep a refused dataset with its reason (its file meta is left out when the command's
        own UIDs could not make one, rather than losing the data)."""
        try:
            kept = self.spool.quarantine_part(part, refusal.reason)
        except OSError as error:
            logs.error("store.quarantine_failed", status=f"0x{refusal.status:04X}", reason=refusal.reason,
                       error=error.strerror)
            return
        logs.warning("store.refused", status=f"0x{refusal.status:04X}", reason=refusal.reason,
                     quarantined=kept.name)

    def store(self, identifiers: Mapping[str, object], arrival: Arrival, source: Source | None) -> Stored:
        stored = Stored(*(str(identifiers[k]) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                         "SOPInstanceUID", "SOPClassUID")))
        path = self.spool.instance_path(stored.study_uid, stored.series_uid, stored.sop_uid)
        record = InstanceRecord(sop_uid=stored.sop_uid, series_uid=stored.series_uid, study_uid=stored.study_uid,
                                modality=str(identifiers["Modality"]), sop_class=stored.sop_class,
                                transfer_syntax=arrival.transfer_syntax, path=path, size=arrival.part.size)
        replacing = path.exists()
        arrival.part.commit(path)
        try:
            self._index_instance(record, source)
        except sqlite3.Error:
            # Unacknowledged and unindexed, the new file must go (the sender will send it again);
            # a file that replaced an indexed instance stays, its row still points at it.
            if not replacing:
                path.unlink(missing_ok=True)
            raise
        return stored

    def _index_instance(self, record: InstanceRecord, source: Source | None) -> None:
        with self._lock:
            if source is not None and source.association not in self._registered:
                self.index.open_association(source.association, source.sender, source.address, source.pid)
                self._registered.add(source.association)
            self.rows.add(record, None if source is None else source.association)

    def end(self, association: str) -> None:
        """The association (or request) is over: its rows are committed, then completion may
        settle the series it carried."""
        if association in self._registered:
            self._registered.discard(association)
            with self._lock:
                self.rows.commit_logged()
                self.index.close_association(association)
