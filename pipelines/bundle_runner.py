"""A MONAI bundle's own ``preprocessing``, ``inferer`` and ``postprocessing``, run on a DICOM volume.

The bar is MONAI Deploy's ``MonaiBundleInferenceOperator``: the sections run as built by MONAI's
``ConfigParser``, with only ``LoadImage*``/``SaveImage*`` taken out and replaced by what the loader
would have given (``loader_image``). So orientation, spacing, scaling, inferer, thresholds, NMS and
label mapping are what the bundle's authors configured, not radnode's. ``amp`` is half precision
under CUDA only, as MONAI's evaluators apply it. What radnode cannot honour is refused at load
(``BundleError`` naming the key); ``pipelines/BUNDLE_KEYS.md`` covers every published key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.bundle import Bundle, BundleError, read_bundle
from pipelines.model_folder import load_network, require_folder
from pipelines.precision import autocast
from pipelines.torchvision_parts import provide_if_missing

#: Transforms MONAI Deploy drops from a bundle: radnode reads DICOM and writes SEG/SR itself.
LOAD_SAVE = ("LoadImage", "SaveImage")
#: Switches some bundles have between pre-resampled and original scans. radnode always feeds the
#: original scan, so the bundle's own path for original scans (its Spacingd, its reader) runs.
ORIGINAL_SCAN_SWITCHES = {"whether_raw_luna16": True}
#: RAS <-> LPS: x and y change sign.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class BundleRunner:
    """A bundle ready to run on one device: ``run(image)`` gives the postprocessed result dict."""

    bundle: Bundle
    network: torch.nn.Module
    device: str
    preprocessing: Any  # monai.transforms.Compose
    inferer: Callable[..., Any]
    postprocessing: Any
    amp: bool
    input_key: str
    output_key: str
    #: Names of the input channels in the order the network takes them (metadata channel_def).
    channels: tuple[str, ...]
    #: Affine convention of the loader the bundle was written for: "RAS" (nibabel, ITK with
    #: affine_lps_to_ras) or "LPS".
    input_space: str

    @classmethod
    def load(cls, folder: Path, device: str) -> BundleRunner:
        folder = require_folder(folder)
        bundle = read_bundle(folder)
        config = bundle.config
        for key, value in ORIGINAL_SCAN_SWITCHES.items():
            if key in config:
                bundle.parser[key] = value
        if "load_pretrain" in config and not bundle.parser.get_parsed_content("load_pretrain"):
            raise BundleError(f"{folder}: load_pretrain is false; radnode runs a bundle with its weights")
        input_key, output_key, channels = _data_format(bundle)
        space = _loader_space(_disable_load_save(bundle, "preprocessing"))
        _disable_load_save(bundle, "postprocessing")
        bundle.parser["device"] = torch.device(device)
        network = load_network(folder, lambda: _build_network(bundle), "the bundle's network_def", device)
        network = network.to(device).eval()
        # What the bundle's detector or evaluator refer to. Setting a key resets the parser's
        # cache, so nothing is built before this line that must be the same object afterwards.
        bundle.parser["network"] = network
        _run_requirements(bundle)
        preprocessing = _without_load_save(bundle, "preprocessing", input_key)
        postprocessing = _without_load_save(bundle, "postprocessing", None)
        inferer = bundle.build("inferer") if bundle.has("inferer") else _simple_inferer()
        amp = bool(bundle.parser.get_parsed_content("amp")) if bundle.has("amp") else False
        return cls(bundle, network, device, preprocessing, inferer, postprocessing, amp, input_key, output_key,
                   channels, space)

    def run(self, image: Any) -> dict[str, Any]:
        """The bundle's preprocessing, inferer and postprocessing on one loaded image (``loader_image``)."""
        with torch.no_grad():
            data = self.preprocessing({self.input_key: image})
            inputs = data[self.input_key][None].to(self.device)
            with autocast(self.amp and self.device.startswith("cuda")):
                output = self.inferer(inputs, self.network)
            item = dict(data)
            first = _first_item(output)
            if isinstance(first, dict):
                item.update(first)  # detection: {box, label, label_scores}, as the bundle's saver merges it
            else:
                item[self.output_key] = first
            result: dict[str, Any] = self.postprocessing(item)
            return result

    def loader_image(self, array_xyz: np.ndarray, affine_lps: np.ndarray) -> Any:
        """What the bundle's dropped LoadImaged would give for a volume stored as ``array_xyz``.

        ``array_xyz`` is (x, y, z) voxels in file order, or (C, x, y, z) with C channels in
        ``channels`` order; ``affine_lps`` maps (i, j, k, 1) to LPS millimetres.
        """
        from monai.data import MetaTensor

        affine = _FLIP_XY @ affine_lps if self.input_space == "RAS" else np.asarray(affine_lps, dtype=np.float64)
        channel_first = len(self.channels) > 1
        meta = {
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(array_xyz.shape[-3:]),
            "original_channel_dim": 0 if channel_first else "no_channel",
            "space": self.input_space,
            "filename_or_obj": "radnode-series",
        }
        tensor = torch.as_tensor(np.ascontiguousarray(array_xyz, dtype=np.float32))
        return MetaTensor(tensor, affine=torch.as_tensor(affine), meta=meta)

    @property
    def label(self) -> str:
        return self.bundle.label


def affine_lps(origin: np.ndarray, spacing: np.ndarray | Sequence[float], direction: np.ndarray) -> np.ndarray:
    """(i, j, k, 1) -> LPS of a grid whose columns of ``direction`` are the i, j, k axes."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


def _data_format(bundle: Bundle) -> tuple[str, str, tuple[str, ...]]:
    """Input and output names and input channel names from metadata's network_data_format."""
    fmt = bundle.metadata.get("network_data_format")
    if not fmt:
        image_key = bundle.config.get("image_key", "image")
        return str(image_key), "pred", ("image",)
    inputs, outputs = fmt.get("inputs", {}), fmt.get("outputs", {})
    if len(inputs) != 1 or len(outputs) < 1:
        raise BundleError(
            f"{bundle.folder}: metadata network_data_format has inputs {sorted(inputs)}; radnode feeds "
            "one image input (a series, or several contrasts as its channels)"
        )
    (name, spec), = inputs.items()
    count = int(spec.get("num_channels", 1))
    names = spec.get("channel_def", {})
    channels = tuple(str(names.get(str(c), f"channel {c}")) for c in range(count))
    return str(name), str(next(iter(outputs))), channels


def _build_network(bundle: Bundle) -> torch.nn.Module:
    """The bundle's ``network_def``; MONAI's detection ResNet-FPN gets torchvision's two helpers
    from radnode where torchvision cannot load (``torchvision_parts``)."""
    provide_if_missing()
    network: torch.nn.Module = bundle.build("network_def")
    return network


def _run_requirements(bundle: Bundle) -> None:
    """The evaluator's ``_requires_`` (e.g. ``detector_ops``), which configure the detector."""
    evaluator = bundle.config.get("evaluator")
    requires = evaluator.get("_requires_") if isinstance(evaluator, dict) else None
    for reference in requires if isinstance(requires, list) else [requires] if requires else []:
        if not (isinstance(reference, str) and reference.startswith("@")):
            raise BundleError(f"{bundle.folder}: evaluator::_requires_ {reference!r} is not a reference radnode can run")
        bundle.build(reference[1:])


def _disable_load_save(bundle: Bundle, key: str) -> list[dict[str, Any]]:
    """Mark the loading and saving transforms of section ``key`` disabled before it is built (their
    readers and writers, ITK for one, need not be installed); the enabled ones' arguments, parsed."""
    section = bundle.config.get(key)
    transforms = section.get("transforms") if isinstance(section, dict) else None
    dropped = []
    for index, item in enumerate(transforms if isinstance(transforms, list) else []):
        target = str(item.get("_target_", "")).split(".")[-1] if isinstance(item, dict) else ""
        if not target.startswith(LOAD_SAVE):
            continue
        path = f"{key}::transforms::{index}"
        disabled = "_disabled_" in item and bundle.parser.get_parsed_content(f"{path}::_disabled_")
        if not disabled:
            dropped.append({name: bundle.parser.get_parsed_content(f"{path}::{name}")
                            for name in item if not name.startswith("_")})
        bundle.parser[f"{path}::_disabled_"] = True
    return dropped


def _without_load_save(bundle: Bundle, key: str, input_key: str | None) -> Any:
    """Section ``key`` built, without image loading and saving; refused when radnode cannot feed it."""
    from monai.transforms import Compose, MapTransform

    if not bundle.has(key):
        return Compose([])
    compose = bundle.build(key)
    if not isinstance(compose, Compose):
        raise BundleError(f"{bundle.folder}: {key!r} is a {type(compose).__name__}, not a Compose of transforms")
    kept = [t for t in compose.transforms if not any(name in type(t).__name__ for name in LOAD_SAVE)]
    for transform in kept:
        if not isinstance(transform, MapTransform):
            raise BundleError(
                f"{bundle.folder}: {key!r} has {type(transform).__name__}, an array transform; radnode runs "
                "dictionary transforms (their names end in d) so that the image's metadata travels with it"
            )
        if input_key is not None:
            other = [k for k in transform.keys if k != input_key]
            if other:
                raise BundleError(
                    f"{bundle.folder}: {key!r} {type(transform).__name__} reads keys {other}; radnode gives "
                    f"the bundle only its image ({input_key!r})"
                )
    compose.transforms = tuple(kept)
    return compose


def _loader_space(loaders: list[dict[str, Any]]) -> str:
    """"LPS" when the bundle's enabled LoadImaged keeps ITK's LPS affine (affine_lps_to_ras false);
    "RAS" otherwise: nibabel's convention, and ITK's and pydicom's default in MONAI."""
    return "LPS" if any(args.get("affine_lps_to_ras", True) is False for args in loaders) else "RAS"


def _first_item(output: Any) -> Any:
    """The first (only) batch item of an inferer's output: a dict per image, or a batched tensor."""
    if isinstance(output, (list, tuple)):
        return output[0]
    from monai.data import decollate_batch

    return decollate_batch(output)[0]


def _simple_inferer() -> Callable[..., Any]:
    from monai.inferers import SimpleInferer

    return SimpleInferer()
