"""The denoising network: a small residual CNN on half-resolution sub-images (FFDNet layout).

Why this shape: the node must denoise a 300-slice 512 x 512 CT in under a minute on two CPU
cores, which leaves roughly 30-40 thousand multiply-adds per pixel. Rearranging each slice into
four half-resolution sub-images (``PixelUnshuffle``, as in FFDNet, Zhang et al. 2018) makes every
3x3 convolution see a 6x6 pixel neighbourhood at a quarter of the cost, so the same budget buys a
receptive field of about 34 pixels, which CT noise needs because FBP makes it correlated over
several pixels. The network predicts the noise and subtracts it (DnCNN residual learning), is
fully convolutional (any even matrix size; odd sizes are padded by one) and has no normalisation
layers, so batches and tiles give identical results and TorchScript export is trivial.

Conditioning on the kernel family: with ``families`` > 0 the first convolution also sees one
constant plane per family (one-hot, ``kernels.FAMILIES`` order), so one network removes each
family's noise texture (a sharp kernel's fine, strong grain; a smooth kernel's coarse one)
instead of averaging them. The planes join after the pixel-unshuffle, which costs about 1 % of
the multiply-adds.

The network works in scaled units (``inference.Preprocessing`` maps HU to them and back), so a
site's own TorchScript model with a different scaling only needs a different parameters file.
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
