"""One finding, one current report: completion waits while the data says more is coming, and a
route that runs again says which answer it replaces (storescu -> radnode -> Orthanc, dciodvfy)."""

from __future__ import annotations

import time

import pydicom

from tests.support.harness import start_node, threshold_pipeline, threshold_route, wait_until
from tests.support.peers import dciodvfy, send

SETTLE = 1.0  # node_config's settle_seconds
PAUSE = 3.0  # between the two parts: three times the settle time
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def ended_jobs(index) -> list:
    return [j for j in index.jobs() if j.state in ("done", "failed")]


def objects_in_pacs(orthanc, study_uid: str) -> list[dict]:
    """Orthanc's full tag set of every instance of the study."""
    return [orthanc.get(f"/instances/{i['ID']}/simplified-tags") for i in orthanc.instances_of_study(study_uid)]


def test_ct_sent_in_two_parts_with_a_pause_longer_than_settle_gives_one_job(tmp_path, orthanc, data_dir):
    # the 99 files in name order are not in slice order: the first 50 leave gaps in the stack
    files = sorted((data_dir / "ct-chest" / "cptac-luad-C3N-00247").glob("*.dcm"))
    assert len(files) == 99
    node = start_node(tmp_path, orthanc)
    try:
        index = node.index()
        send(node.port, files[:50])
        time.sleep(PAUSE)
        (series,) = index.all_series()
        assert series.state == "receiving", "half a series was completed although its slices have gaps"
        assert index.jobs() == []
        send(node.port, files[50:])
        (job,) = wait_until(lambda: ended_jobs(index), 90, what="job end")
        assert job.state == "done", job.outcome
        time.sleep(PAUSE)
        assert len(index.jobs()) == 1, [j.outcome for j in index.jobs()]
        assert index.series(series.series_uid).instance_count == 99
        assert "series.waiting" in node.logs() and "slices missing" in node.logs()
    finally:
        node.stop()


def test_series_that_announces_images_in_acquisition_waits_for_all_of_them(tmp_path, orthanc, data_dir):
    """A contiguous first half (no gap to see) is held back by ImagesInAcquisition = 30."""
    source = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
    folder = tmp_path / "announced"
    folder.mkdir()
    files = []
    for path in source:
        ds = pydicom.dcmread(path)
        ds.ImagesInAcquisition = len(source)
        files.append((float(ds.ImagePositionPatient[2]), folder / path.name))
        ds.save_as(files[-1][1])
    ordered = [path for _, path in sorted(files)]
    (tmp_path / "node").mkdir()
    node = start_node(tmp_path / "node", orthanc)
    try:
        index = node.index()
        send(node.port, ordered[:15])
        time.sleep(PAUSE)
        assert index.jobs() == [], "15 of 30 announced images were routed"
        send(node.port, ordered[15:])
        (job,) = wait_until(lambda: ended_jobs(index), 90, what="job end")
        assert job.state == "done", job.outcome
        time.sleep(PAUSE)
        assert len(index.jobs()) == 1
    finally:
        node.stop()


def test_rerun_names_the_report_it_replaces_and_orthanc_shows_which_is_current(tmp_path, orthanc, data_dir):
    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node = start_node(tmp_path, orthanc, pipelines=threshold_pipeline(report=True))
    try:
        index = node.index()
        send(node.port, files)
        (first,) = wait_until(lambda: ended_jobs(index), 90, what="first job")
        wait_until(lambda: len(index.deliveries("sent")) == 1, 60, what="first delivery")
        send(node.port, files)  # the same series again: re-opened, and the route runs again ("rerun")
        wait_until(lambda: len(ended_jobs(index)) == 2, 90, what="second job")
        wait_until(lambda: len(index.deliveries("sent")) == 2, 60, what="second delivery")
        second = index.jobs()[1]
        assert (first.state, second.state) == ("done", "done"), second.outcome

        stored = orthanc.wait_for(lambda p: (lambda o: len(o) == 4 and o)(objects_in_pacs(p, study_uid)),
                                  timeout=30)
        reports = sorted((o for o in stored if o["SOPClassUID"].startswith(SR_PREFIX)),
                         key=lambda o: "PredecessorDocumentsSequence" in o)
        segs = [o for o in stored if o["SOPClassUID"] == SEG_CLASS]
        assert len(reports) == 2 and len(segs) == 2, "Orthanc keeps both answers"
        old, new = reports
        (item,) = new["PredecessorDocumentsSequence"]
        assert item["StudyInstanceUID"] == study_uid
        (series,) = item["ReferencedSeriesSequence"]
        assert series["SeriesInstanceUID"] == old["SeriesInstanceUID"]
        assert [r["ReferencedSOPInstanceUID"] for r in series["ReferencedSOPSequence"]] == [old["SOPInstanceUID"]]
        assert (new["CompletionFlag"], new["VerificationFlag"]) == ("COMPLETE", "UNVERIFIED")
        assert new["SeriesDescription"].endswith("(v2, replaces v1)")
        assert "replaces" not in old["SeriesDescription"]
        new_seg = next(s for s in segs if "replaces" in s.get("SeriesDescription", ""))
        assert new_seg["SeriesDescription"].endswith("(v2, replaces v1)")

        for result in index.results(second.id):
            report = dciodvfy(result.path)
            assert report.errors == [], f"{result.path.name}: {report.errors}"

        listing = node.cli("jobs").stdout
        line = next(row for row in listing.splitlines() if row.startswith(str(second.id) + " "))
        assert f"job {first.id} (v1)" in line
        line = next(row for row in listing.splitlines() if row.startswith(str(first.id) + " "))
        assert f"job {second.id} (v2)" in line
    finally:
        node.stop()


def test_resend_with_late_instances_ignored_says_why_nothing_ran(tmp_path, orthanc, data_dir):
    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
    node = start_node(tmp_path, orthanc, routes=[threshold_route(on_late_instances="ignore")])
    try:
        index = node.index()
        send(node.port, files)
        (job,) = wait_until(lambda: ended_jobs(index), 90, what="job end")
        send(node.port, files[:3])
        wait_until(lambda: index.notes(), 30, what="note on the ignored re-send")
        assert len(index.jobs()) == 1
        listing = node.cli("jobs").stdout
        assert "Not run:" in listing
        assert f'instances arrived after job {job.id} and on_late_instances = "ignore"' in listing
    finally:
        node.stop()
