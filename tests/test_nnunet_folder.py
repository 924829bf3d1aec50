"""Self-checks of the nnU-Net results folder the nnU-Net tests run on (tests/nnunet_folder.py).

Why: those tests compare radnode's answer with nnU-Net's own. If the folder did not load in
nnU-Net's predictor, if the reference were all background, or if the DICOM sent to radnode held
other numbers or another geometry than the NIfTI nnU-Net predicted from, they would fail (or
pass) for reasons that are not radnode's. These tests say which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipelines.volume import load_series
from tests.nnunet_folder import MIRROR_AXES, NnUNetCase, build_case, to_dicom_series

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture(scope="session")
def nnunet_case(nnunet_root: Path) -> NnUNetCase:
    return build_case(nnunet_root)


def test_folder_loads_in_nnunets_predictor(nnunet_case: NnUNetCase) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_case.folder), use_folds=(0,))
    assert predictor.dataset_json["channel_names"] == nnunet_case.channels == {"0": "T1c", "1": "FLAIR"}
    assert predictor.label_manager.num_segmentation_heads == 4
    assert tuple(predictor.allowed_mirroring_axes) == MIRROR_AXES
    # The three spacings differ and the coarsest is not the first axis: nnU-Net transposes (see SHRINK).
    assert predictor.plans_manager.transpose_forward == [1, 0, 2]
    assert predictor.configuration_manager.spacing == [4.0, 2.0, 3.0]


def test_reference_has_several_foreground_labels_on_the_case_grid(nnunet_case: NnUNetCase) -> None:
    reference = sitk.ReadImage(str(nnunet_case.reference))
    image = sitk.ReadImage(str(nnunet_case.images[0]))
    labels, counts = np.unique(sitk.GetArrayFromImage(reference), return_counts=True)
    foreground = {int(label): int(n) for label, n in zip(labels, counts) if label > 0}
    assert set(foreground) <= {1, 2, 3} and len(foreground) >= 2, foreground
    assert reference.GetSize() == image.GetSize()
    np.testing.assert_allclose(reference.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(reference.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(reference.GetDirection(), image.GetDirection(), atol=1e-4)


def test_dicom_series_hold_the_nifti_exactly(nnunet_case: NnUNetCase, tmp_path: Path) -> None:
    series = to_dicom_series(nnunet_case, tmp_path)
    assert list(series) == ["T1c", "FLAIR"]
    studies = set()
    for channel, nifti in zip(series, nnunet_case.images):
        image = sitk.ReadImage(str(nifti))
        volume = load_series(series[channel])
        np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image).astype(np.float32))
        np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(volume.spacing, image.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(volume.direction.ravel(), image.GetDirection(), atol=1e-4)
        header = pydicom.dcmread(series[channel][0], stop_before_pixels=True)
        assert header.SeriesDescription == channel
        studies.add(header.StudyInstanceUID)
    assert len(studies) == 1
