"""Priors of a job (a route's ``priors = true``): the patient's latest earlier radnode report
that a ``[[sources]]`` PACS holds, found by C-FIND and fetched by C-GET of that SR series only.

The SR is held in memory and never enters the receiver, the index or a route. A lookup that
fails (PACS down, refused, slow, no earlier report) never fails the job and never delays it
beyond ``TIMEOUT_SECONDS``: the job gets the reason, and its SR says that no prior was compared.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, StudyRootQueryRetrieveInformationModelGet

from node import logs
from node.config import Config, Source
from node.deliver.cstore import associate, association_failure, scu_ae
from node.index.store import Job
from node.retrieve.query import PacsError, _keys, find
from pipelines.priors import PriorReport, Priors, read_report, study_date
from pipelines.writers.identity import MANUFACTURER

#: the longest a job waits for its priors (all queries and the retrieve together)
TIMEOUT_SECONDS = 20.0
#: how radnode's nodule report series are described ("radnode nodule-detection report: ...")
REPORT_SERIES = "radnode nodule-detection report*"


def for_job(config: Config, job: Job, series: Mapping[str, Sequence[Path]]) -> Priors | None:
    """The patient's earlier report when the job's route asks for priors (bounded in time)."""
    route = next((r for r in config.routes if r.name == job.route), None)
    paths = [path for paths in series.values() for path in paths]
    if route is None or not route.priors or not paths:
        return None
    priors = look_up(config, paths)
    logs.info("job.priors", job=job.id, found=priors.report is not None, reason=priors.reason)
    return priors


def look_up(config: Config, paths: Sequence[Path], timeout: float = TIMEOUT_SECONDS) -> Priors:
    """The priors of the series in ``paths``: never raises, returns within about ``timeout``."""
    answer: list[Priors] = []
    worker = threading.Thread(target=lambda: answer.append(_look_up(config, paths)), daemon=True,
                              name="priors")
    worker.start()
    worker.join(timeout)
    if not answer:
        return Priors(reason=f"the PACS did not answer within {timeout:g} s")
    return answer[0]


def _look_up(config: Config, paths: Sequence[Path]) -> Priors:
    try:
        header = pydicom.dcmread(paths[0], stop_before_pixels=True,
                                 specific_tags=["PatientID", "StudyDate", "StudyInstanceUID"])
        patient, date = str(header.get("PatientID", "") or ""), study_date(header)
        if not patient or date is None:
            return Priors(reason="the series has no Patient ID or no Study Date to look earlier studies up by")
        reasons = []
        for source in config.sources:
            report = latest_report(config, source, patient, date, str(header.StudyInstanceUID))
            if report is not None:
                return Priors(report=report)
            reasons.append(source.name)
        return Priors(reason=f"no earlier radnode report of this patient in {', '.join(reasons)}")
    except Exception as error:  # whatever goes wrong, the job runs; the log scrubber knows its patient
        reason = str(error) if isinstance(error, PacsError) else f"{type(error).__name__}: {error}"
        return Priors(reason=f"the prior lookup failed: {reason}")


def latest_report(config: Config, source: Source, patient: str, before: datetime.date,
                  study_uid: str) -> PriorReport | None:
    """The findings of the newest radnode nodule report of ``patient`` in a study dated before
    ``before``, or None when the PACS holds none."""
    last = (before - datetime.timedelta(days=1)).strftime("%Y%m%d")
    studies = find(config, source, "STUDY", _keys(PatientID=patient, StudyDate=f"-{last}", StudyInstanceUID=""))
    studies = [s for s in studies if str(s.get("StudyInstanceUID", "")) != study_uid]
    for study in sorted(studies, key=lambda s: str(s.get("StudyDate", "")), reverse=True):
        series = find(config, source, "SERIES", _keys(
            StudyInstanceUID=str(study.StudyInstanceUID), SeriesInstanceUID="", Modality="SR",
            SeriesDescription=REPORT_SERIES))
        reports = [sr for uid in (str(s.SeriesInstanceUID) for s in series)
                   for sr in get_series(config, source, str(study.StudyInstanceUID), uid)
                   if sr.get("Manufacturer") == MANUFACTURER]
        if reports:
            newest = max(reports, key=lambda sr: f"{sr.get('ContentDate', '')}{sr.get('ContentTime', '')}")
            return read_report(newest)
    return None


def get_series(config: Config, source: Source, study_uid: str, series_uid: str) -> list[Dataset]:
    """C-GET of one SR series: its instances, in memory."""
    got: list[Dataset] = []

    def store(event: evt.Event) -> int:
        got.append(event.dataset)
        return 0x0000

    ae = scu_ae(config)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(Comprehensive3DSRStorage)
    assoc = associate(ae, source, ext_neg=[build_role(Comprehensive3DSRStorage, scp_role=True)],
                      evt_handlers=[(evt.EVT_C_STORE, store)])
    if not assoc.is_established:
        raise PacsError(association_failure(assoc, source))
    try:
        keys = _keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        for status, _ in assoc.send_c_get(keys, StudyRootQueryRetrieveInformationModelGet):
            if status is None or "Status" not in status:
                raise PacsError(f"{source.name}: no answer to the C-GET (the association was lost)")
    finally:
        if assoc.is_established:
            assoc.release()
    return got

