"""Simulated dose reduction for CT: Poisson noise inserted in the sinogram, reconstructed by FBP.

No low-dose/full-dose pairs exist on the project's machines, so training and evaluation pairs are
made from real full-dose slices. Image-domain Gaussian noise would be the wrong model: CT noise
is correlated (its texture is set by the reconstruction kernel) and its amplitude depends on how
much the patient attenuates each ray. This module reproduces both, following the usual
"noise insertion" recipe (Zeng et al., Med Phys 2015; Yu et al., Med Phys 2012):

1. Attenuation: ``mu = MU_WATER_PER_MM * (1 + HU / 1000)``, clipped at 0 (air).
2. Line integrals ``p`` of a parallel-beam scan: ``N_VIEWS`` views over 180 degrees, detector
   bins as wide as a pixel, rotation centre at pixel (N/2, N/2) of the slice padded to N x N.
3. A full-dose scan with ``I0`` incident photons per ray has counts ``Poisson(I0 exp(-p))``.
   Lowering the dose to a fraction ``f`` adds variance ``(1/f - 1)`` times the full-dose
   variance; an independent Poisson scan at ``I0 f / (1 - f)`` photons per ray has exactly that
   variance (Gaussian approximation of Poisson statistics; electronic noise is not modelled).
   Its log-domain error ``log(lambda / counts)`` (counts clamped at 1 photon where a ray is
   starved) is that noise in the sinogram.
4. Filtered back projection of that sinogram noise with a ramp filter apodized like the
   reconstruction kernel (``FILTER_BY_KERNEL``), converted to HU and added to the real image.
   FBP is linear, so reconstructing only the noise equals ``FBP(noisy) - FBP(clean)``.

``I0`` is not a property of the scanner we can read from DICOM, so it is calibrated per scan:
``calibrate_photons`` picks the ``I0`` whose simulated full-dose noise matches the noise measured
in the real image (``uniform_noise_std``). Quarter dose is then ``f = 0.25``, tenth ``f = 0.1``.

The projector is implemented with the Fourier slice theorem and a Kaiser-Bessel gridding NUFFT in
torch (projection and back projection are exact adjoints), which makes one simulated slice take
a fraction of a second on a CPU instead of seconds for rotation-based projectors such as
``skimage.transform.radon``/``iradon``; the filters are the same as ``iradon``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

#: Linear attenuation of water at ~70 keV, the effective energy of a 120 kVp beam (NIST XCOM).
MU_WATER_PER_MM = 0.0193
#: Views over 180 degrees, about what a clinical scanner samples per half rotation: the angular
#: step stays near one pixel out to the edge of a 512 x 512 field of view, so the noise texture
#: has no streaks from angular undersampling.
N_VIEWS = 720
#: Filters ``iradon`` offers, sharpest first.
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
#: Apodization that gives the noise texture of common kernel families; the first matching prefix
#: wins; anything else counts as sharp. Checked on real data: the B40f and B70f reconstructions of
#: one acquisition calibrate to the same photon count with hann and ramp (see MODEL_CARD.md).
FILTER_BY_KERNEL = (
    ("B1", "hann"), ("B2", "hann"), ("B3", "hann"), ("B4", "hann"),
    ("I1", "hann"), ("I2", "hann"), ("I3", "hann"), ("I4", "hann"),
    ("FC", "hann"), ("SOFT", "hann"), ("STANDARD", "hann"),
    ("B5", "shepp-logan"), ("I5", "shepp-logan"),
)
#: Poisson counts below this are clamped (photon starvation) before taking the logarithm.
MIN_COUNTS = 1.0
#: Kaiser-Bessel gridding: kernel width in grid cells and oversampling of the FFT grid.
_KB_WIDTH = 4
_OVERSAMPLING = 2


def reconstruction_filter(kernel: str | None) -> str:
    """The FBP filter whose noise texture is closest to the named DICOM ConvolutionKernel."""
    name = (kernel or "").strip().upper()
    for prefix, filter_name in FILTER_BY_KERNEL:
        if name.startswith(prefix):
            return filter_name
    return "ramp"


def fourier_filter(size: int, filter_name: str) -> torch.Tensor:
    """FBP filter in FFT order, as ``skimage.transform.iradon`` builds it.

    The ramp is the Fourier transform of the band-limited spatial ramp kernel (Kak & Slaney,
    ch. 3 eq. 61), which avoids the DC offset of a sampled ``|omega|``; the other names window it.
    """
    if filter_name not in FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose one of {FILTERS}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1 / (np.pi * n) ** 2
    response = 2 * np.real(np.fft.fft(kernel))
    if filter_name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        response[1:] *= np.sin(omega) / omega
    elif filter_name == "cosine":
        response *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif filter_name == "hamming":
        response *= np.fft.fftshift(np.hamming(size))
    elif filter_name == "hann":
        response *= np.fft.fftshift(np.hanning(size))
    return torch.from_numpy(response).float()


def _kaiser_bessel(u: torch.Tensor, beta: float) -> torch.Tensor:
    inside = (2 * u / _KB_WIDTH).abs() <= 1
    arg = beta * torch.sqrt(torch.clamp(1 - (2 * u / _KB_WIDTH) ** 2, min=0))
    return torch.where(inside, torch.special.i0(arg), torch.zeros_like(u))


@dataclass(frozen=True)
class ParallelBeam:
    """A parallel-beam geometry for N x N slices with precomputed NUFFT gridding tables.

    Sinograms are (N_VIEWS, n_det) with detector coordinate ``t = j - n_det/2`` in pixels and
    ``t = x cos(theta) - y sin(theta)`` for column offset x and row offset y from the centre, the
    convention of ``skimage.transform.iradon``.
    """

    size: int
    n_det: int
    grid: int
    index: torch.Tensor  # (samples, W*W) flat indices into the oversampled grid
    weight: torch.Tensor  # (samples, W*W) Kaiser-Bessel weights
    deapodize: torch.Tensor  # (size,) 1 / Fourier transform of the kernel at each pixel offset

    @staticmethod
    @lru_cache(maxsize=4)
    def for_size(size: int) -> "ParallelBeam":
        """Build (once per process and size) the tables for an N x N slice."""
        if size % 2:
            raise ValueError("ParallelBeam needs an even image size")
        n_det = 2 ** math.ceil(math.log2(math.ceil(size * math.sqrt(2)) + 2))
        grid = _OVERSAMPLING * size
        beta = math.pi * math.sqrt((_KB_WIDTH / _OVERSAMPLING) ** 2 * (_OVERSAMPLING - 0.5) ** 2 - 0.8)
        theta = torch.arange(N_VIEWS, dtype=torch.float64) * (math.pi / N_VIEWS)
        freq = torch.arange(-n_det // 2, n_det // 2, dtype=torch.float64) / n_det  # cycles/pixel
        kx = (theta.cos()[:, None] * freq[None, :]).reshape(-1) * grid
        ky = (-theta.sin()[:, None] * freq[None, :]).reshape(-1) * grid
        taps = torch.arange(_KB_WIDTH, dtype=torch.float64)
        cols = torch.ceil(kx - _KB_WIDTH / 2)[:, None] + taps
        rows = torch.ceil(ky - _KB_WIDTH / 2)[:, None] + taps
        wx = _kaiser_bessel(kx[:, None] - cols, beta)
        wy = _kaiser_bessel(ky[:, None] - rows, beta)
        index = (rows.long() % grid)[:, :, None] * grid + (cols.long() % grid)[:, None, :]
        weight = (wy[:, :, None] * wx[:, None, :]).float()
        # Continuous Fourier transform of the kernel at each pixel offset, by quadrature.
        u = torch.linspace(-_KB_WIDTH / 2, _KB_WIDTH / 2, 4001, dtype=torch.float64)
        offsets = torch.arange(-size // 2, size // 2, dtype=torch.float64)
        phi = _kaiser_bessel(u, beta)
        psi = torch.trapezoid(phi[None, :] * torch.cos(2 * math.pi * u[None, :] * offsets[:, None] / grid), u, dim=1)
        return ParallelBeam(
            size=size,
            n_det=n_det,
            grid=grid,
            index=index.reshape(len(kx), -1),
            weight=weight.reshape(len(kx), -1),
            deapodize=(1 / psi).float(),
        )

    def project(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals (pixel units) of an N x N image: the sinogram (N_VIEWS, n_det)."""
        n, m = self.size, self.grid
        scaled = image * self.deapodize[:, None] * self.deapodize[None, :]
        # Pixel offset x from the centre goes to grid index x mod m, where the FFT expects it.
        pad = (m - n) // 2
        canvas = torch.fft.ifftshift(torch.nn.functional.pad(scaled, (pad, pad, pad, pad)))
        spectrum = torch.fft.fft2(canvas).reshape(-1)
        slices = (spectrum[self.index] * self.weight).sum(1).reshape(N_VIEWS, self.n_det)
        sino = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(slices, dim=1), dim=1), dim=1)
        return sino.real

    def filtered_backprojection(self, sino: torch.Tensor, filter_name: str) -> torch.Tensor:
        """FBP of a sinogram from ``project``'s geometry, scaled like ``iradon``: FBP(project(f)) ~ f."""
        n, m = self.size, self.grid
        spectrum = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(sino, dim=1), dim=1), dim=1)
        spectrum = spectrum * torch.fft.fftshift(fourier_filter(self.n_det, filter_name))[None, :]
        values = spectrum.reshape(-1, 1) * self.weight
        gridded = torch.zeros(m * m, dtype=torch.complex64)
        gridded.index_add_(0, self.index.reshape(-1), values.reshape(-1))
        image = torch.fft.fftshift(torch.fft.ifft2(gridded.reshape(m, m)).real * (m * m))
        pad = (m - n) // 2
        image = image[pad : pad + n, pad : pad + n] * self.deapodize[:, None] * self.deapodize[None, :]
        return image * (math.pi / (2 * N_VIEWS * self.n_det))


def _to_square(hu: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad a slice with air to an even square so every slice shape has one geometry."""
    rows, cols = hu.shape
    size = max(rows, cols) + max(rows, cols) % 2
    top, left = (size - rows) // 2, (size - cols) // 2
    square = np.full((size, size), -1000.0, dtype=np.float32)
    square[top : top + rows, left : left + cols] = hu
    return square, (slice(top, top + rows), slice(left, left + cols))


def added_photons(full_dose_photons: float, dose_fraction: float) -> float:
    """Photons per ray of the independent scan whose noise turns full dose into ``dose_fraction``."""
    if not 0 < dose_fraction < 1:
        raise ValueError(f"dose_fraction must be in (0, 1), got {dose_fraction}")
    return full_dose_photons * dose_fraction / (1 - dose_fraction)


@dataclass(frozen=True)
class SliceScan:
    """The noise-free parallel-beam scan of one real slice, ready for any number of noise draws.

    Projecting is the expensive half of a simulation, and the line integrals do not change
    between noise realizations, so they are computed once here.
    """

    hu: np.ndarray
    pixel_spacing_mm: float
    line_integrals: torch.Tensor  # (N_VIEWS, n_det), dimensionless
    beam: ParallelBeam
    crop: tuple[slice, slice]

    @classmethod
    def of(cls, hu: np.ndarray, pixel_spacing_mm: float) -> "SliceScan":
        square, crop = _to_square(hu)
        beam = ParallelBeam.for_size(square.shape[0])
        mu = MU_WATER_PER_MM * np.clip(1 + square / 1000.0, 0, None)
        line_integrals = beam.project(torch.from_numpy(mu.astype(np.float32))) * pixel_spacing_mm
        return cls(hu, pixel_spacing_mm, line_integrals.clamp(min=0), beam, crop)

    def acquisition_noise(self, photons: float, filter_name: str, generator: torch.Generator) -> np.ndarray:
        """Noise (HU) of an independent scan of this slice with ``photons`` incident per ray."""
        expected = photons * torch.exp(-self.line_integrals)
        counts = torch.poisson(expected, generator=generator).clamp(min=MIN_COUNTS)
        sino_noise = torch.log(expected / counts)
        noise_mu = self.beam.filtered_backprojection(sino_noise, filter_name) / self.pixel_spacing_mm
        return (1000.0 * noise_mu / MU_WATER_PER_MM).numpy()[self.crop]

    def reduced_dose(self, full_dose_photons: float, dose_fraction: float, filter_name: str,
                     generator: torch.Generator) -> np.ndarray:
        """The slice as if scanned at ``dose_fraction`` of its dose (HU, float32)."""
        photons = added_photons(full_dose_photons, dose_fraction)
        return (self.hu + self.acquisition_noise(photons, filter_name, generator)).astype(np.float32)


def uniform_region_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue (-50..200 HU in a smoothed copy) away from edges: where noise is measurable."""
    smooth = ndimage.uniform_filter(hu.astype(np.float32), 5)
    return ndimage.binary_erosion((smooth > -50) & (smooth < 200), iterations=6)


def uniform_noise_std(image: np.ndarray, mask: np.ndarray, window: int = 11) -> float:
    """Noise estimate: 25th percentile of the local standard deviation inside ``mask``.

    The low percentile keeps the windows where anatomy adds least; the same statistic applied to
    a pure noise image is what calibration compares it with, so its bias largely cancels.
    """
    if mask.sum() < window * window:
        raise ValueError("no uniform soft-tissue region large enough to measure noise")
    image = image.astype(np.float64)
    mean = ndimage.uniform_filter(image, window)
    var = ndimage.uniform_filter(image * image, window) - mean * mean
    return float(np.percentile(np.sqrt(np.clip(var[mask], 0, None)), 25))


def calibrate_photons(
    slices: list[np.ndarray],
    pixel_spacing_mm: float,
    filter_name: str,
    generator: torch.Generator,
    reference_photons: float = 1e5,
) -> float:
    """Full-dose photons per ray whose simulated noise matches the noise measured in ``slices``.

    Noise standard deviation scales as ``1/sqrt(I0)``, so one simulation at a reference count
    gives the answer; several slices average out the anatomy's share of the measurement.
    """
    measured, simulated = [], []
    for hu in slices:
        mask = uniform_region_mask(hu)
        if mask.sum() < 11 * 11:
            continue
        noise = SliceScan.of(hu, pixel_spacing_mm).acquisition_noise(reference_photons, filter_name, generator)
        measured.append(uniform_noise_std(hu, mask))
        simulated.append(uniform_noise_std(noise, mask))
    if not measured:
        raise ValueError("no slice has a uniform soft-tissue region to calibrate the noise on")
    return reference_photons * (float(np.mean(simulated)) / float(np.mean(measured))) ** 2
