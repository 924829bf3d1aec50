"""The real CT scans the reference weights are trained and validated on, and how to read them.

All of it comes from ``../shared/data`` (see its README for sources and licences). The split is
by patient: lung-pet-ct-dx-A0002 is held out entirely. Its smooth B40f reconstruction, the least
noisy chest CT there, is the reference for the quality metrics; its sharp B70f reconstruction of
the same raw data is the real-noise sanity check. Everything else trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipelines.denoise.noise import calibrate_photons, reconstruction_filter
from pipelines.volume import decode_pixels, load_series

#: Slices, spread over a scan, on which its full-dose photon count is calibrated.
CALIBRATION_SLICES = 6

#: Where the repository expects the shared data: beside the checkout, as in CI.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

#: Training scans: folders of one series, or single files, relative to the data root.
TRAINING = (
    "ct-chest/cptac-luad-C3N-00247",
    "reference-seg-sr/dcmqi/segmentations/ct-3slice",
    "transfer-syntaxes/nema-wg04/REF/CT1_UNC",
    "transfer-syntaxes/nema-wg04/REF/CT2_UNC",
)
#: The held-out scan with simulated dose reduction (metrics) ...
HELD_OUT = "ct-chest/lung-pet-ct-dx-A0002/B40f"
#: ... and the same acquisition reconstructed with a sharp kernel (real noise, no simulation).
HELD_OUT_SHARP = "ct-chest/lung-pet-ct-dx-A0002/B70f"


@dataclass(frozen=True)
class Scan:
    """One real CT series in HU with what the noise simulator needs to know about it."""

    name: str
    hu: np.ndarray  # (slices, rows, cols) float32, slices in patient order
    pixel_spacing_mm: float
    kernel: str

    @property
    def filter_name(self) -> str:
        """The FBP filter whose noise texture matches this scan's reconstruction kernel."""
        return reconstruction_filter(self.kernel)


def full_dose_photons(scan: Scan, generator: torch.Generator) -> float:
    """The scan's calibrated full-dose photons per ray (``noise.calibrate_photons``)."""
    step = max(1, len(scan.hu) // CALIBRATION_SLICES)
    sample = list(scan.hu[::step][:CALIBRATION_SLICES])
    return calibrate_photons(sample, scan.pixel_spacing_mm, scan.filter_name, generator)


def load_scan(data_root: Path, relative: str) -> Scan:
    """Read a folder (one series) or one file under ``data_root`` as a Scan."""
    path = data_root / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is ../shared/data beside the repository?")
    if path.is_dir():
        volume = load_series(sorted(p for p in path.iterdir() if p.is_file()), min_slices=1)
        header, hu, (col_mm, row_mm, _) = volume.sources[0], volume.array, volume.spacing
    else:
        header, hu, (row_mm, col_mm) = _single_image(path)
    if abs(col_mm - row_mm) > 1e-3 * row_mm:
        raise ValueError(f"{relative}: the noise simulator needs square pixels, got {row_mm} x {col_mm} mm")
    return Scan(name=relative, hu=hu, pixel_spacing_mm=row_mm, kernel=kernel_name(header))


def _single_image(path: Path) -> tuple[Dataset, np.ndarray, tuple[float, float]]:
    """One CT image file: ``load_series`` has no slice step to check on a single image."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    slope = float(header.get("RescaleSlope", 1) or 1)
    intercept = float(header.get("RescaleIntercept", 0) or 0)
    hu = decode_pixels(path).astype(np.float32) * np.float32(slope) + np.float32(intercept)
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    return header, hu, (row_mm, col_mm)


def kernel_name(header: Dataset) -> str:
    """ConvolutionKernel as one string (it may be multi-valued, e.g. ["B40f", "2"])."""
    kernel = header.get("ConvolutionKernel", "")
    if isinstance(kernel, MultiValue):
        kernel = kernel[0] if len(kernel) else ""
    return str(kernel)
