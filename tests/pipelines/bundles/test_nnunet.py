"""An nnU-Net v2 results folder as a model: radnode runs it as nnU-Net runs it.

The folders are real: a tiny BraTS-2015 dataset planned by nnU-Net's own tools, networks built from
the plans and saved as nnU-Net saves a checkpoint (``tests/support/nnunet_folder.py``). ``nnUNetv2_predict``
on the held-out case's NIfTI files is the reference; radnode gets the same case as DICOM series
and must give the same labels, voxel for voxel, with one fold, two folds (ensembled) and a
region-based label set. A folder radnode cannot run as configured is refused at start with the
key named.

The first tests check the folder itself: if it did not load in nnU-Net's predictor, if the reference
were all background, or if the DICOM sent to radnode held other numbers or another geometry than
the NIfTI nnU-Net predicted from, the comparisons would fail (or pass) for reasons that are not
radnode's. They live in this file so that one worker builds the folders once (``--dist loadfile``).
"""

from __future__ import annotations

import json
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipelines.base import JobInput, PipelineSettings
from pipelines.nnunet.folder import INSTALL, NnUNetFolderError, require_nnunetv2
from pipelines.volume import load_series
from tests.support.nnunet_folder import MIRROR_AXES, NnUNetCase, build_case, to_dicom_series
from tests.support.peers import dciodvfy

#: building the folders (two plans, three folds' networks, three nnUNetv2_predict runs) is most of the
#: file's time; dciodvfy checks the SEG
pytestmark = [pytest.mark.data, pytest.mark.peers, pytest.mark.slow]

CHANNELS = {"T1c": "t1c", "FLAIR": "flair"}
#: nnUNetv2_predict and radnode on the same voxels: the share that must carry the same label.
MIN_AGREEMENT = 0.999


#: The folds each test asks for; the one-fold and two-fold cases share one folder (fold_0, fold_1).
FOLDS = {"one fold": (0,), "two folds": (0, 1), "regions": (0,)}
#: nnU-Net's test-time mirroring (its default) on the one-fold case. The others run without it on
#: both sides (``--disable_tta``, radnode's ``mirroring = false``): that option is checked against
#: nnU-Net's own, and the folds' average and the regions take an eighth of the forward passes.
MIRRORING = {"one fold": True, "two folds": False, "regions": False}


@pytest.fixture(scope="session")
def cases(nnunet_root) -> dict[str, NnUNetCase]:
    return {name: build_case(nnunet_root, folds=folds, region_based=name == "regions", mirroring=MIRRORING[name])
            for name, folds in FOLDS.items()}


def test_folder_loads_in_nnunets_predictor(cases) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    nnunet_case = cases["one fold"]
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(nnunet_case.folder), use_folds=(0,))
    assert predictor.dataset_json["channel_names"] == nnunet_case.channels == {"0": "T1c", "1": "FLAIR"}
    assert predictor.label_manager.num_segmentation_heads == 4
    assert tuple(predictor.allowed_mirroring_axes) == MIRROR_AXES
    # The three spacings differ and the coarsest is not the first axis: nnU-Net transposes (see SHRINK).
    assert predictor.plans_manager.transpose_forward == [1, 0, 2]
    assert predictor.configuration_manager.spacing == [4.0, 2.0, 3.0]


def test_reference_has_several_foreground_labels_on_the_case_grid(cases) -> None:
    nnunet_case = cases["one fold"]
    reference = sitk.ReadImage(str(nnunet_case.reference))
    image = sitk.ReadImage(str(nnunet_case.images[0]))
    labels, counts = np.unique(sitk.GetArrayFromImage(reference), return_counts=True)
    foreground = {int(label): int(n) for label, n in zip(labels, counts) if label > 0}
    assert set(foreground) <= {1, 2, 3} and len(foreground) >= 2, foreground
    assert reference.GetSize() == image.GetSize()
    np.testing.assert_allclose(reference.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(reference.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(reference.GetDirection(), image.GetDirection(), atol=1e-4)


def test_dicom_series_hold_the_nifti_exactly(cases, tmp_path) -> None:
    nnunet_case = cases["one fold"]
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


def _labels(case: NnUNetCase) -> dict[str, int | list[int]]:
    """dataset.json's labels but the background: a value, or a region's list of values."""
    labels = json.loads((case.folder / "dataset.json").read_text())["labels"]
    return {name: value for name, value in labels.items() if value != 0}


def _pipeline(case: NnUNetCase, **options: object):
    from pipelines.nnunet.pipeline import NnUNetSegmentation

    return NnUNetSegmentation(PipelineSettings(name="nnunet-segmentation", model=case.folder, device="cpu",
                                               options={"channels": CHANNELS, **options}))


def _run(case: NnUNetCase, tmp_path, **options: object):
    series = to_dicom_series(case, tmp_path / "dicom")
    result = _pipeline(case, **options).run(JobInput(series={CHANNELS[name]: paths for name, paths in series.items()},
                                                     output_dir=tmp_path / "out"))
    return result, series


def _segments(result, t1c_paths) -> dict[str, np.ndarray]:
    """Each SEG segment (by its label) as a mask on the T1c's slices, in slice order."""
    seg_path = next(p for p in result.outputs if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG")
    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in t1c_paths]
    masks = {}
    for item in seg.SegmentSequence:
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[int(item.SegmentNumber)],
                                                   skip_overlap_checks=True)
        masks[str(item.SegmentLabel)] = pixels[..., 0].astype(bool)
    return masks


def _in_slice_order(t1c_paths, reference: np.ndarray) -> np.ndarray:
    """The reference label map (SimpleITK array order of the NIfTI) in the DICOM files' slice order."""
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in t1c_paths]
    return reference[np.asarray(numbers) - 1]


@pytest.mark.parametrize("name", ["one fold", "two folds"])
def test_radnode_gives_the_labels_nnunetv2_predict_gives_on_the_same_case(cases, tmp_path, name):
    case = cases[name]
    result, series = _run(case, tmp_path, folds=list(FOLDS[name]), mirroring=MIRRORING[name])
    assert result.summary.folds == [str(f) for f in FOLDS[name]]
    reference = _in_slice_order(series["T1c"], sitk.GetArrayFromImage(sitk.ReadImage(str(case.reference))))
    masks = _segments(result, series["T1c"])
    ours = np.zeros(reference.shape, dtype=np.int16)
    labels = _labels(case)
    for label, value in labels.items():
        ours[masks[label]] = value
    agreement = float((ours == reference).mean())
    found = {label: int((reference == value).sum()) for label, value in labels.items()}
    print(f"{name}: agreement {agreement:.5f}; reference voxels per label {found}")
    assert agreement >= MIN_AGREEMENT, f"{agreement:.5f} of the voxels agree"
    for path in result.outputs:
        assert not dciodvfy(path).errors, path.name


def test_region_based_labels_are_written_as_the_overlapping_regions_nnunet_exports(cases, tmp_path):
    case = cases["regions"]
    result, series = _run(case, tmp_path, mirroring=MIRRORING["regions"])
    reference = _in_slice_order(series["T1c"], sitk.GetArrayFromImage(sitk.ReadImage(str(case.reference))))
    masks = _segments(result, series["T1c"])
    for region, values in _labels(case).items():
        agreement = float((masks[region] == np.isin(reference, values)).mean())
        assert agreement >= MIN_AGREEMENT, f"{region}: {agreement:.5f}"
    assert (masks["enhancing tumor"] <= masks["whole tumor"]).all(), "a region outside the region that holds it"


def test_a_channel_without_a_role_is_refused_naming_the_option(cases):
    with pytest.raises(NnUNetFolderError) as caught:
        _pipeline(cases["one fold"], channels={"T1c": "t1c"})
    assert caught.value.key == "options.channels" and "'FLAIR'" in str(caught.value), str(caught.value)


def test_a_fold_the_folder_does_not_hold_is_refused_naming_the_option(cases):
    with pytest.raises(NnUNetFolderError) as caught:
        _pipeline(cases["one fold"], folds=[0, 3])
    assert caught.value.key == "options.folds" and "fold 3" in str(caught.value), str(caught.value)


def test_without_nnunetv2_the_folder_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 raises ImportError
    with pytest.raises(NnUNetFolderError) as caught:
        require_nnunetv2()
    assert INSTALL in str(caught.value)


def test_radnode_serve_refuses_to_start_with_a_channel_without_a_role(cases, tmp_path):
    """The refusal comes before the node listens, naming the key to change."""
    from tests.support.harness import NodeProcess, node_config

    route = {"name": "brain", "pipeline": "nnunet-segmentation", "destinations": ["pacs"], "level": "study",
             "match": {"Modality": "MR"},
             "inputs": {"t1c": {"match": {"SeriesDescription": {"regex": "T1c"}}}}}
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}  # never reached
    config = node_config(tmp_path, routes=[route], destinations=[pacs], pipelines={"nnunet-segmentation": {
        "model": str(cases["one fold"].folder), "device": "cpu", "options": {"channels": {"T1c": "t1c"}}}})
    result = NodeProcess(config, tmp_path).cli("serve")
    assert result.returncode == 2, result.stderr
    assert "pipelines.nnunet-segmentation.options.channels" in result.stderr and "FLAIR" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
