"""The real CT scans the reference weights are trained and validated on, and how to read them.

All of it comes from ``../shared/data`` (see its README for sources and licences). The split is
by patient: lung-pet-ct-dx-A0002 and LIDC-IDRI-0003 are held out entirely. A0002 gives two
kernels of one acquisition (smooth B40f, sharp B70f: the sharp one is also the real-noise check),
LIDC-IDRI-0003 a third (GE STANDARD). Everything else trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from training.denoise.noise import ELECTRONIC_NOISE_COUNTS, PARALLEL, Beam, calibrate_photons, kernel_family, relative_tube_output

if TYPE_CHECKING:  # the DICOM stack is imported where DICOM is read: a lent GPU trains from a pack without it
    from pydicom.dataset import Dataset

#: Slices on which a scan's full-dose photon count is calibrated, spread evenly over the middle
#: ``CALIBRATION_SPREAD`` of the scan (the chest, not the neck or abdomen): the slices whose noise
#: power spectrum ``training/denoise/nps.py`` compares with the simulation's.
CALIBRATION_SLICES = 12
CALIBRATION_SPREAD = (0.15, 0.85)
#: Scans with at most this many slices are never thinned (``thin_slices``).
KEEP_WHOLE_SLICES = 5

#: Training scans: folders of one series, or single files, relative to the data root.
TRAINING = (
    "ct-chest/cptac-luad-C3N-00247",
    "reference-seg-sr/dcmqi/segmentations/ct-3slice",
    "transfer-syntaxes/nema-wg04/REF/CT1_UNC",
    "transfer-syntaxes/nema-wg04/REF/CT2_UNC",
    "ct-chest/lidc-idri-0001/ct",
    "ct-chest/lidc-idri-0002/ct",
)
#: The held-out scan with simulated dose reduction (metrics) ...
HELD_OUT = "ct-chest/lung-pet-ct-dx-A0002/B40f"
#: ... and the same acquisition reconstructed with a sharp kernel (real noise, no simulation).
HELD_OUT_SHARP = "ct-chest/lung-pet-ct-dx-A0002/B70f"
#: A third held-out patient, another vendor and kernel (GE LightSpeed, STANDARD, 2.5 mm).
HELD_OUT_GE = "ct-chest/lidc-idri-0003/ct"
#: Every held-out series, one per kernel: the per-kernel tables of the model card.
HELD_OUT_BY_KERNEL = {"B40f": HELD_OUT, "B70f": HELD_OUT_SHARP, "STANDARD": HELD_OUT_GE}


@dataclass(frozen=True)
class Scan:
    """One real CT series in HU with what the noise simulator needs to know about it."""

    name: str
    hu: np.ndarray  # (slices, rows, cols) float32, slices in patient order
    pixel_spacing_mm: float
    kernel: str
    kvp: float | None = None
    #: Per-slice tube output relative to the scan's mean (tube-current modulation); None: flat.
    relative_dose: np.ndarray | None = None
    slice_thickness_mm: float | None = None
    #: Distance between neighbouring slices (a folder's series; None for one file).
    slice_spacing_mm: float | None = None

    def subset(self, slices: int | slice | list[int]) -> Scan:
        """The same scan restricted to some slices (an index, slice or list of them)."""
        dose = None if self.relative_dose is None else self.relative_dose[slices]
        return Scan(self.name, self.hu[slices], self.pixel_spacing_mm, self.kernel, self.kvp, dose,
                    self.slice_thickness_mm, self.slice_spacing_mm)

    def slice_photons(self, full_dose: float, k: int) -> float:
        """Photons per ray of slice ``k``: the scan's calibrated count times its tube output."""
        return full_dose * (1.0 if self.relative_dose is None else float(self.relative_dose[k]))

    @property
    def filter_name(self) -> str:
        """The FBP filter whose noise texture matches this scan's reconstruction kernel: its kernel
        family's window (``noise.FAMILY_APODIZATION``, fitted to real noise power spectra)."""
        return kernel_family(self.kernel)


def thin_slices(scan: Scan, gap_mm: float) -> Scan:
    """Every n-th slice, n = round(gap / slice thickness): kept slices lie about ``gap_mm`` apart.

    For a 2D denoiser, neighbouring thin slices repeat the same anatomy with new noise; thinning
    them loses little and makes the training set small enough to travel (``pack``). Scans of at
    most ``KEEP_WHOLE_SLICES`` slices, or without a thickness, are kept whole; 0 keeps every slice.
    """
    if gap_mm < 0:
        raise ValueError(f"the slice gap must be >= 0 mm, got {gap_mm}")
    if gap_mm == 0 or len(scan.hu) <= KEEP_WHOLE_SLICES or not scan.slice_thickness_mm:
        return scan
    return scan.subset(slice(None, None, max(1, round(gap_mm / scan.slice_thickness_mm))))


def spread_slices(count: int, picks: int = CALIBRATION_SLICES) -> list[int]:
    """``picks`` slice indices spread evenly over the middle ``CALIBRATION_SPREAD`` of ``count``
    slices (every slice of a short scan)."""
    if count <= picks:
        return list(range(count))
    return sorted({int(k) for k in np.linspace(count * CALIBRATION_SPREAD[0], count * CALIBRATION_SPREAD[1], picks)})


def full_dose_photons(scan: Scan, generator: torch.Generator, beam: Beam = PARALLEL,
                      electronic_noise: float = ELECTRONIC_NOISE_COUNTS) -> float:
    """The scan's calibrated full-dose photons per ray (``noise.calibrate_photons``), with ``beam``'s
    spread of photons over rays and ``electronic_noise`` (counts) in every reading."""
    sample = scan.subset(spread_slices(len(scan.hu)))
    dose = None if sample.relative_dose is None else list(sample.relative_dose)
    return calibrate_photons(list(sample.hu), scan.pixel_spacing_mm, scan.filter_name, generator, kvp=scan.kvp,
                             relative_dose=dose, electronic_noise=electronic_noise, beam=beam)


def load_scan(data_root: Path, relative: str) -> Scan:
    """Read a folder (one series) or one file under ``data_root`` as a Scan."""
    from pipelines.volume import load_series

    path = data_root / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is ../shared/data beside the repository?")
    if path.is_dir():
        volume = load_series(sorted(p for p in path.iterdir() if p.is_file()), min_slices=1)
        headers, hu, (col_mm, row_mm, spacing_mm) = list(volume.sources), volume.array, volume.spacing
    else:
        header, hu, (row_mm, col_mm) = _single_image(path)
        headers, spacing_mm = [header], None
    if abs(col_mm - row_mm) > 1e-3 * row_mm:
        raise ValueError(f"{relative}: the noise simulator needs square pixels, got {row_mm} x {col_mm} mm")
    header = headers[0]
    kvp = float(header.KVP) if header.get("KVP") not in (None, "") else None
    thickness = float(header.SliceThickness) if header.get("SliceThickness") not in (None, "") else None
    return Scan(name=relative, hu=hu, pixel_spacing_mm=row_mm, kernel=kernel_name(header), kvp=kvp,
                relative_dose=relative_tube_output([tube_output(h) for h in headers]),
                slice_thickness_mm=thickness, slice_spacing_mm=spacing_mm)


def tube_output(header: Dataset) -> float | None:
    """A slice's tube current (mA) or, failing that, its exposure (mAs): its relative dose.

    The current is preferred: in a helical scan the rotation time is fixed, so the current is
    what the modulation changes, and some scanners round Exposure to whole mAs (LIDC-IDRI-0002
    writes 9 or 10 mAs for 424-441 mA).
    """
    for keyword in ("XRayTubeCurrentInuA", "XRayTubeCurrent", "ExposureInuAs", "Exposure"):
        value = header.get(keyword)
        if value not in (None, ""):
            return float(value)
    return None
def _single_image(path: Path) -> tuple[Dataset, np.ndarray, tuple[float, float]]:
    """One CT image file: ``load_series`` has no slice step to check on a single image."""
    import pydicom

    from pipelines.volume import decode_pixels

    header = pydicom.dcmread(path, stop_before_pixels=True)
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    hu = decode_pixels(path).astype(np.float32) * np.float32(slope) + np.float32(intercept)
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    return header, hu, (row_mm, col_mm)


def kernel_name(header: Dataset) -> str:
    """ConvolutionKernel as one string (it may be multi-valued, e.g. ["B40f", "2"])."""
    from pydicom.multival import MultiValue

    kernel = header.get("ConvolutionKernel", "")
    if isinstance(kernel, MultiValue):
        kernel = kernel[0] if len(kernel) else ""
    return str(kernel)
