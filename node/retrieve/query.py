"""C-FIND (Study Root) against a ``[[sources]]`` PACS: which studies a backfill asks for.

The query is a typed record so that it can be stored with its backfill and read back after a
restart; ``find`` is the plain C-FIND that other uses (priors of a finding) build on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.sop_class import SOPClass, StudyRootQueryRetrieveInformationModelFind

from node.config import Config, Source
from node.deliver.cstore import associate, association_failure, scu_ae
from node.index.backfills import FoundStudy

#: C-FIND statuses (PS3.4 C.4.1.1.4): pending while identifiers come, success at the end
_PENDING = (0xFF00, 0xFF01)
#: a listed study the PACS answered nothing for is asked once more after this, on a new
#: association: the PACS may still be storing it, or lost the answer under load
ASK_AGAIN_SECONDS = 2.0


class PacsError(Exception):
    """The PACS could not be asked, or refused or failed what it was asked; the message says
    which and why (a backfill's status shows it)."""


@dataclass(frozen=True)
class StudyQuery:
    """What a backfill retrieves: listed studies (accession numbers or Study Instance UIDs), or
    the studies matching the filters (an empty filter matches anything)."""

    accessions: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    modality: str = ""
    #: StudyDate range, YYYYMMDD (either end may be open)
    date_from: str = ""
    date_to: str = ""
    #: StudyDescription; ``*`` and ``?`` are wildcards, as the PACS matches them
    description: str = ""
    #: BodyPartExamined of one of the study's series (asked at SERIES level)
    body_part: str = ""

    def to_stored(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v}

    @staticmethod
    def from_stored(data: dict[str, Any]) -> StudyQuery:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return StudyQuery(**values)

    def is_list(self) -> bool:
        return bool(self.accessions or self.study_uids)


def find(config: Config, source: Source, level: str, keys: Dataset) -> list[Dataset]:
    """One C-FIND at ``level`` (STUDY, SERIES) with ``keys``: the identifiers the PACS answered."""
    return [identifier for _, identifier in _find_each(config, source, level, [keys])]


@dataclass(frozen=True)
class Answer:
    """What the PACS answered a backfill's query with."""

    studies: list[FoundStudy]
    #: listed keys no study answered to, asked twice: (AccessionNumber or StudyInstanceUID,
    #: value); identifying: the validation export shows them, a log or a page only their count
    not_found: tuple[tuple[str, str], ...] = ()


def find_studies(config: Config, source: Source, query: StudyQuery) -> Answer:
    """The studies of ``query``, each once, in the order the PACS named them."""
    if query.is_list():
        return _find_listed(config, source, query)
    dates = f"{query.date_from}-{query.date_to}" if query.date_from or query.date_to else ""
    asked = [_study_keys(StudyDate=dates, ModalitiesInStudy=query.modality, StudyDescription=query.description)]
    found: dict[str, FoundStudy] = {}
    for _, answer in _find_each(config, source, "STUDY", asked):
        _add_study(found, answer)
    studies = list(found.values())
    if query.body_part:
        studies = [s for s in studies if _has_series(config, source, s.study_uid, query)]
    return Answer(studies)


def _find_listed(config: Config, source: Source, query: StudyQuery) -> Answer:
    """Each listed study; what nothing answered to is asked once more (``ASK_AGAIN_SECONDS``)."""
    missing = [("AccessionNumber", a) for a in query.accessions] + [("StudyInstanceUID", u) for u in query.study_uids]
    found: dict[str, FoundStudy] = {}
    for attempt in range(2):
        if attempt:
            time.sleep(ASK_AGAIN_SECONDS)
        answered = set()
        for i, answer in _find_each(config, source, "STUDY", [_study_keys(**{k: v}) for k, v in missing]):
            answered.add(i)
            _add_study(found, answer)
        missing = [key for i, key in enumerate(missing) if i not in answered]
        if not missing:
            break
    return Answer(list(found.values()), tuple(missing))


def _add_study(found: dict[str, FoundStudy], answer: Dataset) -> None:
    uid = str(answer.get("StudyInstanceUID", ""))
    if uid and uid not in found:
        found[uid] = FoundStudy(uid, str(answer.get("AccessionNumber", "") or ""))


def _has_series(config: Config, source: Source, study_uid: str, query: StudyQuery) -> bool:
    """Whether a series of the study has the query's body part (and modality)."""
    keys = _keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="",
                 BodyPartExamined=query.body_part, Modality=query.modality)
    return bool(find(config, source, "SERIES", keys))


def _study_keys(**values: str) -> Dataset:
    keys = {"StudyInstanceUID": "", "AccessionNumber": "", "StudyDate": "", "ModalitiesInStudy": "",
            "StudyDescription": ""}
    return _keys(QueryRetrieveLevel="STUDY", **{**keys, **values})


def _keys(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _find_each(config: Config, source: Source, level: str,
               asked: Sequence[Dataset]) -> Iterator[tuple[int, Dataset]]:
    """Every identifier the PACS answers to each of ``asked``, with the key's place in
    ``asked``, on one association."""
    with association(config, source, StudyRootQueryRetrieveInformationModelFind) as assoc:
        for place, keys in enumerate(asked):
            keys.QueryRetrieveLevel = level
            for status, identifier in assoc.send_c_find(keys, StudyRootQueryRetrieveInformationModelFind):
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    raise PacsError(f"{source.name}: no answer to the C-FIND (the association was lost)")
                if code in _PENDING and identifier is not None:
                    yield place, identifier
                elif code not in _PENDING and code != 0x0000:
                    raise PacsError(f"{source.name}: the C-FIND was refused with status 0x{code:04X}")


@contextmanager
def association(config: Config, source: Source, context: SOPClass) -> Iterator[Association]:
    """An association with the source for one query/retrieve model, released at the end."""
    ae = scu_ae(config)
    ae.add_requested_context(context)
    assoc = associate(ae, source)
    if not assoc.is_established:
        raise PacsError(association_failure(assoc, source))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
