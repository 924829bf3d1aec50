"""The model zoo's published bundles, read as MONAI reads them (../shared/data/monai-bundles)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.base import PipelineSettings
from pipelines.bundle import BundleError, read_bundle
from pipelines.bundle_runner import BundleRunner
from pipelines.model_folder import ModelFolderError
from training.data_folder import DATA_ROOT

BUNDLES = DATA_ROOT / "monai-bundles"
LUNG = BUNDLES / "lung_nodule_ct_detection"
BRATS = BUNDLES / "brats_mri_segmentation"

pytestmark = [pytest.mark.skipif(not LUNG.is_dir(), reason=f"{BUNDLES} is missing"), pytest.mark.data]


def _copy(source: Path, tmp_path: Path, torchscript: bool = False) -> Path:
    """A writable copy; with ``torchscript``, a stand-in model.ts so that no network is built
    (what is tested here is read before the weights matter)."""
    target = tmp_path / source.name
    shutil.copytree(source, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    (target / "models").mkdir(exist_ok=True)
    if torchscript:
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(target / "models" / "model.ts"))
    return target


def _edit(bundle: Path, change, name: str = "inference.json") -> Path:
    path = bundle / "configs" / name
    path.write_text(json.dumps(change(json.loads(path.read_text())), indent=2))
    return bundle


def test_every_key_of_the_published_inference_configs_is_in_the_treatment_table():
    table = (Path(__file__).resolve().parents[3] / "pipelines" / "BUNDLE_KEYS.md").read_text()
    for bundle in (LUNG, BRATS):
        for key in json.loads((bundle / "configs" / "inference.json").read_text()):
            assert f"`{key}`" in table, f"{bundle.name}: {key} is not in pipelines/BUNDLE_KEYS.md"


def test_the_bundles_name_and_version_come_from_their_metadata():
    assert read_bundle(LUNG).label == "Lung nodule CT detection 0.6.8"
    assert read_bundle(BRATS).label == "BraTS MRI segmentation 0.5.2"


def test_a_missing_optional_package_is_named_with_its_install_command(tmp_path):
    """A bundle whose network imports a package the site lacks gets one line naming it."""
    bundle = _edit(_copy(LUNG, tmp_path), lambda config: {
        **config, "network_def": "$__import__('radnode_absent_package').Network()"})
    torch.save({}, bundle / "models" / "model.pt")
    with pytest.raises(ModelFolderError) as caught:
        BundleRunner.load(bundle, "cpu")
    message = str(caught.value)
    assert "No module named 'radnode_absent_package'" in message
    assert "pip install radnode_absent_package" in message
    assert "Traceback" not in message and message.count("\n") == 0


def test_the_lung_bundle_builds_its_network_from_a_state_dict_with_or_without_torchvision(tmp_path):
    """There is no CPU build of torchvision; the default install still builds the bundle's
    ResNet50-FPN and loads the published state-dict keys into it."""
    from pipelines.torchvision_parts import torchvision_imports
    from tests.pipelines.bundles.test_bundle_runs import bundle_with_weights

    runner = BundleRunner.load(bundle_with_weights(LUNG, tmp_path / "lung"), "cpu")
    keys = list(runner.network.state_dict())
    print(f"torchvision imports: {torchvision_imports()}; {len(keys)} state-dict keys")
    assert "feature_extractor.body.conv1.weight" in keys and "feature_extractor.fpn.layer_blocks.0.weight" in keys


def test_a_torchscript_model_alone_loads_without_building_network_def(tmp_path):
    bundle = _copy(LUNG, tmp_path)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["feature_extractor"] = "$undefined_name_that_would_fail"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(bundle / "models" / "model.ts"))
    runner = BundleRunner.load(bundle, "cpu")
    assert isinstance(runner.network, torch.jit.ScriptModule)
    spacing = next(t for t in runner.preprocessing.transforms if type(t).__name__ == "Spacingd")
    assert list(spacing.spacing_transform.pixdim) == [0.703125, 0.703125, 1.25]  # its pixdim, for original scans
    assert list(runner.inferer.detector.inferer.roi_size) == [512, 512, 192]  # its detector_ops ran


def test_a_yaml_bundle_is_read_like_a_json_one(tmp_path):
    yaml = pytest.importorskip("yaml")
    bundle = _copy(BRATS, tmp_path)
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    path.unlink()
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    parsed = read_bundle(bundle)
    assert parsed.build("inferer").roi_size == [240, 240, 160]


def test_the_brats_bundle_is_fed_its_four_contrasts_as_its_loader_would_give_them(tmp_path):
    """No Orientationd: BraTS NIfTI arrays are (i, j, k) = (L, P, S) with a RAS affine, channels first."""
    import numpy as np

    from pipelines.bundle_runner import affine_lps
    from pipelines.tumor.bundle_segmentation import BundleSegmenter

    segmenter = BundleSegmenter.load(_copy(BRATS, tmp_path, torchscript=True), "cpu")
    assert segmenter.roles == ("t1c", "t1", "t2", "flair")  # metadata channel_def: T1c, T1, T2, FLAIR
    assert segmenter.spacing == 1.0  # metadata image_classes: "... at 1x1x1 mm"
    image = segmenter.runner.loader_image(np.zeros((4, 5, 6, 7), np.float32),
                                          affine_lps(np.array([10.0, 20.0, 30.0]), np.ones(3), np.eye(3)))
    np.testing.assert_array_equal(np.asarray(image.affine), [[-1, 0, 0, -10], [0, -1, 0, -20], [0, 0, 1, 30], [0, 0, 0, 1]])
    assert image.shape == (4, 5, 6, 7) and image.meta["original_channel_dim"] == 0


def _set(path: str, value):
    """A change to one key (``a::b::0::c``) of a config."""
    def change(config):
        *parents, last = path.split("::")
        node = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
        return config
    return change


@pytest.mark.parametrize("change, options, key", [
    (None, {}, "report_threshold"),
    (_set("num_classes", 2), {"report_threshold": 0.5}, "num_classes"),
    (_set("load_pretrain", False), {"report_threshold": 0.5}, "load_pretrain"),
    (_set("postprocessing::transforms::1::_disabled_", True), {"report_threshold": 0.5}, "AffineBoxToWorldCoordinated"),
    (_set("preprocessing::transforms::5::keys", ["image", "label"]), {"report_threshold": 0.5}, "'label'"),
])
def test_a_detection_bundle_radnode_cannot_honour_is_refused_at_start_naming_the_key(tmp_path, change, options, key):
    from pipelines.nodule.pipeline import NoduleDetection

    bundle = _copy(LUNG, tmp_path, torchscript=True)
    if change is not None:
        _edit(bundle, change)
    with pytest.raises(BundleError) as caught:
        NoduleDetection(PipelineSettings(name="nodule-detection", model=bundle, device="cpu", options=options))
    message = str(caught.value)
    assert key in message and message.count("\n") == 0, message


@pytest.mark.slow
def test_radnode_run_refuses_a_bundle_it_cannot_honour_in_one_line_naming_the_key(tmp_path, data_dir):
    from tests.support.harness import NodeProcess, node_config

    bundle = _copy(LUNG, tmp_path, torchscript=True)
    config = node_config(tmp_path, pipelines={"nodule-detection": {"model": str(bundle), "device": "cpu"}})
    source = data_dir / "ct-chest" / "lung-pet-ct-dx-A0002" / "B40f"
    result = NodeProcess(config, tmp_path).cli("run", "--pipeline", "nodule-detection", "--input", str(source),
                                               "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "report_threshold" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("change, name, key", [
    (_set("network_data_format::inputs::image::channel_def::3", "DWI"), "metadata.json", "channel_def"),
    (_set("image_classes", "4 channel data"), "metadata.json", "image_classes"),
    (_set("preprocessing::transforms::1", {"_target_": "NormalizeIntensity", "nonzero": True}), "inference.json",
     "array transform"),
])
def test_a_segmentation_bundle_radnode_cannot_honour_is_refused_at_start_naming_the_key(tmp_path, change, name, key):
    from pipelines.tumor.pipeline import TumorSegmentation

    bundle = _edit(_copy(BRATS, tmp_path, torchscript=True), change, name)
    with pytest.raises(BundleError) as caught:
        TumorSegmentation(PipelineSettings(name="tumor-segmentation", model=bundle, device="cpu"))
    assert key in str(caught.value), str(caught.value)


@pytest.mark.slow
def test_radnode_serve_refuses_to_start_with_a_bundle_it_cannot_honour_naming_the_key(tmp_path):
    """The refusal comes before the node listens, not as every job's failure reason later."""
    from tests.support.harness import NodeProcess, node_config

    bundle = _copy(LUNG, tmp_path, torchscript=True)
    route = {"name": "nodules", "pipeline": "nodule-detection", "destinations": ["pacs"], "match": {"Modality": "CT"}}
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}  # never reached
    config = node_config(tmp_path, routes=[route], destinations=[pacs],
                         pipelines={"nodule-detection": {"model": str(bundle), "device": "cpu"}})
    result = NodeProcess(config, tmp_path).cli("serve")
    assert result.returncode == 2, result.stderr
    assert "pipelines.nodule-detection.model" in result.stderr and "report_threshold" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr

    config["pipelines"]["nodule-detection"]["options"] = {"report_threshold": 0.5}
    node = NodeProcess(config, tmp_path).start()  # the same bundle, honourable: the node starts
    node.stop()


def test_two_bundles_in_one_worker_each_build_from_their_own_scripts_package(tmp_path):
    """Every bundle names its package ``scripts``; a worker loading two must not mix them up."""
    bundles = []
    for name in ("first", "second"):
        folder = tmp_path / name
        (folder / "configs").mkdir(parents=True)
        (folder / "scripts").mkdir()
        (folder / "scripts" / "__init__.py").write_text("")
        (folder / "scripts" / "marker.py").write_text(f"class Marker:\n    name = {name!r}\n")
        (folder / "configs" / "inference.json").write_text(json.dumps({"marker": {"_target_": "scripts.marker.Marker"}}))
        bundles.append(read_bundle(folder))
    built = [bundle.build("marker").name for bundle in (*bundles, bundles[0])]
    assert built == ["first", "second", "first"]
