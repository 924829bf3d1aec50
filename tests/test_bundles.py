"""The model zoo's published bundles, read as MONAI reads them (../shared/data/monai-bundles)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.bundle import read_bundle
from pipelines.model_folder import ModelFolderError
from pipelines.nodule.detector import NoduleDetector

BUNDLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monai-bundles"
LUNG = BUNDLES / "lung_nodule_ct_detection"
BRATS = BUNDLES / "brats_mri_segmentation"

pytestmark = pytest.mark.skipif(not LUNG.is_dir(), reason=f"{BUNDLES} is missing")


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    (target / "models").mkdir(exist_ok=True)
    return target


def test_the_bundles_name_and_version_come_from_their_metadata():
    assert read_bundle(LUNG).label == "Lung nodule CT detection 0.6.8"
    assert read_bundle(BRATS).label == "BraTS MRI segmentation 0.5.2"


def test_a_missing_optional_package_is_named_with_its_install_command(tmp_path):
    pytest.importorskip("monai")
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed: the missing-package message cannot be shown")
    except ImportError:
        pass
    bundle = _copy(LUNG, tmp_path)
    torch.save({}, bundle / "models" / "model.pt")
    with pytest.raises(ModelFolderError) as caught:
        NoduleDetector.load(bundle, "cpu")
    message = str(caught.value)
    assert "No module named 'torchvision'" in message and "radnode[bundles]" in message
    assert "Traceback" not in message and message.count("\n") == 0


def test_a_torchscript_model_alone_loads_without_building_network_def(tmp_path):
    bundle = _copy(LUNG, tmp_path)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["feature_extractor"] = "$undefined_name_that_would_fail"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(bundle / "models" / "model.ts"))
    detector = NoduleDetector.load(bundle, "cpu")
    assert detector.settings.spacing_mm == (0.703125, 0.703125, 1.25)  # the bundle's Spacingd pixdim
    assert detector.settings.roi_size == (512, 512, 192)  # its infer_patch_size


def test_a_yaml_bundle_is_read_like_a_json_one(tmp_path):
    yaml = pytest.importorskip("yaml")
    bundle = _copy(BRATS, tmp_path)
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    path.unlink()
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    parsed = read_bundle(bundle)
    assert parsed.build("inferer").roi_size == [240, 240, 160]


def test_the_brats_bundle_without_orientationd_sees_arrays_in_file_voxel_order_lps():
    """BraTS NIfTI arrays are (i, j, k) = (L, P, S); feeding RAS mirrored x and y (Dice 0.20)."""
    import numpy as np

    from pipelines.tumor.inference import _bundle_format, from_model_axes, to_model_axes

    fmt = _bundle_format(read_bundle(BRATS).config)
    assert fmt.axcodes == "LPS" and fmt.roi == (240, 240, 160) and fmt.threshold == (0.5, 0.5, 0.5)
    assert fmt.spacing == 1.0  # no Spacingd: the bundle's metadata says 1x1x1 mm input
    source = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C, z, y, x) of an LPS grid
    fed = to_model_axes(source, fmt.axcodes)
    assert fed.shape == (2, 5, 4, 3) and fed[1, 4, 2, 0] == source[1, 0, 2, 4]  # [c, x, y, z]
    np.testing.assert_array_equal(from_model_axes(fed, fmt.axcodes), source)
