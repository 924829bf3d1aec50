"""Lineage: a result that replaces an earlier one says so (one finding, one current report).

Decided in run/ before the result is committed, so that delivery sends the files as given.
Objects already sent cannot change, so the new ones carry the link: an SR names the reports it
replaces (``PredecessorDocumentsSequence``), every new object's SeriesDescription ends with
``(v2, replaces v1)``, and the index records which job replaced which (``radnode jobs``).
This runs for every pipeline, a site's own included.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node import logs
from node.index.store import Index, Job, Lineage, ResultObject
from pipelines.writers.output import WrittenObject

#: Every structured report storage SOP class (Basic Text, Enhanced, Comprehensive, 3D, ...).
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Key Object Selection shares the SR prefix but is no report: its module has no predecessors.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SERIES_DESCRIPTION_LENGTH = 64  # LO


def is_report(sop_class: str) -> bool:
    return sop_class.startswith(SR_CLASS_PREFIX) and sop_class != KEY_OBJECT_SELECTION


def versioned_description(description: str, version: int) -> str:
    """``"dense report (v2, replaces v1)"``, cut to fit LO's 64 characters."""
    suffix = f" (v{version}, replaces v{version - 1})"
    return description[:SERIES_DESCRIPTION_LENGTH - len(suffix)].rstrip() + suffix


def predecessor_sequence(reports: Sequence[ResultObject]) -> DicomSequence:
    """Hierarchical SOP Instance Reference macro items: study -> series -> SOP instances."""
    by_study: dict[str, dict[str, list[ResultObject]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        by_study[report.study_uid][report.series_uid].append(report)
    items = []
    for study_uid, series in by_study.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        study.ReferencedSeriesSequence = DicomSequence()
        for series_uid, objects in series.items():
            item = Dataset()
            item.SeriesInstanceUID = series_uid
            item.ReferencedSOPSequence = DicomSequence()
            for obj in objects:
                ref = Dataset()
                ref.ReferencedSOPClassUID = obj.sop_class
                ref.ReferencedSOPInstanceUID = obj.sop_uid
                item.ReferencedSOPSequence.append(ref)
            study.ReferencedSeriesSequence.append(item)
        items.append(study)
    return DicomSequence(items)


def mark_replacement(path: Path, version: int, predecessors: Sequence[ResultObject]) -> None:
    """Rewrite one result file (not yet sent) as version ``version`` of its answer."""
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = versioned_description(str(ds.get("SeriesDescription", "")), version)
    if is_report(str(ds.SOPClassUID)):
        reports = [p for p in predecessors if is_report(p.sop_class) and p.study_uid == ds.StudyInstanceUID]
        if reports:
            ds.PredecessorDocumentsSequence = predecessor_sequence(reports)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        ds.save_as(handle, enforce_file_format=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def replace_earlier(index: Index, job: Job, outputs: Sequence[WrittenObject]) -> Lineage:
    """Before a job's results are recorded: if an earlier run of the same route on the same
    subject produced results, mark these as their replacement. Returns their lineage, which
    the job's end records (``Index.finish_job``), so a stale attempt records none of it."""
    described = [ResultObject(o.sop_uid, o.sop_class, o.series_uid, o.study_uid) for o in outputs]
    previous = index.predecessor(job)
    if previous is None:
        return Lineage(described)
    replaced, objects = previous
    version = index.version(replaced) + 1
    for output in outputs:
        mark_replacement(output.path, version, objects)
    logs.info("job.replaces", job=job.id, replaces=replaced, version=version)
    return Lineage(described, replaced, version)
