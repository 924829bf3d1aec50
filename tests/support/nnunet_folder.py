"""A real nnU-Net v2 trained-model folder, made with nnU-Net's own tools, and nnU-Net's own prediction as the reference.

Why: radnode runs nnU-Net results folders that sites bring. A folder written by hand would only
show that radnode reads what its authors think nnU-Net writes; this one is planned by
``nnUNetv2_plan_and_preprocess``, its network built by ``nnUNetTrainer.build_network_architecture``
from those plans and saved as ``nnUNetTrainer.save_checkpoint`` saves it, and its reference is what
``nnUNetv2_predict`` writes for a held-out case. radnode's answer on the same case, sent as DICOM,
must be that label map.

The data: four real BraTS-2015 cases (``../shared/data``), three for planning and for the weights,
one held out (``pat0001``), shrunk to 3 x 4 x 2 mm so that planning and prediction take seconds. Two
channels (T1c, FLAIR) so that a wrong channel order shows. The intensities are the source's
z-scores x 1000, rounded to int16 before the NIfTI is written, so that the NIfTI and the DICOM
written from it hold exactly the same numbers. Outside the brain mask they are 0, as in nnU-Net's
own BraTS datasets: nnU-Net crops to the nonzero region and normalises inside it, which makes the
plans' patch (48 x 80 x 56) and so every forward pass about three times smaller than the whole grid's.

Weights: training for real would take hours, and random weights give a label map of one class.
So each fold is a randomly initialised network (seed per fold) whose final 1x1x1 convolution is
fitted, on the decoder features of the training cases as nnU-Net's preprocessor prepares them, to
their labels with class-balanced weights: a few seconds, and a label map with several classes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
import torch

from tests.support.mr_dicom import Study, write_series
from training.tumor.data import load_brats2015


@dataclass(frozen=True)
class NnUNetCase:
    """A trained-model folder and one held-out case with nnU-Net's own prediction of it."""

    folder: Path
    channels: dict[str, str]
    images: list[Path]
    reference: Path


#: Planning and weight cases, by the source's split; the held-out case is from its test split.
TRAIN_CASES = ("train/brats_2013_pat0005_1", "train/brats_2013_pat0006_1", "validation/brats_2013_pat0003_1")
TEST_CASE = "test/brats_2013_pat0001_1"
#: 1 mm -> 3 x 4 x 2 mm (x, y, z) by averaging blocks: 80 x 60 x 77 voxels, so that planning and prediction
#: take seconds, and three different spacings so that a spacing given in the wrong order, or PixelSpacing
#: read the wrong way round, changes nnU-Net's answer. The coarsest axis (y) is not the first array axis
#: (z), so nnU-Net's plans transpose (transpose_forward [1, 0, 2]) and its export transposes back.
SHRINK = (3, 4, 2)
#: The source's z-scores times this, rounded: int16 values with a resolution of 0.001 standard deviations.
INTENSITY_SCALE = 1000.0
#: dataset.json channel_names; the values are also the keys of ``to_dicom_series``'s answer.
CHANNELS = {"0": "T1c", "1": "FLAIR"}
#: Channel name -> the role of ``load_brats2015`` and of ``tests.support.mr_dicom``'s protocols.
ROLES = {"T1c": "t1c", "FLAIR": "flair"}
#: BraTS-2015 label -> this dataset's label: edema 2 -> 1, necrosis 1 and non-enhancing 3 -> 2, enhancing 4 -> 3.
BRATS_TO_LABEL = {2: 1, 1: 2, 3: 2, 4: 3}
LABELS: dict[str, Any] = {"background": 0, "edema": 1, "non-enhancing core": 2, "enhancing tumor": 3}
#: The region-based variant, in the syntax of nnU-Net's BraTS datasets (same label files).
REGIONS: dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
#: Dataset id and name of each variant; both may live under one root.
DATASETS = {False: (981, "Dataset981_RadnodeBraTS"), True: (982, "Dataset982_RadnodeBraTSRegions")}
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
TRAINED_MODEL = f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
#: What nnUNetTrainer sets for a 3D configuration that is not anisotropic (configure_rotation_dummyDA_mirroring...).
MIRROR_AXES = (0, 1, 2)
#: Fold f's network is initialised with torch.manual_seed(SEED + f).
SEED = 20150
#: Voxels per training case the head is fitted on (a random, seeded sample of the nonzero region).
HEAD_VOXELS = 40000
#: L-BFGS iterations of that fit: enough for the small classes to appear, a second or two.
HEAD_STEPS = 60


def build_case(root: Path, *, folds: tuple[int, ...] = (0,), region_based: bool = False,
               mirroring: bool = True, shrink: tuple[int, int, int] = SHRINK) -> NnUNetCase:
    """The nnU-Net raw, preprocessed and results folders under ``root`` and the reference for ``folds``.

    Each step is skipped when its output is already there, so session fixtures may call this for
    the same root again (with more folds, or the other variant) and pay only for what is new.
    ``mirroring``: the reference with nnU-Net's test-time mirroring (its default), or without
    (``--disable_tta``, an eighth of the forward passes). ``shrink``: voxels of the 1 mm source
    averaged per axis (x, y, z); (1, 1, 1) is BraTS's own grid (``bench.nnunet``), one shrink per root.
    """
    dataset_id, name = DATASETS[region_based]
    root = root.resolve()  # the subprocesses get these paths, from their own working directory
    env = nnunet_env(root)
    raw = Path(env["nnUNet_raw"]) / name
    folder = Path(env["nnUNet_results"]) / name / TRAINED_MODEL
    if not (raw / "dataset.json").is_file():
        write_raw_dataset(raw, region_based, shrink)
    if not (folder / "plans.json").is_file():
        share_fingerprint(Path(env["nnUNet_preprocessed"]), name)
        plan(dataset_id, env, Path(env["nnUNet_preprocessed"]) / name, folder)
    missing = [fold for fold in folds if not (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file()]
    if missing:
        save_checkpoints(folder, raw, missing)
    variant = f"folds_{'_'.join(map(str, folds))}" + ("" if mirroring else "_no_tta")
    reference = root / "reference" / name / variant / f"{case_id(TEST_CASE)}.nii.gz"
    if not reference.is_file():
        predict(dataset_id, folds, env, raw / "imagesTs", reference, mirroring)
    images = [raw / "imagesTs" / f"{case_id(TEST_CASE)}_{int(k):04d}.nii.gz" for k in sorted(CHANNELS, key=int)]
    return NnUNetCase(folder=folder, channels=dict(CHANNELS), images=images, reference=reference)


def nnunet_env(root: Path) -> dict[str, str]:
    """The environment nnU-Net's tools read their three folders from, for subprocesses only.

    Set explicitly: a developer's own nnUNet_* variables must not leak into the build, and
    ``nnUNet_compile`` off so that the reference never depends on torch.compile.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("nnUNet_")}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(root / key)
    env["nnUNet_compile"] = "false"
    return env


def case_id(case: str) -> str:
    """``train/brats_2013_pat0005_1`` -> ``pat0005``."""
    return case.split("_")[-2]


def write_raw_dataset(raw: Path, region_based: bool, shrink: tuple[int, int, int]) -> None:
    """imagesTr/labelsTr of the training cases, imagesTs of the held-out case, dataset.json last (the mark of done)."""
    for case in (*TRAIN_CASES, TEST_CASE):
        images, labels = shrunk_case(case, shrink)
        held_out = case == TEST_CASE
        for k, channel in CHANNELS.items():
            write_nifti(images[channel], raw / ("imagesTs" if held_out else "imagesTr") / f"{case_id(case)}_{int(k):04d}.nii.gz")
        if not held_out:
            write_nifti(labels, raw / "labelsTr" / f"{case_id(case)}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps(dataset_json(region_based), indent=2))


def dataset_json(region_based: bool) -> dict[str, Any]:
    description: dict[str, Any] = {
        "name": DATASETS[region_based][1],
        "description": "BraTS-2015 (deepmedic's examples) at 3 x 4 x 2 mm for radnode's tests; z-scores x 1000",
        "licence": "CC BY-NC-SA 3.0",
        "channel_names": CHANNELS,
        "labels": REGIONS if region_based else LABELS,
        "numTraining": len(TRAIN_CASES),
        "file_ending": ".nii.gz",
    }
    if region_based:
        description["regions_class_order"] = [1, 2, 3]
    return description


def shrunk_case(case: str, shrink: tuple[int, int, int]) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """One BraTS-2015 case on the ``shrink`` grid: channel name -> int16 image (0 outside the brain), and the labels
    as uint8 on the same grid (nearest neighbour: the label at each coarse voxel's centre)."""
    source = load_brats2015(case)
    brain = source["brainmask"] > 0.5
    images = {channel: integer_image(sitk.BinShrink(sitk.Mask(source[role], brain), shrink))
              for channel, role in ROLES.items()}
    grid = images["T1c"]
    labels = sitk.Resample(source["labels"], grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    mapped = np.zeros(grid.GetSize()[::-1], dtype=np.uint8)
    brats = sitk.GetArrayFromImage(labels)
    for before, after in BRATS_TO_LABEL.items():
        mapped[brats == before] = after
    return images, on_grid(mapped, grid)


def integer_image(image: sitk.Image) -> sitk.Image:
    """The image's values x INTENSITY_SCALE, rounded to int16: integers survive NIfTI and DICOM unchanged."""
    scaled = np.rint(sitk.GetArrayFromImage(image) * INTENSITY_SCALE)
    return on_grid(np.clip(scaled, -32768, 32767).astype(np.int16), image)


def on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def write_nifti(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def run_tool(tool: str, args: list[str], env: dict[str, str]) -> None:
    """One of nnU-Net's console scripts (installed beside this Python), failing with its output."""
    command = [str(Path(sys.executable).with_name(tool)), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def share_fingerprint(preprocessed_root: Path, name: str) -> None:
    """The other variant's fingerprint, when it has one, as this one's: the two hold the same images
    and label files, and nnU-Net plans from a fingerprint it finds instead of extracting it again
    (20 of the 27 s its planning takes here)."""
    target = preprocessed_root / name / "dataset_fingerprint.json"
    for _, other in DATASETS.values():
        source = preprocessed_root / other / "dataset_fingerprint.json"
        if other != name and source.is_file() and not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def plan(dataset_id: int, env: dict[str, str], preprocessed: Path, folder: Path) -> None:
    """Fingerprint and plans by nnU-Net's own CLI, then the files training copies into the results folder
    (nnUNetTrainer.on_train_start), plans.json last.

    ``--no_pp``: no preprocessed training data, nothing here trains from it (so ``-c`` would be
    ignored: the plans hold every configuration the planner makes, 2d and 3d_fullres here).
    """
    run_tool("nnUNetv2_plan_and_preprocess",
             ["-d", str(dataset_id), "--no_pp", "-npfp", "1", "--verify_dataset_integrity", "--no_pbar"], env)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(preprocessed / "dataset.json", folder / "dataset.json")
    shutil.copyfile(preprocessed / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    shutil.copyfile(preprocessed / "nnUNetPlans.json", folder / "plans.json")


def save_checkpoints(folder: Path, raw: Path, folds: list[int]) -> None:
    """``checkpoint_final.pth`` of each fold: a network built as nnU-Net builds it, its head fitted."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # lazy: seconds of imports

    plans = json.loads((folder / "plans.json").read_text())
    description = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    training = preprocessed_training_cases(raw, plans_manager, configuration, description)
    for fold in folds:
        network = fitted_network(plans_manager, configuration, description, training, SEED + fold)
        save_checkpoint(network, folder / f"fold_{fold}" / "checkpoint_final.pth", plans, description, fold)


def preprocessed_training_cases(raw: Path, plans_manager: Any, configuration: Any,
                                description: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(data, seg) of each training case as nnU-Net's DefaultPreprocessor makes them for training and inference:
    transposed, cropped to the nonzero region (seg -1 outside it), z-scored, resampled to the plans' spacing."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    preprocessor = DefaultPreprocessor(verbose=False)
    cases = []
    for case in TRAIN_CASES:
        images = [str(raw / "imagesTr" / f"{case_id(case)}_{int(k):04d}.nii.gz") for k in sorted(CHANNELS, key=int)]
        data, seg, _ = preprocessor.run_case(images, str(raw / "labelsTr" / f"{case_id(case)}.nii.gz"),
                                             plans_manager, configuration, description)
        cases.append((data, seg[0]))
    return cases


def fitted_network(plans_manager: Any, configuration: Any, description: dict[str, Any],
                   training: list[tuple[np.ndarray, np.ndarray]], seed: int) -> torch.nn.Module:
    """The plans' network with nnU-Net's random initialisation (seeded), its final 1x1x1 convolution fitted."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    label_manager = plans_manager.get_label_manager(description)
    with torch.random.fork_rng(devices=[]):  # seeded here without moving the test process's own generator
        torch.manual_seed(seed)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, description),
            label_manager.num_segmentation_heads, enable_deep_supervision=False)
    network.eval()
    head = network.decoder.seg_layers[-1]
    rng = np.random.default_rng(seed)
    features, targets = zip(*(head_samples(network, head, data, seg, configuration, rng) for data, seg in training))
    regions = label_manager.foreground_regions if label_manager.has_regions else None
    fit_head(head, torch.cat(features), torch.cat(targets), regions)
    return network


def head_samples(network: torch.nn.Module, head: torch.nn.Conv3d, data: np.ndarray, seg: np.ndarray,
                 configuration: Any, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input features and the labels at a random sample of the case's nonzero voxels.

    The case is padded as the predictor pads (centred, zeros, at least one patch, divisible by the
    network's strides), so its features are those sliding-window inference sees, near enough.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    divisible = np.prod(configuration.pool_op_kernel_sizes, axis=0).astype(int).tolist()
    padded, slicer = pad_nd_image(data, configuration.patch_size, "constant", {"constant_values": 0}, True, divisible)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0]))
    with torch.no_grad():
        network(torch.from_numpy(padded[None]))
    hook.remove()
    features = captured[0][0][(slice(None), *slicer[1:])].reshape(head.in_channels, -1).T
    inside = np.flatnonzero(seg.ravel() >= 0)
    chosen = torch.from_numpy(rng.choice(inside, size=min(HEAD_VOXELS, inside.size), replace=False))
    return features[chosen], torch.from_numpy(seg.ravel()[chosen.numpy()].astype(np.int64))


def fit_head(head: torch.nn.Conv3d, features: torch.Tensor, labels: torch.Tensor,
             regions: list[Any] | None) -> None:
    """Class-balanced logistic regression of the head on fixed features (softmax, or one sigmoid per region).

    Balanced so that the small classes (enhancing tumor, core) win some voxels: the point is a label
    map with several classes, not a good segmentation.
    """
    if regions is None:
        counts = torch.bincount(labels, minlength=head.out_channels).clamp(min=1).float()
        loss_fn: Any = torch.nn.CrossEntropyLoss(weight=counts.sum() / counts)
        targets: torch.Tensor = labels
    else:
        targets = torch.stack([torch.isin(labels, torch.tensor(region)) for region in regions], dim=1).float()
        positives = targets.sum(0).clamp(min=1)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(len(targets) - positives) / positives)
    weight = torch.zeros(head.out_channels, head.in_channels, requires_grad=True)
    bias = torch.zeros(head.out_channels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=HEAD_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss: torch.Tensor = loss_fn(features @ weight.T + bias, targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        head.weight.copy_(weight.reshape(head.weight.shape))
        head.bias.copy_(bias)


def save_checkpoint(network: torch.nn.Module, path: Path, plans: dict[str, Any], description: dict[str, Any],
                    fold: int) -> None:
    """The dict nnUNetTrainer.save_checkpoint writes, with what a CPU run of the trainer would hold
    (no grad scaler, an untouched SGD as configure_optimizers makes it, empty logs, epoch 1: one fit)."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": LocalLogger().get_checkpoint(),
        "_best_ema": None,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold, "dataset_json": description,
                      "device": torch.device("cpu")},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": MIRROR_AXES,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)


def predict(dataset_id: int, folds: tuple[int, ...], env: dict[str, str], images: Path, reference: Path,
            mirroring: bool = True, device: str = "cpu") -> None:
    """``nnUNetv2_predict`` on the held-out case with nnU-Net's defaults (step 0.5, Gaussian, mirroring
    on all three axes unless ``mirroring`` is false: ``--disable_tta``), on the CPU unless ``device``
    says "cuda" (``bench.nnunet`` on a GPU), in one process (-npp 0 -nps 0); written aside, then moved
    into place."""
    partial = reference.parent.with_name(reference.parent.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run_tool("nnUNetv2_predict",
             ["-i", str(images), "-o", str(partial), "-d", str(dataset_id), "-c", CONFIGURATION,
              "-f", *map(str, folds), "-device", device, "-npp", "0", "-nps", "0", "--disable_progress_bar",
              *([] if mirroring else ["--disable_tta"])], env)
    shutil.rmtree(reference.parent, ignore_errors=True)
    partial.rename(reference.parent)


def to_dicom_series(case: NnUNetCase, out: Path) -> dict[str, list[Path]]:
    """The held-out case's channels as MR series of one study, voxel for voxel, keyed by channel name.

    Written by ``tests.support.mr_dicom.write_series`` (geometry from the image, int16 as stored), then each
    SeriesDescription set to the channel's name, so that a route or a reader can tell them apart by it.
    """
    study = Study(patient_id="RADNODE-TEST-NNUNET")
    series = {}
    for channel, image in zip((case.channels[k] for k in sorted(case.channels, key=int)), case.images):
        paths = write_series(sitk.ReadImage(str(image)), ROLES[channel], out / channel, study)
        for path in paths:
            dataset = pydicom.dcmread(path)
            dataset.SeriesDescription = channel
            dataset.save_as(path, enforce_file_format=True)
        series[channel] = paths
    return series
