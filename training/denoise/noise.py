"""Simulated dose reduction for CT: Poisson noise inserted in the sinogram, reconstructed by FBP.

No low-dose/full-dose pairs exist on the project's machines, so training and evaluation pairs are
made from real full-dose slices. Image-domain Gaussian noise would be the wrong model: CT noise
is correlated (its texture is set by the reconstruction kernel) and its amplitude depends on how
much the patient attenuates each ray. This module reproduces both, following the usual
"noise insertion" recipe (Zeng et al., Med Phys 2015; Yu et al., Med Phys 2012):

1. Attenuation: ``mu = mu_water(kVp) * (1 + HU / 1000)``, clipped at 0 (air), with water's
   attenuation at the beam's effective energy (``MU_WATER_BY_KVP``, 80-140 kVp).
2. Line integrals ``p`` of a parallel-beam scan: ``N_VIEWS`` views over 180 degrees, detector
   bins as wide as a pixel, rotation centre at pixel (N/2, N/2) of the slice padded to N x N.
3. A full-dose scan with ``I0`` incident photons per ray has counts ``Poisson(I0 exp(-p))``.
   Lowering the dose to a fraction ``f`` adds variance ``(1/f - 1)`` times the full-dose
   variance; an independent Poisson scan at ``I0 f / (1 - f)`` photons per ray has exactly that
   variance (Gaussian approximation of Poisson statistics). Electronic (detector) noise adds a
   Gaussian of ``ELECTRONIC_NOISE_COUNTS`` to every reading; it matters only where few photons
   arrive, and there, with counts clamped at 1, it makes the photon-starvation streaks of
   low-dose CT. Its log-domain error ``log(lambda / counts)`` is that noise in the sinogram.
   Tube-current modulation along z scales ``I0`` slice by slice (``relative_tube_output`` reads
   it from XRayTubeCurrent / Exposure); a thinner slice from the same photons is a lower dose
   (``thickness_dose_factor``).
4. Filtered back projection of that sinogram noise with a ramp filter apodized like the
   reconstruction kernel (``FILTER_BY_KERNEL``), converted to HU and added to the real image.
   FBP is linear, so reconstructing only the noise equals ``FBP(noisy) - FBP(clean)``.
   ``iradon``'s windows are defined per pixel, so their texture changes with the field of view;
   the kernel families (``kernel_family``: smooth, medium, sharp) instead apodize the ramp in
   cycles/mm, with the window fitted to the noise power spectrum measured on real scans of each
   family (``FAMILY_APODIZATION``, ``training/denoise/nps.py``). A family's name is a filter name like
   the others; callers that pass ``reconstruction_filter``'s names get what they always got.

``I0`` is not a property of the scanner we can read from DICOM, so it is calibrated per scan:
``calibrate_photons`` picks the ``I0`` whose simulated full-dose noise matches the noise power
measured in flat soft-tissue ROIs of the real image. Quarter dose is then ``f = 0.25``, tenth
``f = 0.1``.

The projector is implemented with the Fourier slice theorem and a Kaiser-Bessel gridding NUFFT in
torch (projection and back projection are exact adjoints), which makes one simulated slice take
a fraction of a second on a CPU instead of seconds for rotation-based projectors such as
``skimage.transform.radon``/``iradon``; the filters are the same as ``iradon``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage, stats

from pipelines.denoise.kernels import FAMILIES, named_family
from pipelines.noise_power import ROI_PX, detrend, flat_tiles, rois_nps, tiles

#: Linear attenuation of water at ~70 keV, the effective energy of a 120 kVp beam (NIST XCOM).
MU_WATER_PER_MM = 0.0193
#: Water's attenuation (mm^-1) at the effective energy behind a patient for each tube voltage:
#: about 54, 62, 70 and 77 keV for 80, 100, 120, 140 kVp (NIST XCOM mu/rho of water: 0.2200,
#: 0.2041, 0.1930, 0.1850 cm^2/g). Lower kVp: more attenuation, so fewer photons cross the body.
MU_WATER_BY_KVP = {80.0: 0.0220, 100.0: 0.0204, 120.0: MU_WATER_PER_MM, 140.0: 0.0185}
#: Standard deviation of the detector's electronic noise, in photon-count units per reading
#: (the order reported for clinical scanners, e.g. Xu & Tsui 2009; Zeng et al. 2015 use ~10).
ELECTRONIC_NOISE_COUNTS = 8.0
#: Views over 180 degrees, about what a clinical scanner samples per half rotation: the angular
#: step stays near one pixel out to the edge of a 512 x 512 field of view, so the noise texture
#: has no streaks from angular undersampling.
N_VIEWS = 720
#: FBP filters, sharpest first: ``iradon``'s, plus "edge", a ramp boosted towards Nyquist like
#: the very sharp bone/inner-ear kernels (B80f, GE BONEPLUS/EDGE, U90).
FILTERS = ("edge", "ramp", "shepp-logan", "cosine", "hamming", "hann")
#: Gain of "edge" at the Nyquist frequency relative to the ramp (a quadratic rise from 1 at DC).
EDGE_BOOST = 1.6
#: Apodization that gives the noise texture of common kernel families; the first matching prefix
#: wins; anything else counts as sharp. Checked on real data: the B40f and B70f reconstructions of
#: one acquisition calibrate to the same photon count with hann and ramp (training/denoise/LOG.md,
#: "Noise model (`training/denoise/noise.py`)", item 5).
FILTER_BY_KERNEL = (
    ("B1", "hann"), ("B2", "hann"), ("B3", "hann"), ("B4", "hann"),
    ("I1", "hann"), ("I2", "hann"), ("I3", "hann"), ("I4", "hann"),
    ("BR3", "hann"), ("BR4", "hann"), ("BV3", "hann"), ("BV4", "hann"), ("QR3", "hann"), ("QR4", "hann"),
    ("FC", "hann"), ("SOFT", "hann"), ("STANDARD", "hann"),
    ("B5", "shepp-logan"), ("I5", "shepp-logan"), ("BR5", "shepp-logan"), ("BL5", "shepp-logan"),
    ("DETAIL", "shepp-logan"),
    ("B8", "edge"), ("B9", "edge"), ("U9", "edge"), ("BONEPLUS", "edge"), ("EDGE", "edge"),
)
#: Each family's window on the ramp, as the squared gain at ``f`` cycles/mm (the noise power it
#: passes): ``W^2 = (1 + a (f/fc)^2) exp(-(f/fc)^p)``, (fc cycles/mm, p, a). Fitted by ``training/denoise/nps.py
#: --fit`` to real NPS over the simulation's ramp NPS on the same slices: smooth on the B30s neck
#: slice, medium on LIDC-IDRI-0001/0002 (GE STANDARD), sharp on C3N-00247 (B70f); A0002's B40f
#: and B70f and LIDC-IDRI-0003 check them. The magnitude is the photon calibration's, not this.
FAMILY_APODIZATION: dict[str, tuple[float, float, float]] = {
    "smooth": (0.1836, 1.14, 0.005),
    "medium": (0.1532, 1.214, 0.276),
    "sharp": (0.6398, 3.993, 1.045),
}
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


def kernel_family(kernel: str | None) -> str:
    """The family (``kernels.FAMILIES``) of a DICOM ConvolutionKernel: smooth, medium or sharp.

    A name ``kernels.named_family`` does not know (or none) is sharp, as ``reconstruction_filter``
    takes unknown kernels to be."""
    return named_family(kernel) or "sharp"


def family_window(frequency_per_mm: np.ndarray, family: str) -> np.ndarray:
    """A family's gain on the ramp (``FAMILY_APODIZATION``) at each frequency (cycles/mm); 1 at 0."""
    fc, power, boost = FAMILY_APODIZATION[family]
    x = np.abs(frequency_per_mm) / fc
    window: np.ndarray = np.sqrt((1 + boost * x**2) * np.exp(-(x**power)))
    return window


def fourier_filter(size: int, filter_name: str, pixel_mm: float | None = None) -> torch.Tensor:
    """FBP filter in FFT order, as ``skimage.transform.iradon`` builds it.

    The ramp is the Fourier transform of the band-limited spatial ramp kernel (Kak & Slaney,
    ch. 3 eq. 61), which avoids the DC offset of a sampled ``|omega|``; the other names window it.
    A family's name (``FAMILIES``) windows it in cycles/mm, so it needs the detector bin's width,
    ``pixel_mm`` (bins are one pixel wide).
    """
    if filter_name not in FILTERS + FAMILIES:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose one of {FILTERS + FAMILIES}")
    if filter_name in FAMILIES and pixel_mm is None:
        raise ValueError(f"the {filter_name} family's filter is defined in cycles/mm: pass pixel_mm")
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
    elif filter_name == "edge":
        response *= 1 + (EDGE_BOOST - 1) * (2 * np.fft.fftfreq(size)) ** 2
    elif filter_name in FAMILIES:
        assert pixel_mm is not None
        response *= family_window(np.fft.fftfreq(size) / pixel_mm, filter_name)
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
    def for_size(size: int) -> ParallelBeam:
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
        deapodize = self.deapodize.to(image.dtype)
        scaled = image * deapodize[:, None] * deapodize[None, :]
        # Pixel offset x from the centre goes to grid index x mod m, where the FFT expects it.
        pad = (m - n) // 2
        canvas = torch.fft.ifftshift(torch.nn.functional.pad(scaled, (pad, pad, pad, pad)))
        spectrum = torch.fft.fft2(canvas).reshape(-1)
        slices = (spectrum[self.index] * self.weight.to(image.dtype)).sum(1).reshape(N_VIEWS, self.n_det)
        sino: torch.Tensor = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(slices, dim=1), dim=1), dim=1)
        return sino.real

    def filtered_backprojection(self, sino: torch.Tensor, filter_name: str, pixel_mm: float | None = None) -> torch.Tensor:
        """FBP of a sinogram from ``project``'s geometry, scaled like ``iradon``: FBP(project(f)) ~ f.

        ``pixel_mm``: the pixel's width, which a family's filter (cycles/mm) needs."""
        n, m = self.size, self.grid
        spectrum = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(sino, dim=1), dim=1), dim=1)
        spectrum = spectrum * torch.fft.fftshift(fourier_filter(self.n_det, filter_name, pixel_mm))[None, :]
        values = spectrum.reshape(-1, 1) * self.weight
        gridded = torch.zeros(m * m, dtype=torch.complex64)
        gridded.index_add_(0, self.index.reshape(-1), values.reshape(-1))
        image: torch.Tensor = torch.fft.fftshift(torch.fft.ifft2(gridded.reshape(m, m)).real * (m * m))
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


def water_attenuation_per_mm(kvp: float | None) -> float:
    """Water's attenuation at the effective energy of a ``kvp`` beam (120 kVp when unknown).

    Interpolated linearly between the tabulated voltages; outside 70-150 kVp it is refused,
    because the effective energy of such beams (or of a mislabelled header) is not known here.
    """
    if kvp is None:
        return MU_WATER_PER_MM
    if not 70 <= kvp <= 150:
        raise ValueError(f"KVP {kvp} is outside the 70-150 kV the noise model knows")
    voltages = sorted(MU_WATER_BY_KVP)
    return float(np.interp(kvp, voltages, [MU_WATER_BY_KVP[v] for v in voltages]))


def relative_tube_output(exposures: list[float | None]) -> np.ndarray:
    """Per-slice dose relative to the scan's mean, from each slice's mAs or tube current.

    Tube-current modulation gives shoulders more photons than the lungs; noise follows it slice
    by slice. A slice without the attribute gets the mean of the others; none at all: flat.
    """
    known = [float(e) for e in exposures if e is not None and float(e) > 0]
    if not known:
        return np.ones(len(exposures))
    mean = float(np.mean(known))
    return np.array([float(e) / mean if e is not None and float(e) > 0 else 1.0 for e in exposures])


def thickness_dose_factor(source_thickness_mm: float, target_thickness_mm: float) -> float:
    """Dose fraction that gives a ``target``-thick slice the noise of the same photons in it.

    Noise variance falls with the detected photons, which are proportional to slice thickness:
    reconstructing 0.6 mm instead of 3 mm from one scan is, for noise, a fifth of the dose.
    """
    if source_thickness_mm <= 0 or target_thickness_mm <= 0:
        raise ValueError("slice thicknesses must be positive")
    return target_thickness_mm / source_thickness_mm


def added_electronic_noise(electronic_noise: float, dose_fraction: float) -> float:
    """Electronic noise (counts) of the added scan so that the sum has ``f``'s electronic share.

    Full dose has log-domain variance ``1/l + e^2/l^2``; dose ``f`` has ``1/(f l) + e^2/(f l)^2``.
    The added scan (``added_photons``) covers the Poisson part; this much electronic noise on it
    covers the rest: ``e * sqrt((1 + f) / (1 - f))``.
    """
    return electronic_noise * math.sqrt((1 + dose_fraction) / (1 - dose_fraction))


def added_photons(full_dose_photons: float, dose_fraction: float) -> float:
    """Photons per ray of the independent scan whose noise turns full dose into ``dose_fraction``."""
    if not 0 < dose_fraction < 1:
        raise ValueError(f"dose_fraction must be in (0, 1), got {dose_fraction}")
    return full_dose_photons * dose_fraction / (1 - dose_fraction)


#: ``expected_log_error`` tabulates counts from ``_TABLE_COUNTS[0]`` to ``[1]`` (log-spaced); above
#: that the clamp never acts and a third-order expansion is exact to better than 1e-12.
_TABLE_COUNTS, _TABLE_POINTS = (1e-4, 1e4), 801


@lru_cache(maxsize=8)
def _log_error_table(electronic_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(log expected counts, E[log(lambda / max(N + e Z, MIN_COUNTS))]) on a log-spaced grid.

    The sum over Poisson counts k is exact where the weights are not negligible (12 standard
    deviations each side); the Gaussian electronic noise is integrated on a fine grid of z,
    which resolves the clamp's kink.
    """
    lam = np.geomspace(*_TABLE_COUNTS, _TABLE_POINTS)
    z = np.linspace(-8.0, 8.0, 2001)
    weight_z = stats.norm.pdf(z) * (z[1] - z[0])
    weight_z /= weight_z.sum()
    most = int(_TABLE_COUNTS[1] + 12 * math.sqrt(_TABLE_COUNTS[1]) + 50)
    k = np.arange(most + 1, dtype=np.float64)
    # E_z[log(max(k + e z, MIN_COUNTS))] for every k, in slabs to bound memory.
    log_reading = np.concatenate([
        np.log(np.maximum(part[:, None] + electronic_noise * z[None, :], MIN_COUNTS)) @ weight_z
        for part in np.array_split(k, 32)
    ])
    errors = np.empty(len(lam))
    for i, mean in enumerate(lam):
        spread = 12 * math.sqrt(mean) + 50
        ks = np.arange(max(0, int(mean - spread)), int(mean + spread) + 1)
        pmf = stats.poisson.pmf(ks, mean)
        errors[i] = math.log(mean) - float(pmf @ log_reading[ks]) / float(pmf.sum())
    return np.log(lam), errors


def expected_log_error(expected_counts: np.ndarray, electronic_noise: float) -> np.ndarray:
    """The mean of the sinogram error ``log(lambda / max(N + e Z, 1))`` that the simulation adds.

    Its noise is not zero-mean where few photons arrive: the logarithm is concave (a positive
    error, about ``(lambda + e^2) / (2 lambda^2)``) and starved readings are clamped at
    ``MIN_COUNTS`` (a negative one). That mean is the simulated input's own systematic error,
    part of the "input's local mean" that the bias rule (every 15 mm soft-tissue square within
    2 HU of it) compares with; FBP is linear, so reconstructing it gives the input's expected
    image exactly, with no sampling noise.
    """
    counts = np.asarray(expected_counts, dtype=np.float64)
    log_lam, table = _log_error_table(float(electronic_noise))
    inside = np.interp(np.log(np.clip(counts, _TABLE_COUNTS[0], None)), log_lam, table)
    many = np.maximum(counts, _TABLE_COUNTS[1])  # the expansion, only where it is used
    variance = many + electronic_noise**2
    above = variance / (2 * many**2) - many / (3 * many**3) + 3 * variance**2 / (4 * many**4)
    error: np.ndarray = np.where(counts <= _TABLE_COUNTS[1], inside, above)
    return error


#: Line integral (dimensionless) above which a ray counts as crossing the body (``ray_photons``).
BODY_LINE_INTEGRAL = 0.5
#: Distance (mm) from the centre at which a bowtie has its nominal thickness: a 50 cm field of view's edge.
BOWTIE_EDGE_MM = 250.0


@dataclass(frozen=True)
class Beam:
    """How a scanner spreads its photons over rays, which the plain parallel beam does not model.

    ``bowtie_water_mm``: a bowtie filter, parabolic, as thick as that much water at
    ``BOWTIE_EDGE_MM`` from the centre (peripheral rays get fewer photons, so the body's edge is
    noisier than without it); 0: none. ``angular_modulation``: the tube current per view scales
    as ``exp(k * (peak line integral - its mean))``, as angular tube-current modulation does (more
    photons through the long lateral paths, fewer streaks); 0: constant. The photons per ray are
    rescaled to the same mean over body rays, so the photon calibration's meaning is kept.
    ``prelog_threshold``, ``prelog_width`` (detector bins), ``prelog_view_width`` (views): the
    scanner's adaptive filtering of low-count rays (``prelog_filter``); 0: none.
    """

    bowtie_water_mm: float = 0.0
    angular_modulation: float = 0.0
    prelog_threshold: float = 0.0
    prelog_width: float = 0.0
    prelog_view_width: float = 0.0


#: Width steps (``prelog_filter``) between no smoothing and the beam's full pre-log widths; a ray's
#: width is interpolated between the two nearest.
PRELOG_STEPS = 8


def _gaussian(error: torch.Tensor, sigma_views: float, sigma_bins: float) -> torch.Tensor:
    """``error`` (views over 180 degrees, bins) smoothed by a Gaussian of SD ``sigma_views`` across
    views and ``sigma_bins`` along each detector row; past 180 degrees a view is its mirror (the
    view at theta + 180 is the one at theta reversed along the row)."""
    smoothed = error
    if sigma_bins > 0:
        radius = max(1, math.ceil(4 * sigma_bins))
        padded = torch.nn.functional.pad(smoothed[:, None, :], (radius, radius), mode="replicate")
        smoothed = torch.nn.functional.conv1d(padded, _taps(sigma_bins, radius, error.dtype))[:, 0, :]
    if sigma_views > 0:
        radius = max(1, math.ceil(4 * sigma_views))
        mirrored = torch.roll(torch.flip(smoothed, dims=[1]), 1, dims=1)
        padded = torch.cat([mirrored[-radius:], smoothed, mirrored[:radius]])
        smoothed = torch.nn.functional.conv1d(padded.T[:, None, :], _taps(sigma_views, radius, error.dtype))[:, 0, :].T
    return smoothed


def _taps(sigma: float, radius: int, dtype: torch.dtype) -> torch.Tensor:
    """A normalised Gaussian of SD ``sigma`` over -radius..radius, as a conv1d kernel."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)[None, None, :]


def prelog_filter(error: torch.Tensor, transmission: torch.Tensor, beam: Beam) -> torch.Tensor:
    """The scanner's adaptive filtering of low-count rays (Hsieh 1998; Kachelriess et al. 2001, MAF).

    A ray whose ``transmission`` (expected count over the beam's mean unattenuated count) is below
    ``beam.prelog_threshold`` is replaced by a Gaussian mean of its neighbours, SD
    ``prelog_width`` bins along its detector row and ``prelog_view_width`` views across views, both
    times ``1 - transmission / threshold``: wider as fewer photons arrive. Linear in ``error``, so
    an expected error is filtered alike (training/denoise/LOG.md, "Pre-log")."""
    if beam.prelog_threshold <= 0 or (beam.prelog_width <= 0 and beam.prelog_view_width <= 0):
        return error
    position = (1 - transmission.double() / beam.prelog_threshold).clamp(min=0) * PRELOG_STEPS
    below = position.floor().clamp(max=PRELOG_STEPS - 1)
    share = (position - below).to(error.dtype)
    levels = [_gaussian(error, beam.prelog_view_width * k / PRELOG_STEPS, beam.prelog_width * k / PRELOG_STEPS)
              for k in range(PRELOG_STEPS + 1)]
    stack = torch.stack(levels)
    index = below.long()[None]
    lower = stack.gather(0, index)[0]
    upper = stack.gather(0, index + 1)[0]
    return lower + share * (upper - lower)


#: Today's beam: flat photons over every ray.
PARALLEL = Beam()
#: A bowtie and angular tube-current modulation: the beam the 2026-11-27 sharp weights were trained on
#: (training/denoise/LOG.md, "Real against simulated sharp noise").
BOWTIE_MODULATED = Beam(bowtie_water_mm=100.0, angular_modulation=0.5)
#: The above, and the rays under e^-5 of the unattenuated count smoothed across up to 4 views
#: (LOG, "Pre-log filtering across views").
FILTERED_BEAM = replace(BOWTIE_MODULATED, prelog_threshold=math.exp(-5.0), prelog_view_width=4.0)
#: The beam whose noise matches real sharp-kernel noise best (``real_noise`` on 24 slices and four
#: draws: 2 of 22 properties out) and the shipped sharp weights' beam: the above with a bowtie as
#: thick as 120 mm of water at the edge (LOG, "The beam grid again, on the 24-slice four-draw table").
MATCHED_BEAM = replace(FILTERED_BEAM, bowtie_water_mm=120.0)


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
    mu_water_per_mm: float = MU_WATER_PER_MM

    @classmethod
    def of(cls, hu: np.ndarray, pixel_spacing_mm: float, kvp: float | None = None) -> SliceScan:
        square, crop = _to_square(hu)
        beam = ParallelBeam.for_size(square.shape[0])
        mu_water = water_attenuation_per_mm(kvp)
        mu = mu_water * np.clip(1 + square / 1000.0, 0, None)
        # float64: the expected counts must come out the same on every CPU (``portable_counts``)
        line_integrals = beam.project(torch.from_numpy(mu.astype(np.float64))) * pixel_spacing_mm
        return cls(hu, pixel_spacing_mm, line_integrals.clamp(min=0), beam, crop, mu_water)

    def acquisition_noise(self, photons: float, filter_name: str, generator: torch.Generator,
                          electronic_noise: float = 0.0, beam: Beam = PARALLEL) -> np.ndarray:
        """Noise (HU) of an independent scan of this slice with ``photons`` incident per ray.

        ``electronic_noise`` (counts, standard deviation) is added to every detector reading;
        ``beam`` shapes the photons over detector and view (bowtie, angular tube-current modulation).
        """
        error = self.sinogram_error(photons, generator, electronic_noise, beam)
        return self._reconstructed_hu(error, filter_name)

    def sinogram_error(self, photons: float, generator: torch.Generator, electronic_noise: float = 0.0,
                       beam: Beam = PARALLEL) -> torch.Tensor:
        """One draw of the log-domain error ``log(lambda / counts)`` (N_VIEWS, n_det), before FBP:
        reconstructed with two filters it gives one acquisition's two kernels."""
        expected = portable_counts(self.ray_photons(photons, beam) * torch.exp(-self.line_integrals))
        counts = torch.poisson(expected, generator=generator)
        if electronic_noise > 0:
            counts = counts + electronic_noise * torch.randn(counts.shape, generator=generator)
        return prelog_filter(torch.log(expected / counts.clamp(min=MIN_COUNTS)), expected / photons, beam)

    def ray_photons(self, photons: float, beam: Beam = PARALLEL) -> torch.Tensor:
        """Incident photons per ray (N_VIEWS, n_det), with a mean of ``photons`` over the rays that
        cross the body (``Beam``); flat for the plain parallel beam."""
        shape = torch.ones_like(self.line_integrals, dtype=torch.float64)
        if beam.bowtie_water_mm > 0:
            t_mm = (torch.arange(self.beam.n_det, dtype=torch.float64) - self.beam.n_det / 2) * self.pixel_spacing_mm
            thickness = beam.bowtie_water_mm * (t_mm / BOWTIE_EDGE_MM) ** 2
            shape = shape * torch.exp(-self.mu_water_per_mm * thickness)[None, :]
        if beam.angular_modulation > 0:
            peak = self.line_integrals.double().amax(dim=1)
            shape = shape * torch.exp(beam.angular_modulation * (peak - peak.mean()))[:, None]
        body = self.line_integrals > BODY_LINE_INTEGRAL
        mean = float(shape[body].mean()) if bool(body.any()) else 1.0
        return photons * shape / mean

    def expected_acquisition_error(self, photons: float, filter_name: str, electronic_noise: float = 0.0,
                                   beam: Beam = PARALLEL) -> np.ndarray:
        """The mean over noise draws of ``acquisition_noise`` (HU), computed, not sampled.

        Zero where photons are plentiful; on a photon-starved slice it is the streak-shaped bias
        that every simulated draw of it carries (``expected_log_error``).
        """
        expected = (self.ray_photons(photons, beam) * torch.exp(-self.line_integrals)).double()
        sino_error = torch.from_numpy(expected_log_error(expected.numpy(), electronic_noise)).float()
        return self._reconstructed_hu(prelog_filter(sino_error, expected / photons, beam), filter_name)

    def _reconstructed_hu(self, sino_error: torch.Tensor, filter_name: str) -> np.ndarray:
        """FBP of a sinogram error (line-integral units) as HU on the slice's own pixels."""
        error_mu = self.beam.filtered_backprojection(sino_error, filter_name, self.pixel_spacing_mm) / self.pixel_spacing_mm
        return (1000.0 * error_mu / self.mu_water_per_mm).numpy()[self.crop]

    def reduced_dose(self, full_dose_photons: float, dose_fraction: float, filter_name: str,
                     generator: torch.Generator, electronic_noise: float = 0.0, beam: Beam = PARALLEL) -> np.ndarray:
        """The slice as if scanned at ``dose_fraction`` of its dose (HU, float32)."""
        photons = added_photons(full_dose_photons, dose_fraction)
        noise = self.acquisition_noise(photons, filter_name, generator,
                                       added_electronic_noise(electronic_noise, dose_fraction), beam)
        reduced: np.ndarray = (self.hu + noise).astype(np.float32)
        return reduced


#: Significant bits kept of an expected count before it is drawn from (``portable_counts``).
PORTABLE_COUNT_BITS = 12


def portable_counts(expected: torch.Tensor) -> torch.Tensor:
    """Expected counts rounded to ``PORTABLE_COUNT_BITS`` significant bits, as float32.

    ``torch.poisson`` draws a varying number of uniforms per value (rejection sampling), so a
    last-bit difference in one expected count shifts the draws of all that follow it: an FFT or a
    sum that rounds differently on another CPU would give another noise realisation, and a test
    measured on one machine another study on the next. Computed in float64 and rounded this
    coarsely, the counts agree on every CPU; the rounding (2e-4 of a count) is far below the
    Poisson spread of any count a scan has.
    """
    mantissa, exponent = torch.frexp(expected.double())
    scale = float(2**PORTABLE_COUNT_BITS)
    return torch.ldexp(torch.round(mantissa * scale) / scale, exponent).float()


def uniform_region_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue (-50..200 HU in a smoothed copy) away from edges: where noise is measurable."""
    smooth = ndimage.uniform_filter(hu.astype(np.float32), 5)
    mask: np.ndarray = ndimage.binary_erosion((smooth > -50) & (smooth < 200), iterations=6)
    return mask


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


#: Lowest frequency (cycles/mm) the calibration compares: below it a flat soft-tissue ROI of a
#: real slice still holds anatomy (organ texture, slow trends the detrend leaves), not only noise.
CALIBRATION_FROM_PER_MM = 0.1
#: Rounds of ``calibrate_photons``' refinement: the electronic noise's share of the variance (at
#: most about a third on the starved scans here) is left to that power of itself.
CALIBRATION_ROUNDS = 4


def flat_noise_power(rois: np.ndarray, pixel_spacing_mm: float) -> float:
    """The variance (HU^2) of detrended ROIs carried above ``CALIBRATION_FROM_PER_MM``."""
    frequency, power = rois_nps(rois, pixel_spacing_mm)
    step = 1.0 / (ROI_PX * pixel_spacing_mm)
    ring_power = power * 2 * math.pi * frequency * step
    return float(ring_power[frequency >= CALIBRATION_FROM_PER_MM].sum())


def calibrate_photons(
    slices: list[np.ndarray],
    pixel_spacing_mm: float,
    filter_name: str,
    generator: torch.Generator,
    reference_photons: float = 1e5,
    kvp: float | None = None,
    relative_dose: list[float] | None = None,
    electronic_noise: float = ELECTRONIC_NOISE_COUNTS,
    beam: Beam = PARALLEL,
) -> float:
    """Full-dose photons per ray (at the scan's mean tube output) whose simulated noise matches
    the noise measured in ``slices``.

    Both are measured alike: the noise power above ``CALIBRATION_FROM_PER_MM`` in the flat
    soft-tissue ROIs of the real slices (``pipelines.noise_power``, the ROIs an NPS is measured
    in), and in the same ROIs cut from the simulated noise. Matching the mean power of the ROIs,
    not a low percentile of a local SD, matters because the simulation spreads its noise less
    evenly over a slice than a scanner does (no bowtie filter): a percentile of the two compared
    different parts of their distributions and left the simulation about 1.5x too strong
    (``pipelines/denoise/MODEL_CARD.md``). The simulated full dose carries the electronic noise
    the real one does: its variance falls as ``1/I0^2``, the quantum part's as ``1/I0``, so the
    count is refined ``CALIBRATION_ROUNDS`` times (each round scales it by simulated over real
    power; the error shrinks by the electronic share each round). ``relative_dose``
    (``relative_tube_output`` of each slice) takes tube-current modulation out. A scan without a
    flat ROI (a phantom slice, a head) falls back on ``uniform_noise_std`` over its soft-tissue mask.
    """
    flat = [flat_tiles(hu) for hu in slices]
    used = [k for k, tiles_k in enumerate(flat) if tiles_k.any()]
    if not used:
        return _calibrate_on_local_sd(slices, pixel_spacing_mm, filter_name, generator, reference_photons, kvp,
                                      relative_dose)
    measured = flat_noise_power(np.concatenate([detrend(tiles(slices[k])[flat[k]]) for k in used]), pixel_spacing_mm)
    scans = {k: SliceScan.of(slices[k], pixel_spacing_mm, kvp) for k in used}
    photons = reference_photons
    for _ in range(CALIBRATION_ROUNDS):
        rois = []
        for k in used:
            scale = relative_dose[k] if relative_dose is not None else 1.0
            noise = scans[k].acquisition_noise(photons * scale, filter_name, generator, electronic_noise, beam)
            rois.append(detrend(tiles(noise)[flat[k]]))
        photons = portable_photons(photons * flat_noise_power(np.concatenate(rois), pixel_spacing_mm) / measured)
    return photons


#: Significant digits kept of a calibrated photon count (``portable_photons``).
PORTABLE_PHOTON_DIGITS = 4


def portable_photons(photons: float) -> float:
    """``photons`` rounded to ``PORTABLE_PHOTON_DIGITS`` significant digits (0.05 % at most).

    The count is a ratio of noise powers summed from float32 reconstructions, whose last bits
    differ between CPUs; every expected count is a multiple of it, so a 1e-7 difference moves
    hundreds of them across ``portable_counts``' rounding and every later draw changes: the same
    seed gave another simulation on another machine (training/denoise/LOG.md, eleventh session)."""
    return float(f"{photons:.{PORTABLE_PHOTON_DIGITS - 1}e}")


def _calibrate_on_local_sd(
    slices: list[np.ndarray],
    pixel_spacing_mm: float,
    filter_name: str,
    generator: torch.Generator,
    reference_photons: float,
    kvp: float | None,
    relative_dose: list[float] | None,
) -> float:
    """``calibrate_photons`` for slices with no flat ROI: the 25th percentile of the local SD."""
    measured, simulated = [], []
    for k, hu in enumerate(slices):
        mask = uniform_region_mask(hu)
        if mask.sum() < 11 * 11:
            continue
        scale = relative_dose[k] if relative_dose is not None else 1.0
        noise = SliceScan.of(hu, pixel_spacing_mm, kvp).acquisition_noise(reference_photons, filter_name, generator)
        measured.append(uniform_noise_std(hu, mask))
        simulated.append(uniform_noise_std(noise, mask) / math.sqrt(scale))
    if not measured:
        raise ValueError("no slice has a uniform soft-tissue region to calibrate the noise on")
    return portable_photons(reference_photons * (float(np.mean(simulated)) / float(np.mean(measured))) ** 2)
