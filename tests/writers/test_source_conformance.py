"""Our objects pass dciodvfy whatever study-level attributes the source carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipelines.volume import load_series
from pipelines.writers import codes
from pipelines.writers.derived import Derivation, make_derived_series
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.output import write_datasets
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.sr import Finding, make_measurement_report
from tests.conftest import DATA
from tests.support.peers import dciodvfy

pytestmark = [pytest.mark.data, pytest.mark.peers]

SOURCE = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
SLICES = 6
IDENTITY = Identity(uid_root="1.2.826.0.1.3680043.8.498.777")
ALGORITHM = Algorithm("radnode-test-model", "1")
STUDY_REFERENCE = "1.2.826.0.1.3680043.8.498.777.42"


def item(**attributes: str) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def flawed_source(folder: Path) -> list[Path]:
    """Six slices of a real chest CT whose study-level sequences hold invalid items as seen in
    the wild: a study reference without its SOP class, and a procedure code without a meaning,
    beside one valid item each."""
    folder.mkdir()
    paths = []
    for path in sorted(SOURCE.glob("*.dcm"))[:SLICES]:
        ds = pydicom.dcmread(path)
        ds.ReferencedStudySequence = [
            item(ReferencedSOPInstanceUID=STUDY_REFERENCE),  # no ReferencedSOPClassUID
            item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                 ReferencedSOPInstanceUID=STUDY_REFERENCE + ".1"),
        ]
        ds.ProcedureCodeSequence = [item(CodeValue="X1", CodingSchemeDesignator="99LOCAL")]
        ds.save_as(folder / path.name, enforce_file_format=True)
        paths.append(folder / path.name)
    return paths


def test_invalid_study_references_in_the_source_give_no_dciodvfy_error(tmp_path):
    source_paths = flawed_source(tmp_path / "source")
    assert dciodvfy(source_paths[0]).errors, "the source itself must carry the invalid items"
    volume = load_series(source_paths)
    mask = volume.array > 300
    seg = make_segmentation(volume, mask, [Segment(codes.LUNG_NODULE, "dense")], ALGORITHM, IDENTITY)
    sr = make_measurement_report(
        volume, [Finding("dense", codes.LUNG_NODULE, volume_mm3=100.0, segment_number=1)], ALGORITHM,
        IDENTITY, looked_for=codes.LUNG_NODULE, segmentation=seg)
    derived = make_derived_series(volume, volume.array.astype(np.float32), IDENTITY,
                                  Derivation(ALGORITHM, "radnode test: copy", "identity transform"))
    written = write_datasets([seg, sr, next(derived)], tmp_path / "out")
    for path in (w.path for w in written):
        report = dciodvfy(path)
        assert report.errors == [], f"{pydicom.dcmread(path).Modality}: {report.errors}"
        result = pydicom.dcmread(path, stop_before_pixels=True)
        # the valid study reference is kept, the invalid one and the meaningless code are not
        assert [r.ReferencedSOPInstanceUID for r in result.ReferencedStudySequence] == [STUDY_REFERENCE + ".1"]
        assert "ProcedureCodeSequence" not in result
