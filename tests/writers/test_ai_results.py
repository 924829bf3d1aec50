"""IHE AI Results on every object radnode writes, and series a viewer lists in a sane order.

One result of every kind on Lung-PET-CT-Dx A0002 (B70f, series 2, its images numbered against
the slice order): SEG, SR, key images, presentation state, the KOS over them, and a derived
series. The pipelines' own runs pass these objects to dciodvfy and Pixelmed (test_nodule_e2e,
test_tumor_pipeline, test_denoise_quality); here each AIR item is read back from the files.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pipelines.volume import Volume, load_series
from pipelines.writers import codes
from pipelines.writers.derived import Derivation, make_derived_series
from pipelines.writers.identity import Algorithm, Identity
from pipelines.writers.key_images import LUNG_WINDOW, YELLOW, KeyFinding, Page, Region, make_key_images
from pipelines.writers.key_objects import with_key_objects
from pipelines.writers.output import write_datasets
from pipelines.writers.presentation_state import make_presentation_state
from pipelines.writers.seg import Segment, make_segmentation
from pipelines.writers.series import ResultKind, result_series_number
from pipelines.writers.sr import Finding, make_measurement_report
from tests.conftest import DATA

pytestmark = [pytest.mark.data]

CHEST = DATA / "ct-chest" / "lung-pet-ct-dx-A0002" / "B70f"
MODEL_SHA256 = "0123456789abcdef" * 4
IDENTITY = Identity(uid_root="1.2.826.0.1.3680043.8.498.777", model_sha256=MODEL_SHA256)
ALGORITHM = Algorithm("radnode nodule-detection", f"model sha256 {MODEL_SHA256[:16]}")
NODULE = (slice(10, 14), slice(200, 230), slice(100, 120))
#: (0018,A001) Purpose of Reference: CID 7005 Processing Equipment
PROCESSING = ("109102", "DCM")


@pytest.fixture(scope="module")
def chest() -> Volume:
    return load_series(sorted(CHEST.glob("*.dcm")))


def _result(chest: Volume) -> list[Dataset]:
    """SEG, SR, summary and key image, GSPS and the KOS of one nodule, as the nodule pipeline writes them."""
    mask = np.zeros(chest.array.shape, dtype=np.uint8)
    mask[NODULE] = 1
    seg = make_segmentation(chest, mask, [Segment(codes.LUNG_NODULE, "nodule-1")], ALGORITHM, IDENTITY)
    sr = make_measurement_report(
        chest, [Finding("nodule-1", codes.LUNG_NODULE, diameter_mm=12.0, segment_number=1, point_kji=(11, 215, 110))],
        ALGORITHM, IDENTITY, looked_for=codes.LUNG_NODULE, segmentation=seg, procedure=codes.CT_CHEST,
    )
    shown = [KeyFinding("Nodule 1: 12.0 mm", (Region(NODULE, mask[NODULE].astype(bool), YELLOW),))]
    page = Page(ALGORITHM, "radnode nodule-detection", "Lung nodules: 1 found", ("Nodule 1: 12.0 mm",),
                body_part="CHEST", window=LUNG_WINDOW)
    pictures = make_key_images(chest, shown, page, IDENTITY)
    return with_key_objects(chest, [seg, sr, *pictures, make_presentation_state(chest, shown, page, IDENTITY)],
                            ALGORITHM, IDENTITY)


@pytest.fixture(scope="module")
def written(chest: Volume, tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """Every object of the result and the derived series, as read back from their files."""
    derived = make_derived_series(chest, chest.array * 0.5, IDENTITY,
                                  Derivation(ALGORITHM, "radnode test: HU x 0.5", "test"))
    files = write_datasets([*_result(chest), *derived], tmp_path_factory.mktemp("air"))
    return [pydicom.dcmread(f.path, stop_before_pixels=True) for f in files]


def _processing_item(ds: Dataset) -> Dataset:
    """radnode's item (highdicom adds one naming itself to the objects it builds)."""
    found = [item for item in ds.ContributingEquipmentSequence
             if (item.PurposeOfReferenceCodeSequence[0].CodeValue,
                 item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator) == PROCESSING
             and item.Manufacturer == "radnode"]
    assert len(found) == 1, f"{ds.Modality}: {len(found)} processing equipment items of radnode"
    return found[0]


def test_every_result_object_names_the_model_as_contributing_equipment_with_its_versions_and_device_uid(written):
    assert {ds.Modality for ds in written} == {"SEG", "SR", "OT", "PR", "KO", "CT"}
    device_uids = set()
    for ds in written:
        item = _processing_item(ds)
        assert item.ManufacturerModelName == ALGORITHM.name, ds.Modality
        assert ALGORITHM.version in list(item.SoftwareVersions), ds.Modality
        device_uids.add(str(item.DeviceUID))
    assert len(device_uids) == 1, "every object of one model names the same device"


def test_the_derived_series_keeps_the_scanner_as_acquisition_equipment_beside_the_model(written):
    derived = next(ds for ds in written if ds.Modality == "CT")
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeMeaning for item in derived.ContributingEquipmentSequence]
    assert purposes == ["Acquisition Equipment", "Processing Equipment"]


def test_a_changed_model_folder_gives_a_new_device_uid_and_the_same_folder_the_same_one():
    same = Identity(uid_root=IDENTITY.uid_root, model_sha256=MODEL_SHA256, station_name="another-node")
    changed = Identity(uid_root=IDENTITY.uid_root, model_sha256="f" * 64)
    assert same.model_device_uid(ALGORITHM) == IDENTITY.model_device_uid(ALGORITHM)
    assert changed.model_device_uid(ALGORITHM) != IDENTITY.model_device_uid(ALGORITHM)


def test_the_key_object_selection_references_every_other_object_of_the_result(written):
    kos = next(ds for ds in written if ds.Modality == "KO")
    result = {str(ds.SOPInstanceUID) for ds in written if ds.Modality in ("SEG", "SR", "OT", "PR")}
    referenced = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for item in kos.ContentSequence if item.ValueType in ("IMAGE", "COMPOSITE")}
    assert referenced == result
    assert kos.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
    evidence = {str(instance.ReferencedSOPInstanceUID) for series in kos.CurrentRequestedProcedureEvidenceSequence
                for s in series.ReferencedSeriesSequence for instance in s.ReferencedSOPSequence}
    assert evidence == result


def test_each_kind_of_result_is_a_series_numbered_after_its_source_and_no_two_share_a_number(written, chest):
    source = int(chest.sources[0].SeriesNumber)
    numbers = {ds.Modality: int(ds.SeriesNumber) for ds in written}
    assert len(set(numbers.values())) == len(numbers), numbers
    assert min(numbers.values()) > source and numbers["SEG"] < numbers["SR"] < numbers["OT"], numbers
    assert len({(ds.SeriesInstanceUID, ds.SeriesNumber) for ds in written if ds.Modality == "OT"}) == 1
    # LIDC-IDRI-0001's CT is series 3000566; a source without a number still gets distinct ones
    numbered = Dataset()
    numbered.SeriesNumber = 3000566
    assert [result_series_number(numbered, kind) for kind in ResultKind] == list(range(300056601, 300056607))
    assert len({result_series_number(Dataset(), kind) for kind in ResultKind}) == len(ResultKind)


def test_the_derived_series_numbers_each_image_as_its_source_image(written, chest):
    by_position = {tuple(round(float(v), 2) for v in ds.ImagePositionPatient): int(ds.InstanceNumber)
                   for ds in chest.sources}
    derived = [ds for ds in written if ds.Modality == "CT"]
    assert len(derived) == len(chest.sources)
    for ds in derived:
        assert int(ds.InstanceNumber) == by_position[tuple(round(float(v), 2) for v in ds.ImagePositionPatient)]
    # the slice order runs against the numbering in this series: image 1 is the last slice
    assert int(chest.sources[0].InstanceNumber) == len(chest.sources)


def test_the_report_names_the_procedure_as_cid_100_does_and_the_chest_as_its_target_region(written):
    sr = next(ds for ds in written if ds.Modality == "SR")

    def coded(dataset: Dataset) -> dict[str, str]:
        found: dict[str, str] = {}
        for item in dataset.get("ContentSequence", []):
            if "ConceptCodeSequence" in item:
                found[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = str(item.ConceptCodeSequence[0].CodeMeaning)
            found.update(coded(item))
        return found

    assert coded(sr)["Procedure reported"] == "CT unspecified body region"
    assert coded(sr)["Target Region"] == "Chest"

