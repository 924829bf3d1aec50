"""storescu -> radnode serve -> ct-denoise route -> derived series in Orthanc, with the shipped weights."""

from __future__ import annotations

from pathlib import Path

import pydicom

from pipelines.denoise.pipeline import SERIES_DESCRIPTION_PREFIX
from tests.support.harness import NodeProcess, node_config, wait_until
from tests.support.peers import send


def test_low_dose_route_delivers_a_denoised_series_next_to_the_original(tmp_path: Path, orthanc, data_dir):
    route = {"name": "low-dose-ct", "pipeline": "ct-denoise", "destinations": ["pacs"],
             "match": {"Modality": "CT", "BodyPartExamined": {"regex": "(?i)chest|lung|thorax"}}}
    config = node_config(tmp_path, destinations=[orthanc.destination()], routes=[route],
                         pipelines={"ct-denoise": {"device": "cpu"}})
    files = sorted((data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f").glob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    study_uid, source_series = str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID)

    node = NodeProcess(config, tmp_path).start()
    try:
        send(node.port, files)
        index = node.index()
        job = wait_until(lambda: [j for j in index.jobs() if j.state in ("done", "failed")], 180,
                         what="denoise job end")[0]
        assert job.state == "done", job.outcome

        def derived_in_pacs(pacs) -> list[dict]:
            found = pacs.instances_of_study(study_uid)
            return found if len(found) == len(files) else []

        arrived = orthanc.wait_for(derived_in_pacs, timeout=120)
        assert arrived, "the derived series did not arrive in Orthanc"
        wait_until(lambda: index.deliveries("sent"), 30, what="delivery recorded as sent")
    finally:
        node.stop()

    series = orthanc.get(f"/instances/{arrived[0]['ID']}/series")
    tags = series["MainDicomTags"]
    assert tags["SeriesInstanceUID"] != source_series
    assert tags["SeriesDescription"].startswith(SERIES_DESCRIPTION_PREFIX)
    assert len(series["Instances"]) == len(files)
    # The original stays in the spool as it was sent (storescu may re-pad a value on the way, so
    # the comparison is by element): only a new series was made.
    for path, header in zip(files, headers):
        stored = pydicom.dcmread(index.instance(str(header.SOPInstanceUID)).path)
        assert stored == pydicom.dcmread(path)
