"""The model zoo's published bundles run by radnode on real DICOM, with weights of their exact networks.

Each test copies a bundle from ../shared/data/monai-bundles, builds the network its
``network_def`` names with a fixed seed, saves it as the bundle expects (``models/model.pt``, and a
TorchScript export as ``models/model.ts`` in a second copy) and runs radnode's pipeline on DICOM.
For CPU time the CT is a crop of a real chest series (so the detection bundle's own rule runs one
forward pass instead of its 512x512x192 sliding window), and the brats bundle's sliding-window
roi is made smaller than its published 240x240x160 in the copy; both full-size runs are in
bench/bundles.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.uid import generate_uid

from pipelines.base import JobInput, PipelineSettings
from pipelines.bundle import read_bundle
from pipelines.torchvision_parts import provide_if_missing
from pipelines.volume import load_series
from tests.support.nodule_series import chest_files
from tests.support.peers import dciodvfy
from training.data_folder import DATA_ROOT

BUNDLES = DATA_ROOT / "monai-bundles"
LUNG = BUNDLES / "lung_nodule_ct_detection"
BRATS = BUNDLES / "brats_mri_segmentation"
BRATS_CASE = Path("mr-brain") / "brats-gli-00001" / "BraTS-GLI-00001-000"

pytestmark = [pytest.mark.skipif(not LUNG.is_dir(), reason=f"{BUNDLES} is missing"), pytest.mark.data, pytest.mark.slow]


def writable_copy(source: Path, folder: Path) -> Path:
    """``source`` copied to ``folder`` (the shared data is read-only), with an empty models/."""
    shutil.copytree(source, folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)
    (folder / "models").mkdir(exist_ok=True)
    return folder


def bundle_with_weights(source: Path, folder: Path, edit=None, torchscript: bool = False) -> Path:
    """A writable copy of ``source`` with seeded weights of its own network_def in models/."""
    writable_copy(source, folder)
    if edit is not None:
        path = folder / "configs" / "inference.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text())), indent=2))
    provide_if_missing()  # the site's own install builds the network the same way
    torch.manual_seed(0)
    network = read_bundle(folder).build("network_def").eval()
    if torchscript:
        torch.jit.script(network).save(str(folder / "models" / "model.ts"))
    else:
        torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def cropped_ct(files: list[Path], folder: Path, rows: slice, cols: slice) -> list[Path]:
    """The slices ``files`` cut to ``rows`` x ``cols`` as a new series, positions moved to match."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[rows, cols]
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        spacing = [float(v) for v in ds.PixelSpacing]  # row spacing, column spacing
        origin = np.array(ds.ImagePositionPatient, float) + cols.start * spacing[1] * row_dir + rows.start * spacing[0] * col_dir
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"{k:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def lung_ct(data_dir, tmp_path_factory):
    """10 slices (80 mm) x 80 x 80 pixels (52 mm) of the right lung of a real chest CT."""
    files = chest_files(data_dir)[12:22]
    return cropped_ct(files, tmp_path_factory.mktemp("lung-ct"), slice(180, 260), slice(110, 190))


def run_nodule_bundle(bundle: Path, files: list[Path], out: Path, reported: int):
    """The pipeline's run, the boxes the bundle gave and the network's inputs.

    Random weights score every anchor alike, so the reporting threshold is set, inside the run,
    to the score of the ``reported``-th best box: a handful of segments instead of 300.
    """
    from pipelines.nodule.pipeline import NoduleDetection

    pipeline = NoduleDetection(PipelineSettings(name="nodule-detection", model=bundle, device="cpu",
                                                options={"report_threshold": 1.0}))
    fed: list[torch.Tensor] = []
    pipeline.bundle.runner.network.register_forward_hook(lambda m, i, o: fed.append(i[0].detach().clone()))
    boxes = []
    detect = pipeline.bundle.detect

    def detect_and_keep(volume):
        boxes.extend(detect(volume))
        pipeline.bundle.report_threshold = boxes[reported - 1].score
        return boxes

    pipeline.bundle.detect = detect_and_keep
    result = pipeline.run(JobInput(series={"series": files}, output_dir=out))
    return pipeline, result, fed, boxes


@pytest.mark.peers
def test_the_lung_nodule_bundle_runs_its_own_sections_on_a_dicom_ct(
        lung_ct, tmp_path):
    bundle = bundle_with_weights(LUNG, tmp_path / "lung")
    torch.set_num_threads(1)
    pipeline, result, fed, boxes = run_nodule_bundle(bundle, lung_ct, tmp_path / "out", reported=5)
    runner = pipeline.bundle.runner
    assert [type(t).__name__ for t in runner.preprocessing.transforms] == [
        "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged", "EnsureTyped"]
    # The bundle's own rule: the 80 x 80 x 64 grid is smaller than infer_patch_size, so one pass.
    assert len(fed) == 1, f"{len(fed)} network calls"

    # What the network saw: the CT resampled by the bundle's Spacingd to 0.703125 x 0.703125 x
    # 1.25 mm in RAS and scaled by its ScaleIntensityRanged (-1024..300 HU -> 0..1). Compared with
    # an independent SimpleITK resampling of the DICOM volume on the same RAS grid.
    volume = load_series(lung_ct)
    image = runner.loader_image(np.transpose(volume.array, (2, 1, 0)), _affine(volume))
    prepared = runner.preprocessing({"image": image})["image"]
    affine = np.asarray(prepared.affine, dtype=np.float64)
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), [0.703125, 0.703125, 1.25], atol=1e-6)
    assert affine[0, 0] > 0 and affine[1, 1] > 0, "Orientationd RAS: x and y grow to the right and front"
    shape = prepared.shape[1:]
    network_input = fed[0][0, 0].numpy()
    np.testing.assert_array_equal(network_input[: shape[0], : shape[1], : shape[2]], prepared[0].numpy())
    expected = _sitk_on_grid(volume, affine, shape)
    expected = np.clip((expected + 1024.0) / 1324.0, 0.0, 1.0)
    inner = (slice(2, -2),) * 3  # the border voxels interpolate against the outside differently
    difference = np.abs(prepared[0].numpy()[inner] - expected[inner])
    print(f"fed vs SimpleITK: median {np.median(difference):.2e}, 99th percentile {np.percentile(difference, 99):.2e}")
    assert float(np.median(difference)) < 1e-3 and float(np.percentile(difference, 99)) < 0.02, (
        float(np.median(difference)), float(np.percentile(difference, 99)))
    # measured 0 and 0 (both trilinear); an x-mirrored input gives median 0.099, 99th percentile 0.74

    # Boxes: the bundle's postprocessing gives cccwhd boxes in LPS world millimetres; radnode
    # writes them unchanged: SR centre = box centre, SEG segment = the source voxels in the box.
    nodules = result.summary.nodules
    assert len(boxes) == result.summary.candidates and len(nodules) == 5
    for box, reported in zip(boxes, nodules):
        np.testing.assert_allclose(reported.center_lps, box.center_lps, atol=0.06)
        low, high = volume.kji_to_lps([0, 0, 0]), volume.kji_to_lps(np.array(volume.array.shape) - 1)
        assert np.all(box.center_lps >= np.minimum(low, high) - 1) and np.all(box.center_lps <= np.maximum(low, high) + 1)

    seg_path, sr_path = _outputs(result.outputs)
    for path in (seg_path, sr_path):
        report = dciodvfy(path)
        assert not report.errors, report.errors
    seg, sr = pydicom.dcmread(seg_path), pydicom.dcmread(sr_path)
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "Lung nodule CT detection"
    labels = _seg_labels(seg, volume)
    first = boxes[0]
    inside = np.argwhere(labels == 1)
    centre = volume.kji_to_lps(inside.mean(axis=0))
    spacing = np.array(volume.spacing)
    assert np.all(np.abs(centre - first.center_lps) <= spacing), (centre, first.center_lps)
    text = sr.to_json()
    assert "Lung nodule CT detection" in text and "0.6.8" in text


def test_a_torchscript_export_of_the_lung_nodule_network_gives_the_same_boxes(
        lung_ct, tmp_path):
    from pipelines.nodule.bundle_detection import BundleDetector

    torch.set_num_threads(1)
    state = BundleDetector.load(bundle_with_weights(LUNG, tmp_path / "pt"), "cpu", 0.0)
    script = BundleDetector.load(bundle_with_weights(LUNG, tmp_path / "ts", torchscript=True), "cpu", 0.0)
    assert isinstance(script.runner.network, torch.jit.ScriptModule)
    volume = load_series(lung_ct)
    ours, theirs = state.detect(volume)[:20], script.detect(volume)[:20]
    np.testing.assert_allclose([b.score for b in theirs], [b.score for b in ours], atol=1e-5)
    np.testing.assert_allclose([b.center_lps for b in theirs], [b.center_lps for b in ours], atol=1e-3)


def _affine(volume) -> np.ndarray:
    from pipelines.bundle_runner import affine_lps

    return affine_lps(volume.origin, volume.spacing, volume.direction)


def _sitk_on_grid(volume, affine_ras: np.ndarray, shape) -> np.ndarray:
    """The volume linearly resampled onto the RAS grid ``affine_ras`` of ``shape`` (x, y, z)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    resampled = sitk.Resample(
        volume.to_sitk(), [int(s) for s in shape], sitk.Transform(), sitk.sitkLinear,
        [float(v) for v in lps[:3, 3]], [float(s) for s in spacing],
        [float(v) for v in (lps[:3, :3] / spacing).ravel()], -1024.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))


def _outputs(paths: list[Path]) -> tuple[Path, Path]:
    by_modality = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in paths}
    return by_modality["SEG"], by_modality["SR"]


def _seg_labels(seg, volume) -> np.ndarray:
    """Segment numbers of a SEG on the source volume's slices (k, j, i)."""
    import highdicom as hd

    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(ds.SOPInstanceUID) for ds in volume.sources]
    array = parsed.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True)
    return np.asarray(array)


#: BraTS 2023 file suffixes of the contrasts, in the brats bundle's channel order (T1c, T1, T2, FLAIR).
BRATS_FILES = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
#: CI window of the brats bundle's SlidingWindowInferer (published: 240 x 240 x 160), and the crop.
SMALL_ROI = [48, 48, 40]
CROP = (80, 80, 40)


def small_roi(config: dict) -> dict:
    config["inferer"]["roi_size"] = SMALL_ROI
    return config


@pytest.fixture(scope="module")
def brain_study(data_dir, tmp_path_factory):
    """An 80 x 80 x 40 mm block of a BraTS case (200 mL of brain: the pipeline refuses under 100 mL)
    around its FLAIR-bright tumour, as four DICOM MR series and as the four NIfTI files the
    bundle's own LoadImaged reads (same voxels)."""
    from tests.support.mr_dicom import Study, write_series

    folder = tmp_path_factory.mktemp("brain")
    images = {role: sitk.ReadImage(str(data_dir / BRATS_CASE / f"{BRATS_CASE.name}-{suffix}.nii.gz"))
              for role, suffix in BRATS_FILES.items()}
    flair = sitk.GetArrayFromImage(images["flair"])
    centre = np.argwhere(flair > np.percentile(flair[flair > 0], 99)).mean(axis=0).astype(int)[::-1]  # (i, j, k)
    start = [int(np.clip(c - n // 2, 0, s - n)) for c, n, s in zip(centre, CROP, images["t1c"].GetSize())]
    study, series, nifti = Study(), {}, {}
    for role, image in images.items():
        block = sitk.Cast(sitk.RegionOfInterest(image, CROP, start), sitk.sitkInt16)  # integers already
        series[role] = write_series(block, role, folder / role, study)
        nifti[role] = folder / f"{role}.nii.gz"
        sitk.WriteImage(block, str(nifti[role]))
    return series, nifti


def bundle_reference_run(bundle: Path, nifti: dict[str, Path]) -> sitk.Image:
    """The bundle run the MONAI way on its NIfTI files: its whole preprocessing (LoadImaged
    included), inferer and postprocessing (SaveImaged left out), labels as an LPS image."""
    from monai.data import decollate_batch

    parsed = read_bundle(bundle)
    parser = parsed.parser
    post = parsed.config["postprocessing"]["transforms"]
    parser[f"postprocessing::transforms::{len(post) - 1}::_disabled_"] = True  # SaveImaged
    network = parsed.build("network_def").eval()
    network.load_state_dict(torch.load(bundle / "models" / "model.pt"))
    parser["network"] = network
    pre, inferer, postprocessing = (parsed.build(k) for k in ("preprocessing", "inferer", "postprocessing"))
    data = pre({"image": [str(nifti[role]) for role in BRATS_FILES]})
    with torch.no_grad():
        pred = decollate_batch(inferer(data["image"][None], network))[0]
    labels = postprocessing({"image": data["image"], "pred": pred})["pred"][0].numpy().astype(np.uint8)
    reference = sitk.ReadImage(str(nifti["t1c"]))
    image = sitk.GetImageFromArray(np.transpose(labels, (2, 1, 0)))
    image.CopyInformation(reference)
    return image


@pytest.mark.peers
def test_the_brats_bundle_runs_its_own_sections_on_a_dicom_brain_study(brain_study, tmp_path, monkeypatch):
    from pipelines.tumor import pipeline as tumor_pipeline
    from pipelines.tumor.pipeline import TumorSegmentation
    from pipelines.tumor.registration import Alignment

    series, nifti = brain_study
    # The block's contrasts are co-registered already (one BraTS case); registration's quality
    # check needs the whole head, which is not in an 80 mm block, so it is left out here.
    monkeypatch.setattr(tumor_pipeline, "align", lambda fixed, moving, name: Alignment(sitk.Euler3DTransform(), 1.0, 1.0))
    bundle = bundle_with_weights(BRATS, tmp_path / "brats", edit=small_roi)
    torch.set_num_threads(1)
    pipeline = TumorSegmentation(PipelineSettings(name="tumor-segmentation", model=bundle, device="cpu"))
    segmenter = pipeline.models.main
    assert segmenter.roles == ("t1c", "t1", "t2", "flair") and segmenter.spacing == 1.0
    runner = segmenter.runner
    assert [type(t).__name__ for t in runner.postprocessing.transforms] == [
        "Activationsd", "Invertd", "AsDiscreted", "Lambdad"]
    fed: list[torch.Tensor] = []
    runner.network.register_forward_hook(lambda m, i, o: fed.append(i[0].detach().clone()))
    result = pipeline.run(JobInput(series=series, output_dir=tmp_path / "out"))

    # The bundle's SlidingWindowInferer with its overlap 0.5: 3 x 3 x 1 windows of 48 x 48 x 40 over
    # the 80 x 80 x 40 block (radnode's own 0.25 would have made 2 x 2 x 1).
    assert len(fed) == 9, f"{len(fed)} windows"
    # Its NormalizeIntensityd (nonzero, channel_wise) on T1c, T1, T2, FLAIR in (L, P, S) voxel order.
    first = fed[0][0].numpy()
    for c, role in enumerate(BRATS_FILES):
        voxels = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(nifti[role]))), (2, 1, 0)).astype(np.float64)
        nonzero = voxels != 0
        expected = np.where(nonzero, (voxels - voxels[nonzero].mean()) / voxels[nonzero].std(), 0.0)[:48, :48, :40]
        np.testing.assert_allclose(first[c], expected, atol=1e-4)

    # Its labels (Lambdad: 4 enhancing, 1 core, 2 edema) land on the same voxels radnode's SEG has.
    own = sitk.GetArrayFromImage(bundle_reference_run(bundle, nifti))
    seg_path, sr_path = _outputs(result.outputs)
    for path in (seg_path, sr_path):
        report = dciodvfy(path)
        assert not report.errors, report.errors
    seg = pydicom.dcmread(seg_path)
    volume = load_series(series["t1c"])
    segments = _seg_labels(seg, volume)
    radnode = np.choose(segments, [0, 1, 2, 4]).astype(np.uint8)
    # Inside the brain radnode's labels are the bundle's; outside it (the block's zero voxels, where
    # random weights label anything) radnode says nothing, whatever the bundle says.
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti["t1c"]))) != 0
    agreement = float(np.mean(radnode[brain] == own[brain]))
    print(f"voxel agreement with the bundle's own run inside the brain: {agreement:.5f}; "
          f"labels {np.unique(own).tolist()}; bundle labels outside the brain: {int(own[~brain].astype(bool).sum())}")
    assert own[brain].any() and agreement >= 0.999, agreement  # measured 1.0
    assert not radnode[~brain].any()
    sr_text = pydicom.dcmread(sr_path).to_json()
    assert "BraTS MRI segmentation" in sr_text and "0.5.2" in sr_text
    assert result.summary.model == "BraTS MRI segmentation 0.5.2"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "BraTS MRI segmentation"


def test_a_torchscript_export_of_the_brats_network_gives_the_same_labels_on_every_contrast_stripped_to_the_brain(
        brain_study, tmp_path, monkeypatch):
    from pipelines.tumor.bundle_segmentation import BundleSegmenter

    series, _ = brain_study
    torch.set_num_threads(1)
    images = {role: load_series(paths).to_sitk() for role, paths in series.items()}
    identity = {role: sitk.Transform() for role in images}
    state = BundleSegmenter.load(bundle_with_weights(BRATS, tmp_path / "pt", edit=small_roi), "cpu")
    script = BundleSegmenter.load(bundle_with_weights(BRATS, tmp_path / "ts", edit=small_roi, torchscript=True), "cpu")
    assert isinstance(script.runner.network, torch.jit.ScriptModule)
    # The block is cut from skull-stripped BraTS data; a brain that leaves out its 20 mm furthest to
    # the patient's right (lowest LPS x) stands for a skull-on study's extracted brain: every
    # contrast must be zero outside it.
    reference = images["t1c"]
    k, j, i = np.indices(sitk.GetArrayViewFromImage(reference).shape)
    x = (np.asarray(reference.GetOrigin())[0] + (np.asarray(reference.GetDirection()).reshape(3, 3)[0]
         * np.asarray(reference.GetSpacing())) @ np.stack([i.ravel(), j.ravel(), k.ravel()])).reshape(i.shape)
    inside = (sitk.GetArrayFromImage(reference) != 0) & (x > x.min() + 19.5)
    brain = sitk.GetImageFromArray(inside.astype(np.uint8))
    brain.CopyInformation(reference)
    fed = []
    loader_image = state.runner.loader_image
    monkeypatch.setattr(state.runner, "loader_image", lambda array, affine: fed.append(array) or loader_image(array, affine))
    ours = state.segment(images, identity, "t1c", brain)
    theirs = script.segment(images, identity, "t1c", brain)
    assert ours[inside].any()
    np.testing.assert_array_equal(theirs, ours)
    (channels,) = fed  # (C, x, y, z) on the bundle's axis-aligned 1 mm grid, from the lowest x
    assert channels.shape[1:] == reference.GetSize()
    assert not channels[:, :20].any() and all(channel[20:].any() for channel in channels)


class BrightSpotNetwork(torch.nn.Module):
    """A stand-in for RetinaNet whose output is a known function of its input, with the bundle's
    three feature levels (strides 4x4x2, 8x8x4, 16x16x8). On the finest level, each anchor's logit
    is the share of calcium-bright voxels (>= 300 HU, 1.0 after the bundle's scaling) in a
    16 x 16 x 16 mm box centred on it; the coarser levels score nothing; box regressions are zero.
    So the best box is the bundle's own anchor nearest the centre of a bright sphere."""

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        bright = torch.clamp((images - 0.98) * 50.0, 0.0, 1.0)
        share = torch.nn.functional.avg_pool3d(bright, kernel_size=[23, 23, 13], stride=[4, 4, 2],
                                               padding=[11, 11, 6], count_include_pad=False)
        classification = [((share - 0.05) * 20.0).repeat(1, 3, 1, 1, 1)]  # unsaturated: no ties
        regression = [torch.zeros_like(share).repeat(1, 18, 1, 1, 1)]
        for stride in ([8, 8, 4], [16, 16, 8]):
            coarse = torch.nn.functional.avg_pool3d(images, kernel_size=stride, stride=stride)
            classification.append(torch.full_like(coarse, -100.0).repeat(1, 3, 1, 1, 1))
            regression.append(torch.zeros_like(coarse).repeat(1, 18, 1, 1, 1))
        return {"classification": classification, "box_regression": regression}


@pytest.mark.peers
def test_the_lung_nodule_bundle_box_lands_on_a_lesion_of_known_position(data_dir, tmp_path):
    """A calcified (500 HU) 16 mm sphere written into the cropped CT (its brightest voxel was
    289 HU) at a known LPS position; the bundle's detector around a network that scores
    brightness must box it there, through the bundle's preprocessing, anchors and postprocessing."""
    from pipelines.nodule.pipeline import NoduleDetection

    files = cropped_ct(chest_files(data_dir)[12:22], tmp_path / "ct", slice(180, 260), slice(110, 190))
    volume = load_series(files)
    centre_kji = np.array([3, 25, 55])  # off the crop's centre, so that a mirrored axis would show
    lesion = volume.kji_to_lps(centre_kji)
    grids = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    points = volume.kji_to_lps(np.stack(grids, axis=-1).astype(float))
    inside = np.linalg.norm(points - lesion, axis=-1) <= 8.0
    for k, path in enumerate(sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hu[inside[k]] = 500.0
        ds.PixelData = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(path)
    bundle = writable_copy(LUNG, tmp_path / "lung")
    torch.jit.script(BrightSpotNetwork()).save(str(bundle / "models" / "model.ts"))
    pipeline = NoduleDetection(PipelineSettings(name="nodule-detection", model=bundle, device="cpu",
                                                options={"report_threshold": 0.9}))
    result = pipeline.run(JobInput(series={"series": files}, output_dir=tmp_path / "out"))
    nodules = result.summary.nodules
    assert len(nodules) >= 1
    error = np.abs(np.array(nodules[0].center_lps) - lesion)
    print(f"top box centre {nodules[0].center_lps} vs lesion {lesion.round(1).tolist()}: {error.round(2).tolist()} mm")
    # The nearest of the finest anchors, 4 x 4 x 2 voxels of 0.703 x 0.703 x 1.25 mm apart, is at
    # most half a step away on each axis; measured 0.01, 0.25, 0.20 mm. A mirrored axis would miss
    # by 21 mm (x), 21 mm (y) or 24 mm (z).
    assert np.all(error <= [1.41, 1.41, 1.25]), error
    for path in result.outputs:
        assert not dciodvfy(path).errors


def test_a_brain_study_without_every_contrast_the_brats_bundle_names_is_not_applicable(
        brain_study, tmp_path, monkeypatch):
    from pipelines.base import NotApplicable
    from pipelines.tumor import pipeline as tumor_pipeline
    from pipelines.tumor.pipeline import TumorSegmentation
    from pipelines.tumor.registration import Alignment

    series, _ = brain_study
    monkeypatch.setattr(tumor_pipeline, "align", lambda fixed, moving, name: Alignment(sitk.Euler3DTransform(), 1.0, 1.0))
    bundle = writable_copy(BRATS, tmp_path / "brats")
    torch.jit.script(torch.nn.Identity()).save(str(bundle / "models" / "model.ts"))  # never reached
    pipeline = TumorSegmentation(PipelineSettings(name="tumor-segmentation", model=bundle, device="cpu"))
    without_t2 = {role: paths for role, paths in series.items() if role != "t2"}
    with pytest.raises(NotApplicable, match="needs T1c, T1, T2, FLAIR; the study lacks T2"):
        pipeline.run(JobInput(series=without_t2, output_dir=tmp_path / "out"))
