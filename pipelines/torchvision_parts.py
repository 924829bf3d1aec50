"""The two pure-Python torchvision helpers MONAI's detection ResNet-FPN uses, for a CPU-only torch.

``lung_nodule_ct_detection``'s ``network_def`` builds MONAI's ``resnet_fpn_feature_extractor``,
which takes ``IntermediateLayerGetter`` and ``_validate_trainable_layers`` from torchvision. There
is no CPU build of torchvision: the wheels on PyPI link the CUDA build of torch, and beside the
CPU torch radnode's install uses, ``import torchvision`` fails ("operator torchvision::nms does
not exist"). So a site on the default install could not build the bundle's network from its
``model.pt``. Where torchvision imports, it is used; where it does not, ``provide_if_missing``
gives MONAI these two helpers with torchvision's behaviour (same module tree, so the same
state-dict keys as the published ``model.pt``), and the network built is the bundle's own.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache

import torch
from torch import nn


class IntermediateLayerGetter(nn.ModuleDict):
    """The backbone's children up to the last returned one; forward gives the returned outputs."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        wanted = dict(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        remaining = set(wanted)
        for name, module in model.named_children():
            layers[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers: dict[str, str] = wanted

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}  # insertion-ordered, as torchvision's OrderedDict
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def validate_trainable_layers(is_trained: bool, trainable_backbone_layers: int | None, max_value: int,
                              default_value: int) -> int:
    """Without pretrained weights every layer trains (torchvision's rule)."""
    if not is_trained:
        return max_value
    return default_value if trainable_backbone_layers is None else trainable_backbone_layers


class _Models:
    class _utils:  # noqa: N801 (torchvision's module name)
        IntermediateLayerGetter = IntermediateLayerGetter


@cache
def torchvision_imports() -> bool:
    """Once per process: a failed import is not cached by Python and would run again on each call."""
    try:
        import torchvision  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
    except Exception:  # noqa: BLE001 (ImportError, or a CUDA wheel failing on a CPU torch)
        return False
    return True


def provide_if_missing() -> None:
    """Give MONAI's detection modules these helpers, for this process, when torchvision cannot be
    imported; with a working torchvision, nothing changes."""
    if torchvision_imports():
        return
    from monai.apps.detection.networks import retinanet_network
    from monai.networks.blocks import backbone_fpn_utils

    retinanet_network._validate_trainable_layers = validate_trainable_layers
    backbone_fpn_utils.torchvision_models = _Models
