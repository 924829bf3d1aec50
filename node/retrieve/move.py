"""C-MOVE of one study from a ``[[sources]]`` PACS to the node's own AE title: the instances
come in through the node's receivers like any C-STORE (fsynced, screened, indexed)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from node.config import Config, Source
from node.retrieve.query import PacsError, association

_PENDING = (0xFF00,)
#: sub-operations ended with failures or warnings (PS3.4 C.4.2.1.4): some instances did not come
_WARNING = 0xB000


@dataclass(frozen=True)
class Moved:
    """What the PACS said of its C-STORE sub-operations to the node."""

    completed: int
    failed: int
    warning: int


def move_study(config: Config, source: Source, study_uid: str) -> Moved:
    """C-MOVE the study to this node; returns once the PACS's final response came. A study the
    PACS sent only in part (failed sub-operations) raises, so that it is tried again."""
    keys = Dataset()
    keys.QueryRetrieveLevel = "STUDY"
    keys.StudyInstanceUID = study_uid
    final: Dataset | None = None
    with association(config, source, StudyRootQueryRetrieveInformationModelMove) as assoc:
        for status, _identifier in assoc.send_c_move(keys, config.node.ae_title,
                                                     StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                raise PacsError(f"{source.name}: no answer to the C-MOVE (the association was lost)")
            if int(status.Status) not in _PENDING:
                final = status
    if final is None:
        raise PacsError(f"{source.name}: the C-MOVE got no final response")
    code = int(final.Status)
    moved = Moved(int(final.get("NumberOfCompletedSuboperations", 0) or 0),
                  int(final.get("NumberOfFailedSuboperations", 0) or 0),
                  int(final.get("NumberOfWarningSuboperations", 0) or 0))
    if code == 0x0000 or (code == _WARNING and moved.failed == 0):
        return moved
    hint = (f" (does {source.name} know the AE title {config.node.ae_title} with this node's host and port?)"
            if code == 0xA801 else "")
    raise PacsError(f"{source.name}: the C-MOVE ended with status 0x{code:04X}, "
                        f"{moved.completed} instances sent, {moved.failed} failed{hint}")
