"""Version numbers and SeriesDescription of results that replace earlier ones (node.run.lineage).

The end-to-end case with Orthanc and dciodvfy is in test_one_answer.py; these pin the chain
v1 -> v2 -> v3 and the 64-character limit of SeriesDescription (LO).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.index.store import Index, JobSpec
from node.run.lineage import replace_earlier, versioned_description
from pipelines.writers.output import WrittenObject

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document


def test_long_series_description_is_cut_to_fit_with_its_version():
    text = versioned_description("x" * 80, 12)
    assert len(text) == 64 and text.endswith("(v12, replaces v11)")


def report(folder: Path, study_uid: str, sop_class: str = SR_CLASS) -> WrittenObject:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SeriesDescription, ds.Modality = "dense report", "SR" if sop_class == SR_CLASS else "KO"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return WrittenObject.of(ds, path)


def test_third_run_is_v3_and_names_only_the_v2_report(tmp_path: Path):
    index = Index(tmp_path / "index.sqlite")
    study = generate_uid()
    paths: list[WrittenObject] = []
    for run in range(3):
        index.add_job(JobSpec(route="r", pipeline="p", subject="s", study_uid=study, generation=run,
                              inputs={}, destinations=["pacs"]))
        job = index.claim_job(1, 60)
        paths.append(report(tmp_path / str(run), study))
        lineage = replace_earlier(index, job, [paths[-1]])
        index.finish_job(job.id, [], "1 objects", attempt=job.attempts, lineage=lineage)
    third = pydicom.dcmread(paths[2].path)
    assert third.SeriesDescription == "dense report (v3, replaces v2)"
    second = pydicom.dcmread(paths[1].path)
    named = third.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in named] == [second.SOPInstanceUID]
    assert index.supersessions() == {2: (1, 2), 3: (2, 3)}
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(paths[0].path)


def test_a_second_run_names_the_earlier_report_but_neither_names_nor_gives_a_key_object_selection_predecessors(
        tmp_path: Path):
    """A KOS is stored under the SR prefix but is no report: its IOD has no Predecessor Documents."""
    index = Index(tmp_path / "index.sqlite")
    study = generate_uid()
    runs: list[list[WrittenObject]] = []
    for run in range(2):
        index.add_job(JobSpec(route="r", pipeline="p", subject="s", study_uid=study, generation=run,
                              inputs={}, destinations=["pacs"]))
        job = index.claim_job(1, 60)
        runs.append([report(tmp_path / str(run), study), report(tmp_path / str(run), study, KOS_CLASS)])
        lineage = replace_earlier(index, job, runs[-1])
        index.finish_job(job.id, [], "2 objects", attempt=job.attempts, lineage=lineage)
    new_report, new_kos = (pydicom.dcmread(o.path) for o in runs[1])
    named = new_report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in named] == [runs[0][0].sop_uid]
    assert "PredecessorDocumentsSequence" not in new_kos
    assert new_kos.SeriesDescription == "dense report (v2, replaces v1)"
