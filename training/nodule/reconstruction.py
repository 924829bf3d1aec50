"""Another reconstruction of the same acquisition: a sharper or softer kernel, thicker slices.

The scorer met lung-pet-ct-dx-A0002's mass as B70f and B40f, one acquisition with two kernels,
and answered differently; its training had seen each series only as reconstructed. This module
makes the other reconstructions a series could have had, so that training and calibration see
them: ``rekernel`` changes the kernel slice by slice in the frequency domain and ``rethicken``
averages slices into thicker ones (1-5 mm; thin slices cannot be made from thick ones).

The kernel change comes from measured noise power spectra (NPS), not from vendor curves: a
filtered back-projection's noise and signal pass through the same reconstruction filter, so the
square root of the ratio of a sharp and a soft kernel's NPS, normalised to 1 at low frequency
(where both kernels pass everything and the ratio is the two scans' dose), is the filter that
turns the soft one into the sharp one (``kernel_gain``). The sharp kernel: cptac-luad-C3N-00247
(Siemens B70f); the soft: the three LIDC scans (GE STANDARD). lung-pet-ct-dx-A0002 (B70f and B40f
of one acquisition) fits nothing here: it is the held-out test of this augmentation. The measurement
itself (flat soft-tissue ROIs, ``measure_nps``) is ``pipelines.noise_power``, shared with the
denoiser's noise model. The measured table is ``nps.json``, written by

    PYTHONPATH=$PWD python -m training.nodule.reconstruction --out training/nodule/nps.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.noise_power import ROI_PX, measure_nps, radial_frequency
from pipelines.volume import Volume

#: The measured table (``measure``; the module docstring has the command).
NPS_TABLE = Path(__file__).resolve().parent / "nps.json"
#: The scans each kernel was measured on (shared data, ``data.load`` names).
MEASURED_ON: dict[str, tuple[str, ...]] = {
    "sharp": ("ct-chest/cptac-luad-C3N-00247",),
    "soft": ("ct-chest/lidc-idri-0001/ct", "ct-chest/lidc-idri-0002/ct", "ct-chest/lidc-idri-0003/ct"),
}
#: Kernel names (DICOM ConvolutionKernel) taken as sharp: Siemens B50 and up, GE's lung and bone.
SHARP_KERNELS = ("B50", "B60", "B70", "B80", "LUNG", "BONE", "EDGE")
#: What a change may do to a series (``draw``): a sharp series only softer, a soft one only sharper.
KERNEL_CHANGES = ("as acquired", "sharper", "softer")
#: Slice thicknesses a copy may be averaged to; only those at least as thick as the source's.
THICKNESSES_MM = (1.0, 2.0, 3.0, 5.0)
#: Noise variance scales as 1 / slice thickness; every NPS in the table is at this thickness.
REFERENCE_THICKNESS_MM = 3.0
#: The table's radial frequency grid (cycles/mm).
FREQUENCY_STEP = 0.025
#: The low band where both kernels pass everything: the gain is 1 there (cycles/mm).
LOW_BAND = (0.1, 0.2)
#: The most a sharpening multiplies a frequency by: where the soft kernel has cut a frequency
#: (its NPS near zero), the sharp one's content there is noise, added as noise, not amplified.
MAX_GAIN = 4.0


@dataclass(frozen=True)
class NoiseSpectrum:
    """A kernel's radially averaged in-plane NPS at ``REFERENCE_THICKNESS_MM``."""

    kernel: str
    frequency: tuple[float, ...]      # cycles/mm, bin centres
    nps: tuple[float, ...]            # HU^2 mm^2
    rois: int
    scans: tuple[str, ...]

    @property
    def peak_frequency(self) -> float:
        return self.frequency[int(np.argmax(self.nps))]

    @property
    def noise_sd_hu(self) -> float:
        """The noise SD the curve integrates to (2-D integral over the radial bins)."""
        f, nps = np.asarray(self.frequency), np.asarray(self.nps)
        return float(np.sqrt(np.sum(nps * 2 * np.pi * f * FREQUENCY_STEP)))

    def at(self, frequency: np.ndarray) -> np.ndarray:
        """The NPS at any radial frequency; beyond the measured ones, the last value."""
        values: np.ndarray = np.interp(frequency, self.frequency, self.nps)
        return values


@dataclass(frozen=True)
class Reconstruction:
    """What a simulated reconstruction does: a kernel change of ``KERNEL_CHANGES`` and a slice
    thickness (None: as acquired)."""

    kernel: str = "as acquired"
    thickness_mm: float | None = None


def measure(data_dir: Path, kernel: str) -> NoiseSpectrum:
    """A kernel's NPS over the scans of ``MEASURED_ON``, each scaled to the reference thickness
    and weighted by its ROI count, on the table's grid up to the coarsest scan's Nyquist."""
    from training.nodule import data

    curves = []
    for name in MEASURED_ON[kernel]:
        volume = data.load(data_dir, name)
        frequency, nps, rois = measure_nps(volume.array, volume.spacing[0])
        curves.append((frequency, nps * volume.spacing[2] / REFERENCE_THICKNESS_MM, rois))
    top = min(float(f[-1]) for f, _, _ in curves)
    grid = np.arange(FREQUENCY_STEP / 2, top, FREQUENCY_STEP)
    total = sum(rois for _, _, rois in curves)
    mean = sum(np.interp(grid, f, nps) * rois for f, nps, rois in curves) / total
    return NoiseSpectrum(kernel, tuple(np.round(grid, 4).tolist()), tuple(np.round(mean, 3).tolist()), total,
                         MEASURED_ON[kernel])


def load_table(path: Path = NPS_TABLE) -> dict[str, NoiseSpectrum]:
    """The measured NPS of each kernel, by kernel ("sharp", "soft")."""
    table = json.loads(path.read_text())
    return {k: NoiseSpectrum(k, tuple(v["frequency"]), tuple(v["nps"]), v["rois"], tuple(v["scans"]))
            for k, v in table["kernels"].items()}


def kernel_gain(frequency: np.ndarray, table: dict[str, NoiseSpectrum]) -> np.ndarray:
    """The sharp kernel's transfer over the soft one's at each frequency, 1 at low frequency.

    sqrt(NPS_sharp / NPS_soft) divided by its mean over ``LOW_BAND`` (the two scans' doses
    differ; the kernels do not, there); 1 below the band, at most ``MAX_GAIN`` and at least 1
    above it (sharper never means smoother at any frequency here)."""
    sharp, soft = table["sharp"], table["soft"]
    grid = np.asarray(soft.frequency)
    ratio = np.sqrt(sharp.at(grid) / np.maximum(soft.at(grid), 1e-6))
    low = (grid >= LOW_BAND[0]) & (grid <= LOW_BAND[1])
    gain = np.clip(ratio / ratio[low].mean(), 1.0, MAX_GAIN)
    gain[grid < LOW_BAND[0]] = 1.0
    values: np.ndarray = np.interp(frequency, grid, gain)
    return values


def rekernel(hu: np.ndarray, pixel_mm: float, change: str, thickness_mm: float, rng: np.random.Generator,
             table: dict[str, NoiseSpectrum] | None = None) -> np.ndarray:
    """Axial slices (k, rows, columns) as the other kernel would have reconstructed them.

    "sharper" multiplies each slice's spectrum by ``kernel_gain`` and adds noise coloured to
    the sharp kernel's NPS, less the soft noise the gain already made: the result's noise is the
    measured B70f's at this slice thickness. "softer" divides by the gain (a bounded smoothing);
    it adds nothing, the noise it leaves is the source's, smoothed. The mean HU is kept (gain 1
    at frequency 0). ``thickness_mm``: the source's, for the noise's magnitude."""
    if change == "as acquired":
        return hu
    table = table or load_table()
    # real slices and filters even in frequency: the half spectrum of rfft2 holds all of it (half the work)
    radius = radial_frequency(hu.shape[1:], pixel_mm)[:, : hu.shape[2] // 2 + 1]
    gain = kernel_gain(radius, table)
    transfer = gain if change == "sharper" else 1.0 / gain
    spectrum = np.fft.rfft2(hu.astype(np.float64)) * transfer
    if change == "sharper":
        added = np.maximum(table["sharp"].at(radius) - table["soft"].at(radius) * gain**2, 0.0)
        added *= REFERENCE_THICKNESS_MM / thickness_mm
        spectrum += np.fft.rfft2(rng.standard_normal(hu.shape)) * np.sqrt(added) / pixel_mm
    result: np.ndarray = np.fft.irfft2(spectrum, s=hu.shape[1:]).astype(np.float32)
    return result


def rethicken(volume: Volume, thickness_mm: float) -> Volume:
    """The volume as contiguous slices ``thickness_mm`` thick: each new slice is the mean of the
    source along z over its extent, source slices weighted by how much of them it covers. A
    thickness below the source's is refused: averaging cannot make thin slices."""
    spacing = volume.spacing[2]
    if thickness_mm < spacing - 1e-3:
        raise ValueError(f"cannot make {thickness_mm} mm slices from {spacing} mm ones")
    count = int(np.floor(volume.array.shape[0] * spacing / thickness_mm + 1e-6))
    edges = np.arange(volume.array.shape[0] + 1) * spacing  # source slab edges, from the first slab's start
    starts = np.arange(count)[:, None] * thickness_mm
    overlap = np.clip(np.minimum(edges[None, 1:], starts + thickness_mm) - np.maximum(edges[None, :-1], starts), 0, None)
    weights = overlap / thickness_mm
    array = np.tensordot(weights, volume.array, axes=(1, 0)).astype(np.float32)
    centres = (starts[:, 0] + thickness_mm / 2) / spacing - 0.5  # in source slice indices
    nearest = np.clip(np.rint(centres).astype(int), 0, volume.array.shape[0] - 1)
    return dataclasses.replace(
        volume, array=array, spacing=(volume.spacing[0], volume.spacing[1], thickness_mm),
        origin=volume.origin + volume.direction[:, 2] * spacing * centres[0],
        sources=tuple(volume.sources[k] for k in nearest), frames=tuple(volume.frames[k] for k in nearest),
    )


def source_kernel(volume: Volume) -> str:
    """"sharp" or "soft", from the series' ConvolutionKernel (``SHARP_KERNELS``)."""
    name = str(volume.sources[0].get("ConvolutionKernel", "")).upper()
    return "sharp" if name.startswith(SHARP_KERNELS) else "soft"


def other_kernel(volume: Volume) -> str:
    """The change of ``KERNEL_CHANGES`` towards the kernel the series was not made with."""
    return "softer" if source_kernel(volume) == "sharp" else "sharper"


def draw(rng: np.random.Generator, volume: Volume) -> Reconstruction:
    """A random reconstruction of the series: the kernel as acquired (one third) or the other
    one (two thirds); a thickness from ``THICKNESSES_MM`` thicker than the source's, or as
    acquired, each as likely."""
    change = str(rng.choice(["as acquired", other_kernel(volume)], p=[1 / 3, 2 / 3]))
    allowed = [t for t in THICKNESSES_MM if t > volume.spacing[2] + 1e-3]
    pick = int(rng.integers(len(allowed) + 1))
    return Reconstruction(change, allowed[pick] if pick < len(allowed) else None)


def reconstruct(volume: Volume, reconstruction: Reconstruction, rng: np.random.Generator) -> Volume:
    """The series as ``reconstruction`` would have made it: kernel first (on the slices as
    acquired, whose thickness sets the noise), then thickness."""
    hu = rekernel(volume.array, volume.spacing[0], reconstruction.kernel, volume.spacing[2], rng)
    changed = dataclasses.replace(volume, array=hu)
    return changed if reconstruction.thickness_mm is None else rethicken(changed, reconstruction.thickness_mm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=NPS_TABLE)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    from training.data_folder import DATA_ROOT

    kernels = {k: measure(args.data or DATA_ROOT, k) for k in MEASURED_ON}
    table = {"measured_with": "PYTHONPATH=$PWD python -m training.nodule.reconstruction",
             "method": f"{ROI_PX}x{ROI_PX} px ROIs in flat soft tissue, quadratic detrend, |FFT|^2 * px area / N, "
                       f"radial mean, scaled to {REFERENCE_THICKNESS_MM} mm slices (variance ~ 1/thickness)",
             "kernels": {k: {"scans": list(s.scans), "rois": s.rois, "peak_frequency": s.peak_frequency,
                             "noise_sd_hu": round(s.noise_sd_hu, 2), "frequency": list(s.frequency), "nps": list(s.nps)}
                         for k, s in kernels.items()}}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    for k, s in kernels.items():
        print(f"{k}: peak {s.peak_frequency:.3f} /mm, noise SD {s.noise_sd_hu:.1f} HU, {s.rois} ROIs")


if __name__ == "__main__":
    main()
