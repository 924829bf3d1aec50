"""Route conditions, as an administrator writes them in config.toml."""

from __future__ import annotations

import pytest
from pydicom import Dataset

from node.route.matcher import failed_conditions, parse_condition


def ct(**extra) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.BodyPartExamined = "CHEST"
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("keyword", "spec", "matches"),
    [
        ("Modality", "CT", True),
        ("Modality", "MR", False),
        ("ImageType", "AXIAL", True),
        ("ImageType", "ORIGINAL\\PRIMARY\\AXIAL", True),
        ("ImageType", "LOCALIZER", False),
        ("BodyPartExamined", {"regex": "(?i)chest|lung"}, True),
        ("BodyPartExamined", {"regex": "^LUNG$"}, False),
        ("SliceThickness", {"le": 2.5}, True),
        ("SliceThickness", {"gt": 1.0, "lt": 1.5}, True),
        ("SliceThickness", {"ge": 2.0}, False),
        ("Modality", ["CT", "PT"], True),
        ("Modality", {"one_of": ["MR", "PT"]}, False),
        ("ContrastBolusAgent", {"present": False}, True),
        ("ContrastBolusAgent", {"present": True}, False),
        ("SeriesDescription", "x", False),
    ],
)
def test_each_form_of_condition_matches_a_ct_header_as_written(keyword, spec, matches):
    condition = parse_condition(keyword, spec)
    assert (condition.check(ct()) is None) is matches


def test_failed_conditions_say_why():
    conditions = {k: parse_condition(k, v) for k, v in
                  {"Modality": "MR", "SliceThickness": {"le": 1.0}, "Manufacturer": {"present": True}}.items()}
    reasons = failed_conditions(conditions, ct())
    assert reasons == ["Modality = 'CT', not 'MR'", "SliceThickness = 1.25, not <= 1", "Manufacturer is absent"]


def test_a_failed_condition_on_a_patient_attribute_does_not_repeat_the_patients_value():
    """Reasons reach the route tester's page and the logs: they name the condition, not the patient."""
    conditions = {k: parse_condition(k, v) for k, v in
                  {"PatientID": {"regex": "^RESEARCH-"}, "AccessionNumber": ["A1", "A2"],
                   "PatientName": "Test^Case"}.items()}
    patient = ct(PatientID="HOSP-4711", AccessionNumber="ACC-99821", PatientName="Doe^Jane")
    reasons = failed_conditions(conditions, patient)
    assert reasons == ["PatientID = '<redacted>' does not match /^RESEARCH-/",
                       "AccessionNumber = '<redacted>', not one of ['A1', 'A2']",
                       "PatientName = '<redacted>', not 'Test^Case'"]
    assert failed_conditions(conditions, ct(PatientID="RESEARCH-1", AccessionNumber="A2",
                                            PatientName="Test^Case")) == [], "matching still sees the values"


@pytest.mark.parametrize(
    ("keyword", "spec", "message"),
    [
        ("Modalty", "CT", "not a DICOM keyword"),
        ("Modality", {"regex": "("}, "invalid regular expression"),
        ("Modality", {"gt": 3}, "numeric comparison on a non-numeric attribute"),
        ("SliceThickness", {"le": "thin"}, "le takes a number"),
        ("Modality", {"equals": "CT"}, "unknown condition"),
        ("Modality", True, "present = true"),
    ],
)
def test_bad_conditions_are_explained(keyword, spec, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(keyword, spec)
