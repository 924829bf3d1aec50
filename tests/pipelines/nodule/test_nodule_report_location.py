"""Where the nodule report says each finding is, checked against the SEG and the readers.

LIDC-IDRI-0003 (three reader-consensus lesions of 31.0, 14.3 and 12.6 mm) through the nodule
pipeline with the scorer that never saw the patient: every SR finding's "Center" point must lie,
on the source image it references, inside that finding's SEG segment; its Finding Site's side must
be the side the images show for the lesion it is on (tests/pipelines/test_finding_location.py says how the
sides were established); the key images and the presentation state come with it, valid.
"""

from __future__ import annotations

import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from pipelines.base import JobInput
from tests.pipelines.nodule.test_nodule_real_lesions import fold_pipeline
from tests.pipelines.test_finding_location import LIDC_SIDES
from tests.support.peers import dciodvfy, dcmtk_bin, dcmtk_env
from training.nodule import data, lidc

pytestmark = [pytest.mark.slow, pytest.mark.data, pytest.mark.peers]

SCAN = "ct-chest/lidc-idri-0003/ct"
#: A finding is on a reader lesion when its 3D centre lies this close to the lesion's centre
#: (the smallest lesion is 12.6 mm across).
SAME_LESION_MM = 15.0
SIDE = {codes.SCT.Right.value: "right", codes.SCT.Left.value: "left"}


def _items(dataset: pydicom.Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _concept(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in item else ""


def _groups(report: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [item for item in _items(report) if _concept(item) == "Measurement Group"]


def _where(group: pydicom.Dataset) -> dict:
    """What a group says of its place: segment number, the point and image of its diameter line,
    its SCOORD3D centre, side."""
    found: dict = {}
    for item in _items(group):
        if _concept(item) == "Referenced Segment":
            found["segment"] = int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber)
        elif item.ValueType == "SCOORD" and "point" not in found:
            # the diameter line a viewer draws: its middle is the finding's point
            found["point"] = list(np.asarray(item.GraphicData, dtype=float).reshape(-1, 2).mean(axis=0))
            found["image"] = str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif item.ValueType == "SCOORD3D" and _concept(item) == "Center":
            found["center_lps"] = np.array([float(v) for v in item.GraphicData])
        elif _concept(item) == "Finding Site":
            found["site"] = str(item.ConceptCodeSequence[0].CodeMeaning)
            for modifier in item.get("ContentSequence", []):
                if _concept(modifier) == "Laterality":
                    found["side"] = SIDE[str(modifier.ConceptCodeSequence[0].CodeValue)]
    return found


@pytest.fixture(scope="module")
def written(data_dir, tmp_path_factory):
    """The pipeline's outputs on LIDC-0003 by modality, and the readers' lesions."""
    volume = data.load(data_dir, SCAN)
    lesions = lidc.load_annotation(volume, data_dir / SCAN).lesions
    files = sorted((data_dir / SCAN).glob("*.dcm"))
    result = fold_pipeline("lidc-idri-0003").run(JobInput(series={"series": files},
                                                         output_dir=tmp_path_factory.mktemp("out")))
    by_modality: dict[str, list] = {}
    for path in result.outputs:
        by_modality.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).Modality), []).append(path)
    return by_modality, lesions, result


def test_every_sr_center_lies_inside_its_seg_segment_on_the_image_it_references(written):
    outputs, _, _ = written
    report = pydicom.dcmread(outputs["SR"][0])
    seg = hd.seg.segread(outputs["SEG"][0])
    groups = [_where(group) for group in _groups(report)]
    assert len(groups) >= 3, groups
    for place in groups:
        pixels = seg.get_pixels_by_source_instance([place["image"]], segment_numbers=[place["segment"]])
        column, row = (int(np.floor(v)) for v in place["point"])
        assert pixels[0, row, column, 0], f"segment {place['segment']}: its centre ({column}, {row}) is outside it"


def test_each_reported_lidc_lesion_is_on_the_side_the_images_show(written):
    outputs, lesions, _ = written
    places = [_where(group) for group in _groups(pydicom.dcmread(outputs["SR"][0]))]
    for lesion, side in zip(lesions, LIDC_SIDES["lidc-idri-0003"]):
        on = [p for p in places if np.linalg.norm(p["center_lps"] - lesion.center_lps) <= SAME_LESION_MM]
        assert on, f"no finding within {SAME_LESION_MM} mm of the lesion at {lesion.center_lps.round(0)}"
        assert [p["side"] for p in on] == [side] * len(on), (side, on)
        assert all(p["site"].endswith("zone of lung") for p in on), on


def test_one_key_image_per_finding_after_the_summary_and_a_presentation_state_all_valid(written):
    outputs, _, result = written
    assert len(outputs["OT"]) == 1 + len(result.summary.nodules)
    assert len(outputs["PR"]) == 1
    for path in outputs["OT"] + outputs["PR"] + outputs["SR"]:
        assert not dciodvfy(path).errors, path.name
    checked = subprocess.run([dcmtk_bin("dcmpschk"), str(outputs["PR"][0])], capture_output=True, text=True,
                             env=dcmtk_env(), timeout=60)
    assert checked.returncode == 0 and "E:" not in checked.stdout + checked.stderr, checked.stdout
    # the procedure as CID 100 has it (Pixelmed rejects any other), the chest as its target region
    coded = {_concept(item): str(item.ConceptCodeSequence[0].CodeMeaning)
             for item in _items(pydicom.dcmread(outputs["SR"][0])) if "ConceptCodeSequence" in item}
    assert coded["Procedure reported"] == "CT unspecified body region" and coded["Target Region"] == "Chest"
