"""The reference detector's network: MONAI's RetinaNet on a small ResNet-FPN.

MONAI's ``resnet_fpn_feature_extractor`` fixes the FPN (and so both heads) at 256 channels,
which costs minutes per chest CT on a CPU, and its ``BackboneWithFPN`` needs torchvision only to
pick intermediate ResNet stages. The reference model builds the same parts from MONAI blocks
(``ResNet`` stages -> ``FeaturePyramidNetwork`` -> ``RetinaNet``) with a narrow FPN; everything else
(anchors, matching, losses, box decoding, NMS, sliding windows) is MONAI's ``RetinaNetDetector``.
A MONAI bundle's own network (for example ``lung_nodule_ct_detection``'s ResNet-50) is built from
its ``configs/inference.json`` instead (see ``model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets.resnet import ResNet
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """``[network]`` of a radnode params file: what ``build_retinanet`` needs to rebuild the net."""

    block_inplanes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    conv1_t_size: list[int] = field(default_factory=lambda: [7, 7, 7])
    conv1_t_stride: list[int] = field(default_factory=lambda: [2, 2, 1])
    returned_layers: list[int] = field(default_factory=lambda: [1, 2])
    fpn_channels: int = 32
    num_anchors: int = 3
    num_classes: int = 1


def size_divisible(arch: Architecture) -> list[int]:
    """Input size multiple the FPN needs: conv1 stride x max-pool x stride of the deepest level."""
    return [s * 2 * 2 ** max(arch.returned_layers) for s in arch.conv1_t_stride]


def anchor_scales(arch: Architecture) -> list[int]:
    """Feature-map scale of each FPN level (one per returned layer, then the max-pool level), relative
    to the finest: each deeper ResNet stage and the max-pool level halve the resolution."""
    scales = [2 ** (k - arch.returned_layers[0]) for k in arch.returned_layers]
    return scales + [2 * scales[-1]]


def build_retinanet(**kwargs: Any) -> RetinaNet:
    """RetinaNet on a basic-block ResNet-FPN; keyword arguments are ``Architecture`` fields.

    Importable by dotted name, so a MONAI bundle's ``network_def`` can name it as ``_target_``.
    """
    arch = Architecture(**kwargs)
    backbone = ResNet(
        block="basic",
        layers=arch.layers,
        block_inplanes=arch.block_inplanes,
        spatial_dims=3,
        n_input_channels=1,
        # MONAI annotates these as a 1-tuple or an int; it takes one value per spatial dimension.
        conv1_t_size=arch.conv1_t_size,  # type: ignore[arg-type]
        conv1_t_stride=arch.conv1_t_stride,  # type: ignore[arg-type]
    )
    return RetinaNet(
        spatial_dims=3,
        num_classes=arch.num_classes,
        num_anchors=arch.num_anchors,
        feature_extractor=ResNetFPN(backbone, arch),
        size_divisible=size_divisible(arch),
    )


class ResNetFPN(nn.Module):
    """The ResNet stem and stages up to the deepest returned one, feeding MONAI's FPN.

    Stages past the deepest returned layer are dropped: they would only cost weights.
    """

    def __init__(self, backbone: ResNet, arch: Architecture) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act, backbone.maxpool)
        self.stages = nn.ModuleList(
            getattr(backbone, f"layer{k}") for k in range(1, max(arch.returned_layers) + 1)
        )
        self.returned = [k - 1 for k in arch.returned_layers]
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=3,
            in_channels_list=[arch.block_inplanes[k] for k in self.returned],
            out_channels=arch.fpn_channels,
            extra_blocks=LastLevelMaxPool(3),
        )
        self.out_channels = arch.fpn_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        taps: dict[str, torch.Tensor] = {}  # insertion-ordered, and TorchScript-friendly
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.returned:
                taps[str(len(taps))] = x
        features: dict[str, torch.Tensor] = self.fpn(taps)
        return features
