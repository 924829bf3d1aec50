"""radnode's results as a radiologist reads them in OHIF v3 (3.13.2, the prebuilt viewer of the npm
package @ohif/app) over Orthanc's DICOMweb plugin, in headless Chromium: a chest CT through the
nodule pipeline (LIDC-IDRI-0001) and a brain MR through the tumor pipeline (TCGA-FG-6692 written as
DICOM, tests/support/mr_dicom.py), each run with ``radnode run`` and stored in Orthanc with its source.

What is asserted comes from OHIF's own state (its measurement and display-set services) and from
what it draws: every finding of the SR listed in the measurement panel with its label, size and
location; a click on a finding shows its image; no code number in the text on the image; the SEG
loaded as an overlay. OHIF's files come from the npm registry once (tests/support/ohif.py: ``npm pack``
into ~/.cache/radnode/ohif, or the tarball named by $RADNODE_OHIF_TGZ). Screenshots go to
<tmp>/shots.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.support.harness import NodeProcess, node_config
from tests.support.mr_dicom import TUMOR_ROUTE, write_clinical_study
from tests.support.ohif import Viewer, ViewerServer, ohif_dist, wait_for
from tests.support.peers import Orthanc, send
from training.tumor.data import TCGA, load_images

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.data]

LIDC = "ct-chest/lidc-idri-0001/ct"
#: a code number printed as a label: "363698007: Middle zone of lung"
CODE_LABEL = re.compile(r"\b\d{6,}\s*:")


def _run_pipeline(tmp: Path, pipeline: str, source: Path, routes: list[dict] | None = None) -> list[Path]:
    """``radnode run`` of ``pipeline`` on the files under ``source``: the result files."""
    config = node_config(tmp, routes=routes or [], pipelines={pipeline: {"device": "cpu"}},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}])
    node = NodeProcess(config, tmp)
    out = tmp / "out"
    ran = subprocess.run([sys.executable, "-m", "node.operate.cli", "run", "--pipeline", pipeline, "--input",
                          str(source), "--output", str(out), "--config", str(node.config_path)],
                         capture_output=True, text=True, env=node.env, timeout=900)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return sorted(out.iterdir())


def _store(pacs: Orthanc, files: list[Path], propose: tuple[str, ...] = ("--required",)) -> None:
    send(pacs.dicom_port, files, called_aet=pacs.aet, propose=propose)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True).start()
    yield orthanc
    orthanc.kill()


@pytest.fixture(scope="module")
def viewer(pacs, tmp_path_factory):
    server = ViewerServer(ohif_dist(), pacs.url).start()
    work = tmp_path_factory.mktemp("ohif")
    browser = Viewer(server.url, work / "chromium-profile", work / "shots")
    yield browser
    browser.quit()
    server.stop()


@pytest.fixture(scope="module")
def chest(pacs, data_dir, tmp_path_factory) -> dict:
    """LIDC-IDRI-0001 and its nodule results in the PACS: the study UID and the SR."""
    source = sorted((data_dir / LIDC).glob("*.dcm"))
    results = _run_pipeline(tmp_path_factory.mktemp("nodule"), "nodule-detection", data_dir / LIDC)
    _store(pacs, source, propose=("--propose-jls-lossless",))  # stored as JPEG-LS, sent as it is
    _store(pacs, results)
    return _study(results)


@pytest.fixture(scope="module")
def brain(pacs, data_dir, tmp_path_factory) -> dict:
    """TCGA-FG-6692 (T1c and FLAIR as DICOM) and its tumor results in the PACS."""
    tmp = tmp_path_factory.mktemp("tumor")
    _, series = write_clinical_study(load_images(TCGA, data_dir), tmp / "study", roles=("flair", "t1c"))
    results = _run_pipeline(tmp, "tumor-segmentation", tmp / "study", routes=[TUMOR_ROUTE])
    _store(pacs, [f for files in series.values() for f in files] + results)
    return _study(results)


def _study(results: list[Path]) -> dict:
    by_modality = {str(pydicom.dcmread(p, stop_before_pixels=True).Modality): p for p in results}
    sr = pydicom.dcmread(by_modality["SR"])
    return {"study_uid": str(sr.StudyInstanceUID), "sr": sr, "findings": _drawn_findings(sr)}


def _drawn_findings(sr: pydicom.Dataset) -> dict[str, str]:
    """The SR's findings that have a place on an image: label (first Comment) -> SOP Instance UID."""
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    found = {}
    for group in measurements.ContentSequence:
        label = next((str(i.TextValue) for i in group.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeValue == "121106"), None)
        numbers = [i for i in group.ContentSequence if i.ValueType == "NUM"]
        on_image = [i for i in numbers[0].get("ContentSequence", []) if i.ValueType == "SCOORD"] if numbers else []
        if label and on_image:
            found[label] = str(on_image[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return found


def _open_results(viewer: Viewer, study: dict, name: str) -> list[dict]:
    """The study in OHIF with its SR loaded and tracked: OHIF's measurements."""
    viewer.open_study(study["study_uid"])
    sr = viewer.find("SR")
    viewer.load(sr)
    expected = len(study["findings"])
    found = wait_for(lambda: len(viewer.measurements()) >= expected and viewer.measurements(), 90,
                     f"{expected} tracked measurements")
    viewer.shot(f"{name}-sr-tracked")
    return list(found)


def _check_listed_and_clickable(viewer: Viewer, study: dict, name: str) -> None:
    measured = _open_results(viewer, study, name)
    panel = viewer.panel_text()
    viewer.shot(f"{name}-measurement-panel")
    assert {m["label"] for m in measured} == set(study["findings"]), (measured, panel)
    for label in study["findings"]:
        assert label in panel, (label, panel)
    for n, (label, sop_uid) in enumerate(study["findings"].items()):
        viewer.click_row(label)
        viewer.shot(f"{name}-finding-{n + 1}")
        assert sop_uid in viewer.current_image(), (label, viewer.current_image())
        texts = viewer.text_boxes()
        assert not [t for t in texts if CODE_LABEL.search(t["text"])], texts


def test_every_nodule_is_listed_in_ohif_with_label_size_and_place_and_a_click_shows_its_image(viewer, chest):
    assert chest["findings"], "the nodule pipeline found nothing on LIDC-IDRI-0001"
    _check_listed_and_clickable(viewer, chest, "ct")
    measured = viewer.measurements()
    # the nodule's diameter as OHIF's Length tool shows it ("28.2 mm")
    assert all(re.search(r"\d+(\.\d+)? mm", m["displayText"]) for m in measured), measured
    assert all(re.search(r"(left|right) lung", m["label"]) for m in measured), measured


def test_every_mr_lesion_is_listed_in_ohif_and_no_two_labels_on_an_image_overlap(viewer, brain):
    assert brain["findings"], "the tumor pipeline found nothing on TCGA-FG-6692"
    _check_listed_and_clickable(viewer, brain, "mr")
    assert all(re.search(r"\d+\.\d mL", label) for label in brain["findings"]), brain["findings"]
    for label in brain["findings"]:
        viewer.click_row(label)
        boxes = viewer.text_boxes()
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                one, two = boxes[a], boxes[b]
                apart = (one["right"] <= two["left"] or two["right"] <= one["left"]
                         or one["bottom"] <= two["top"] or two["bottom"] <= one["top"])
                assert apart, (one, two)


def test_the_tumor_seg_opens_as_an_overlay_in_ohif(viewer, brain):
    viewer.open_study(brain["study_uid"])
    viewer.load(viewer.find("SEG"))
    segments = wait_for(lambda: viewer.js(
        "return window.services.segmentationService.getSegmentations()"
        ".flatMap(g => Object.values(g.segments).filter(Boolean).map(s => s.label))"), 120, "SEG segments")
    viewer.shot("mr-seg-overlay")
    assert {"Necrosis / non-enhancing tumor core", "Peritumoral edema", "Enhancing tumor"} <= set(segments), segments
