"""Index rows that a crash or a power cut took away, written again from the spool.

The receiver commits its rows after the status, in groups and without a disk flush
(``node.receive.row_batch``): each points at a file already fsynced in the spool, so a crash can
lose the last rows, never the files. A spool file the index does not know is read (its header)
and indexed again: in the series folders changed since a dead receiver's open associations began
(at its restart, at start after a kill), and everywhere at the first start after a reboot. A
clean restart skips both walks: the rows of a process that stopped are already committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom.filereader

from node import logs
from node.index.store import Index, InstanceRecord
from node.isolation import isolated
from node.receive.intake import missing_attributes
from node.receive.scp import past_identifying_attributes
from node.receive.spool import Spool

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: A folder's change time (the file system's coarse clock) may read a little before the
#: receiver's clock did when the association opened.
CLOCK_SLACK_SECONDS = 2.0
_BOOT_KEY = "boot_id"


def reindex_after_reboot(spool: Spool, index: Index) -> int:
    """Index the spool files the index lacks if the machine rebooted since the last start."""
    boot = _current_boot()
    if boot is not None and index.node_value(_BOOT_KEY) == boot:
        return 0
    added = reindex_spool(spool, index)
    if boot is not None:
        index.set_node_value(_BOOT_KEY, boot)
    return added


def reindex_open_associations(spool: Spool, index: Index, receiver_pids: Sequence[int] | None = None) -> int:
    """Index the files of associations a receiver never closed (it died, or the node was killed):
    it acknowledged them before committing their rows (``node.receive.row_batch``). Only the
    series folders changed since the oldest of those associations opened are read."""
    since = index.oldest_open_association(receiver_pids)
    return 0 if since is None else reindex_spool(spool, index, changed_since=since - CLOCK_SLACK_SECONDS)


def recover_receiver(spool: Spool, index: Index, pid: int) -> None:
    """After a receiving process died: its acknowledged instances indexed, its associations
    closed, the data sets it was receiving (never answered) removed."""
    reindex_open_associations(spool, index, [pid])
    index.close_associations_of([pid])
    spool.clear_partial_writes(pid)


def reindex_spool(spool: Spool, index: Index, changed_since: float | None = None) -> int:
    """Index every instance file of the spool that has no row (in the series folders changed
    since ``changed_since``, when given); returns how many were added.

    Series folder by series folder: a file's path names its series, so the index is asked for
    one series' rows at a time (through its series index) and a year of instance rows is never
    held in memory at once."""
    added = 0
    for folder in spool.series_folders():
        if changed_since is not None and not _changed_since(folder, changed_since):
            continue
        known = {str(path) for path in index.instance_paths(folder.name)}
        added += sum(_reindex_file(spool, index, path) for path in sorted(folder.glob("*.dcm"))
                     if str(path) not in known)
    if added:
        logs.info("reconcile.reindexed", instances=added)
    return added


def _changed_since(folder: Path, moment: float) -> bool:
    try:
        return folder.stat().st_mtime >= moment
    except FileNotFoundError:  # removed meanwhile (retention)
        return False


def _reindex_file(spool: Spool, index: Index, path: Path) -> bool:
    """Index one spool file without a row; an unreadable one is quarantined. True if indexed."""
    try:
        record = _record_of(path)
    except Exception as error:  # a file the receiver wrote is complete; anything else is kept aside
        reason, cause = f"spool file without index row cannot be read: {error}", error
        isolated("reconcile", path.name, lambda: _quarantine(spool, path, reason, cause), lambda _reason: None)
        return False
    indexed: list[bool] = []
    isolated("reconcile", path.name, lambda: indexed.append(_reindex(spool, index, record)), lambda _reason: None)
    return any(indexed)


def _reindex(spool: Spool, index: Index, record: InstanceRecord) -> bool:
    """Index a spool file whose row was lost. Its SOP Instance UID may be indexed at another
    path: it was sent again under another study or series, and a crash came between the commit
    of the move and the removal of one copy. The copy written last is the instance as it was
    last sent; the other is removed, so a reboot never moves an instance back where it was."""
    current = index.instance(record.sop_uid)
    if current is not None and current.path != record.path:
        indexed = current.path
        if indexed.exists() and indexed.stat().st_mtime_ns >= record.path.stat().st_mtime_ns:
            spool.remove_replaced(record.path)
            logs.info("reconcile.earlier_copy_removed", sop_class=record.sop_class)
            return False
    replaced = index.record_instance(record, None)
    if replaced is not None:
        spool.remove_replaced(replaced)
    return True


def _quarantine(spool: Spool, path: Path, reason: str, error: Exception) -> None:
    kept = spool.quarantine_file(path, reason)
    logs.warning("reconcile.quarantined", quarantined=kept.name, reason=type(error).__name__)


def _record_of(path: Path) -> InstanceRecord:
    with path.open("rb") as stream:
        header = pydicom.filereader.read_partial(stream, stop_when=past_identifying_attributes)
    missing = missing_attributes(header)
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return InstanceRecord.from_header(header, str(header.file_meta.TransferSyntaxUID), path,
                                      path.stat().st_size)


def _current_boot() -> str | None:
    """The kernel's id of this boot; None where there is none (then every start reconciles)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return None
