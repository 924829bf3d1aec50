"""Which kernel family a CT series was reconstructed with: by its name, else by its noise.

The denoiser is conditioned on the family (smooth, medium, sharp) because the texture of CT noise
is the reconstruction kernel's: a sharp kernel's noise is finer-grained and stronger, and a
network that expects a smooth kernel's grain leaves it in. DICOM's ConvolutionKernel names it, but
the names are the vendors' own, so a name this module does not know is not guessed: the family is
then read off the series' own noise power spectrum (``pipelines.noise_power``), measured in flat
soft tissue the same way the training's noise model was fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.noise_power import ROI_PX, noise_rois, rois_nps

#: The families, sharpest first.
FAMILIES = ("sharp", "medium", "smooth")
#: Siemens kernel letters (body, head, iterative, ADMIRE, dual-energy, ...): the two digits after
#: them number the sharpness.
SIEMENS_LETTERS = ("B", "BR", "BV", "BF", "BL", "I", "QR", "D", "J", "H", "HR", "HC", "T", "U")
#: Kernel families by DICOM ConvolutionKernel prefix, the first match wins (``named_family``);
#: a one-letter prefix matches only when no letter follows it. Siemens by number: 10-39 smooth,
#: 40-49 medium, 50+ sharp. GE by name: SOFT/SMOOTH smooth, STANDARD medium, DETAIL/LUNG/BONE/EDGE
#: sharp. Toshiba/Canon: FC01-14 smooth, FC15-29 medium, FC30+ sharp. Philips: A smooth, B and C
#: medium, D, E, L, Y* sharp. The NPS measurements behind them: docs/denoise.md.
KERNEL_FAMILIES = (
    *((f"{letters}{digit}", family) for letters in SIEMENS_LETTERS
      for digit, family in (("1", "smooth"), ("2", "smooth"), ("3", "smooth"), ("4", "medium"))),
    *((f"{letters}{digit}", "sharp") for letters in SIEMENS_LETTERS for digit in "56789"),
    ("SOFT", "smooth"), ("SMOOTH", "smooth"), ("STANDARD", "medium"),
    ("DETAIL", "sharp"), ("LUNG", "sharp"), ("BONE", "sharp"), ("EDGE", "sharp"),
    *((f"FC{n:02d}", "smooth") for n in range(1, 15)), *((f"FC{n:02d}", "medium") for n in range(15, 30)),
    *((f"FC{n:02d}", "sharp") for n in range(30, 100)),
    ("A", "smooth"), ("B", "medium"), ("C", "medium"), ("D", "sharp"), ("E", "sharp"), ("L", "sharp"),
    *((f"Y{letter}", "sharp") for letter in "ABCDEF"),
)
#: Median frequency (cycles/mm) of a series' noise power above ``FROM_PER_MM`` at which the
#: measured family changes: smooth below the first, sharp above the second (measured on the real
#: scans: docs/denoise.md).
MEDIAN_FREQUENCY_LIMITS = (0.30, 0.47)
#: Below this frequency a flat soft-tissue ROI still holds anatomy, not only noise.
FROM_PER_MM = 0.1
#: Slices of a series the measurement looks at, spread over its middle.
MEASURED_SLICES = 12
#: Fewer flat ROIs than this measure nothing reliable.
MIN_ROIS = 8


@dataclass(frozen=True)
class KernelFamily:
    """A series' family and where it came from: "ConvolutionKernel", "measured noise" or "default".

    ``named`` is the family the series' ConvolutionKernel names when its noise overruled it.
    """

    family: str
    source: str
    named: str | None = None


def named_family(kernel: str | None) -> str | None:
    """The family a DICOM ConvolutionKernel names (``KERNEL_FAMILIES``), or None for a name it
    does not know (or none at all)."""
    name = (kernel or "").strip().upper()
    for prefix, family in KERNEL_FAMILIES:
        if name.startswith(prefix) and not (len(prefix) == 1 and name[1:2].isalpha()):
            return family
    return None


def median_noise_frequency(hu: np.ndarray, pixel_mm: float) -> float | None:
    """The frequency (cycles/mm) that splits the noise power above ``FROM_PER_MM`` of the
    series' flat soft-tissue ROIs in half; None with fewer than ``MIN_ROIS`` ROIs."""
    picks = np.unique(np.linspace(0.15 * len(hu), 0.85 * len(hu) - 1, MEASURED_SLICES).astype(int).clip(0))
    rois = np.concatenate([noise_rois(hu[k]) for k in picks]) if len(hu) else np.empty((0, ROI_PX, ROI_PX))
    if len(rois) < MIN_ROIS:
        return None
    frequency, power = rois_nps(rois, pixel_mm)
    ring = power * 2 * math.pi * frequency
    use = frequency >= FROM_PER_MM
    cumulative = np.cumsum(ring[use]) / ring[use].sum()
    return float(frequency[use][int(np.searchsorted(cumulative, 0.5))])


def measured_family(hu: np.ndarray, pixel_mm: float) -> str | None:
    """The family the series' own noise reads as (``MEDIAN_FREQUENCY_LIMITS``); None when it has
    too little flat soft tissue to tell."""
    median = median_noise_frequency(hu, pixel_mm)
    if median is None:
        return None
    if median < MEDIAN_FREQUENCY_LIMITS[0]:
        return "smooth"
    return "medium" if median < MEDIAN_FREQUENCY_LIMITS[1] else "sharp"


def series_family(kernel: str | None, hu: np.ndarray, pixel_mm: float) -> KernelFamily:
    """The family by ConvolutionKernel when the name is known, unless the series' own noise reads
    sharp: a vendor's name can call sharp noise smoother than it is (Siemens D45f), and smoother
    weights leave that grain in; the other way is not overruled (a smooth B30s reads medium).
    Without a known name, by the noise; with neither, sharp: its denoising removes most."""
    named = named_family(kernel)
    measured = measured_family(hu, pixel_mm)
    if named is not None and not (measured == "sharp" and named != "sharp"):
        return KernelFamily(named, "ConvolutionKernel")
    if measured is not None:
        return KernelFamily(measured, "measured noise", named)
    return KernelFamily("sharp", "default")
