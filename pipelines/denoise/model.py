"""The denoising network: a small residual CNN on half-resolution sub-images (FFDNet layout).

The node must denoise a 300-slice 512 x 512 CT in under a minute on two CPU cores. Four
half-resolution sub-images (``PixelUnshuffle``, FFDNet) let each 3x3 convolution see 6x6 pixels at
a quarter of the cost, buying the receptive field FBP's correlated noise needs. The network
predicts the noise (DnCNN residual), is fully convolutional and has no normalisation, so batches
and tiles agree and TorchScript export is trivial. With ``families`` > 0 the first convolution
also sees one constant plane per kernel family, so one network removes each family's texture.
It works in scaled units (``inference.Preprocessing``): another scaling needs only a params file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters saved next to the weights so a state dict can be rebuilt."""

    channels: int = 48
    layers: int = 8
    downscale: int = 2
    #: conditioning planes, one per kernel family (0: not conditioned)
    families: int = 0

    def multiply_adds_per_pixel(self) -> int:
        """Convolution multiply-adds per input pixel, the figure that sets CPU throughput."""
        sub = self.downscale**2
        per_position = 9 * ((sub * 2 + self.families) * self.channels + (self.layers - 2) * self.channels**2)
        return per_position // sub

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ResidualDenoiser(nn.Module):
    """Scaled slices (N, 1, H, W) in, denoised scaled slices out; a conditioned network also takes
    each slice's family index (N,) (``kernels.FAMILIES``)."""

    def __init__(self, arch: Architecture = Architecture()) -> None:
        super().__init__()
        if arch.layers < 2:
            raise ValueError("the denoiser needs at least two convolution layers")
        sub = arch.downscale**2
        layers: list[nn.Module] = [nn.Conv2d(sub + arch.families, arch.channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(arch.layers - 2):
            layers += [nn.Conv2d(arch.channels, arch.channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(arch.channels, sub, 3, padding=1))
        self.downscale = arch.downscale
        self.families = arch.families
        self.unshuffle = nn.PixelUnshuffle(arch.downscale)
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(arch.downscale)

    def forward(self, x: torch.Tensor, family: torch.Tensor | None = None) -> torch.Tensor:
        rows, cols = x.shape[-2:]
        pad_rows, pad_cols = (-rows) % self.downscale, (-cols) % self.downscale
        padded = nn.functional.pad(x, (0, pad_cols, 0, pad_rows), mode="replicate")
        features = self.unshuffle(padded)
        if self.families:
            if family is None:
                raise ValueError("this denoiser is conditioned on the kernel family: pass one per slice")
            planes = nn.functional.one_hot(family.long(), self.families).to(features.dtype)
            rows_sub, cols_sub = features.shape[-2], features.shape[-1]
            features = torch.cat([features, planes[:, :, None, None].expand(-1, -1, rows_sub, cols_sub)], 1)
        noise: torch.Tensor = self.shuffle(self.body(features))
        return x - noise[..., :rows, :cols]
