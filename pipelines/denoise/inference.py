"""Load a denoising model folder once and apply it to stacks of HU slices with bounded memory.

A folder holds ``model.ts`` (TorchScript, (N, 1, H, W) float32 network units in and out) or
``model.pt`` (a ``model.ResidualDenoiser`` state dict) and ``params.toml``/``.json``, every key
checked (``params.DenoiseParams``; docs/denoise.md shows one). Mean HU must not move (enhancement,
fat and fluid are read from it), so the model's residual is high-passed before it is applied:
``input + r - G(r)``, G a Gaussian of ``restore_mean_sigma_mm``; CT noise has little power there.
The kernel family picks ``[family_weights]`` or conditions a ``families`` network; ``strength``
blends the result with the input for a site that wants less smoothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pipelines.denoise.kernels import FAMILIES, measured_family
from pipelines.denoise.model import Architecture, ResidualDenoiser
from pipelines.denoise.params import RESTORE_MEAN_SIGMA_MM, DenoiseParams, Input
from pipelines.model_folder import ModelFolderError, inner_folder, load_network, load_params, require_folder
from pipelines.precision import autocast

#: The weights trained by ``training.denoise.train``, shipped in the repository.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights"
#: Pixels per forward pass: about 0.3 GB of activations on a CPU (8 slices of 512 x 512) ...
CPU_BATCH_PIXELS = 8 * 512 * 512
#: ... and about 2 GB of a GPU's memory in half precision.
GPU_BATCH_PIXELS = 64 * 512 * 512
#: the defaults of a params file's [input], which the training starts from too
_INPUT = Input()


@dataclass(frozen=True)
class Preprocessing:
    """How HU become network units and back, and how much context a tile needs."""

    clip: tuple[float, float] = _INPUT.clip
    offset: float = _INPUT.offset
    scale: float = _INPUT.scale
    halo: int = _INPUT.halo
    #: scale (mm) below which the model may change the image; see "Mean preservation" above
    restore_mean_sigma_mm: float = RESTORE_MEAN_SIGMA_MM

    @classmethod
    def of(cls, params: DenoiseParams) -> Preprocessing:
        return cls(clip=params.input.clip, offset=params.input.offset, scale=params.input.scale,
                   halo=params.input.halo, restore_mean_sigma_mm=params.output.restore_mean_sigma_mm)

    def to_network(self, hu: torch.Tensor) -> torch.Tensor:
        return (hu.clamp(*self.clip) - self.offset) / self.scale

    def to_hu(self, units: torch.Tensor) -> torch.Tensor:
        return units * self.scale + self.offset


def _network(folder: Path, params: DenoiseParams, device: str) -> torch.nn.Module:
    return load_network(folder, lambda: ResidualDenoiser(Architecture(**params.model.given())),
                        "a ResidualDenoiser ([model] channels, layers, downscale)", device)


def _family_folder(folder: Path, family: str, name: str) -> Path:
    """The model folder that ``[family_weights]`` names for ``family``, refused unless it lies
    inside ``folder`` and exists."""
    inner = inner_folder(folder, name, f"[family_weights] {family}")
    if not inner.is_dir():
        raise ModelFolderError(f"{folder}: [family_weights] {family} names {name!r}, which is not a folder in it")
    return inner


def keep_mean(before: torch.Tensor, after: torch.Tensor, sigma_px: tuple[float, float]) -> torch.Tensor:
    """``before + r - G(r)`` for the change ``r = after - before`` of (N, 1, H, W) images.

    G is an in-plane Gaussian of ``sigma_px`` (rows, columns) pixels, cut at 4 sigma with edge
    pixels repeated: ``scipy.ndimage.gaussian_filter``'s defaults with mode "nearest". The units
    do not matter (HU or network units): it is linear. Training fits through the same function.
    A scale of 0 restores nothing: ``after`` as it is (``restore_mean_sigma_mm = 0``).
    """
    if not any(sigma_px):
        return after
    residual = after - before
    low = residual
    for axis, sigma in ((2, sigma_px[0]), (3, sigma_px[1])):
        radius = int(4.0 * sigma + 0.5)
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
        taps = (taps / taps.sum()).to(device=low.device, dtype=low.dtype)
        pad = (0, 0, radius, radius) if axis == 2 else (radius, radius, 0, 0)
        shape = (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1)
        low = torch.nn.functional.conv2d(torch.nn.functional.pad(low, pad, mode="replicate"), taps.view(shape))
    return before + residual - low


class Denoiser:
    """A loaded model plus its preprocessing, on one device; call it on (slices, rows, cols) HU.

    ``family_weights`` maps a kernel family to the sub-folder and denoiser that take its series
    instead of this one (params ``[family_weights]``).
    """

    def __init__(self, network: torch.nn.Module, preprocessing: Preprocessing, device: str,
                 batch_pixels: int | None = None, half_precision: bool = True, strength: float = 1.0,
                 family_weights: Mapping[str, tuple[str, Denoiser]] | None = None) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        self.family_weights = dict(family_weights or {})
        self.device = device
        self.half_precision = half_precision
        self.strength = strength
        #: True for a network that takes the kernel family (``model.ResidualDenoiser`` with families)
        self.conditioned = bool(getattr(network, "families", 0))
        self.preprocessing = preprocessing
        self.cuda = device.startswith("cuda")
        self.batch_pixels = batch_pixels or (GPU_BATCH_PIXELS if self.cuda else CPU_BATCH_PIXELS)
        # channels_last lets oneDNN use its fast convolution kernels: about 1.7x on a CPU.
        # (torch's stubs leave out Module.to's memory_format, which it has had since 1.5.)
        self.network = network.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(cls, folder: Path, device: str, batch_pixels: int | None = None,
             half_precision: bool = True, strength: float = 1.0) -> Denoiser:
        folder = require_folder(folder)
        params = load_params(folder, DenoiseParams)
        family_weights = {
            family: (name, cls.load(_family_folder(folder, family, name), device, batch_pixels, half_precision,
                                    strength))
            for family, name in params.family_weights.given().items()
        }
        return cls(_network(folder, params, device), Preprocessing.of(params), device, batch_pixels,
                   half_precision, strength, family_weights)

    def weights_for(self, family: str) -> str:
        """The sub-folder whose weights denoise a series of ``family`` ("." for this folder's own)."""
        return self.family_weights[family][0] if family in self.family_weights else "."

    def for_family(self, family: str) -> Denoiser:
        """The denoiser that takes a series of ``family``: its own weights', else this one."""
        return self.family_weights[family][1] if family in self.family_weights else self

    def __call__(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], family: str | None = None) -> np.ndarray:
        """Denoised HU, float32, same shape. Slices go in batches, oversized slices in tiles.

        ``pixel_spacing_mm`` (row, column) sets the mean preservation's scale (on the model's
        device: the volume crosses the bus once each way). ``family`` picks the family's weights
        and conditions a network that takes it; None measures it from the noise (sharp if unsure).
        """
        if hu.ndim != 3:
            raise ValueError(f"expected (slices, rows, cols), got shape {hu.shape}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown kernel family {family!r}: one of {', '.join(FAMILIES)}")
        if self.family_weights or self.conditioned:
            family = family or measured_family(hu, float(pixel_spacing_mm[1])) or "sharp"
        chosen = self.for_family(family) if family else self
        if chosen is not self:
            return chosen(hu, pixel_spacing_mm, family)
        index = None
        if self.conditioned and family is not None:
            index = torch.tensor([FAMILIES.index(family)], device=self.device)
        out = self._denoise(hu, pixel_spacing_mm, index)
        if self.strength < 1.0:
            start = np.clip(hu, *self.preprocessing.clip)
            out = (start + self.strength * (out - start)).astype(np.float32)
        return out

    def _denoise(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], family: torch.Tensor | None) -> np.ndarray:
        """The model's full effect (strength 1), mean-preserved, batch by batch."""
        sigma_mm = self.preprocessing.restore_mean_sigma_mm
        sigma_px = (sigma_mm / float(pixel_spacing_mm[0]), sigma_mm / float(pixel_spacing_mm[1]))
        out = np.empty(hu.shape, dtype=np.float32)
        per_batch = self.batch_pixels // (hu.shape[1] * hu.shape[2])
        if per_batch == 0:
            for k in range(hu.shape[0]):
                tiled = torch.from_numpy(self._tiled(hu[k], family))[None, None].to(self.device)
                out[k] = self._finish(self._to_device(hu[k : k + 1]), tiled, sigma_px)[0]
            return out
        for start in range(0, hu.shape[0], per_batch):
            x = self._to_device(hu[start : start + per_batch])
            out[start : start + per_batch] = self._finish(x, self._forward(x, family), sigma_px)
        return out

    def _to_device(self, hu: np.ndarray) -> torch.Tensor:
        """(N, H, W) HU -> (N, 1, H, W) float32 HU on the model's device."""
        return torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[:, None].to(self.device)

    def _finish(self, hu: torch.Tensor, output: torch.Tensor, sigma_px: tuple[float, float]) -> np.ndarray:
        """The mean-preserved output (``keep_mean``) as (N, H, W) float32 on the CPU.

        On a CPU scipy's Gaussian is faster than torch's convolutions (docs/denoise.md); on a GPU
        torch keeps the batch on the device.
        """
        if self.preprocessing.restore_mean_sigma_mm == 0:
            return output[:, 0].cpu().numpy()
        before = hu.clamp(*self.preprocessing.clip)
        if hu.device.type != "cpu":
            with torch.inference_mode():
                return keep_mean(before, output, sigma_px)[:, 0].cpu().numpy()
        start = before[:, 0].numpy()
        residual = output[:, 0].numpy() - start
        denoised: np.ndarray = start + residual - ndimage.gaussian_filter(residual, (0.0, *sigma_px), mode="nearest")
        return denoised

    def _forward(self, hu: torch.Tensor, family: torch.Tensor | None) -> torch.Tensor:
        """The network's output in HU (float32, on the device) for (N, 1, H, W) HU; ``family``
        (one index) conditions a network that takes it."""
        x = self.preprocessing.to_network(hu).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.cuda and self.half_precision, cpu_bfloat16=self.half_precision):
            y = self.network(x) if family is None else self.network(x, family.expand(len(x)))
        return self.preprocessing.to_hu(y.float())

    def _tiled(self, hu: np.ndarray, family: torch.Tensor | None) -> np.ndarray:
        """One slice too large for a batch, in square tiles that overlap by the receptive field."""
        # An even halo keeps every tile's 2x2 sub-image grid aligned with the whole slice's.
        halo = self.preprocessing.halo + self.preprocessing.halo % 2
        tile = max(64, int(self.batch_pixels**0.5) - 2 * halo)
        out = np.empty(hu.shape, dtype=np.float32)
        for rows, cols in _tiles(hu.shape, tile):
            r0, r1 = max(rows.start - halo, 0), min(rows.stop + halo, hu.shape[0])
            c0, c1 = max(cols.start - halo, 0), min(cols.stop + halo, hu.shape[1])
            result = self._forward(self._to_device(hu[None, r0:r1, c0:c1]), family)[0, 0].cpu().numpy()
            out[rows, cols] = result[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]
        return out


def _tiles(shape: tuple[int, ...], tile: int) -> Iterator[tuple[slice, slice]]:
    tile += tile % 2  # even tile origins, for the same alignment
    for r in range(0, shape[0], tile):
        for c in range(0, shape[1], tile):
            yield slice(r, min(r + tile, shape[0])), slice(c, min(c + tile, shape[1]))
