"""Real against simulated CT noise power spectra (NPS), per kernel family (``noise.kernel_family``).

The denoiser learns the noise ``noise.py`` inserts; it must look like the scanner's. Both are
measured alike (``pipelines.noise_power``): 32 x 32 ROIs in flat soft tissue of real full-dose
slices, quadratic detrend, radial NPS. The real NPS comes from the slices as they are; the
simulated one from the noise the simulation gives the same slices at their full dose
(``noise.SliceScan.acquisition_noise`` with the electronic noise), cut from the same ROIs.
(Not the noise ``reduced_dose`` adds at half dose scaled back: its quantum part scales so, its
electronic part does not.) Photons per ray are ``noise.calibrate_photons``'s, per scan, with the
filter being measured.

Each family's window (``noise.FAMILY_APODIZATION``) is fitted on the ``FIT`` scans and checked on
the ``CHECK`` scans: the window's square is the real NPS over the NPS of the simulation's plain
ramp on the same slices. ``PYTHONPATH=$PWD python -m training.denoise.nps --fit``
prints the fit; ``--out DIR`` writes ``nps.png`` (real against simulated, before and after) and
``nps.json`` (the numbers):

    PYTHONPATH=$PWD python -m training.denoise.nps --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import optimize

from pipelines.denoise.kernels import FAMILIES
from pipelines.noise_power import detrend, flat_tiles, measure_nps, rois_nps, tiles
from training.denoise.data import CALIBRATION_SLICES, Scan, load_scan, spread_slices
from training.denoise.noise import (
    ELECTRONIC_NOISE_COUNTS,
    SliceScan,
    calibrate_photons,
    kernel_family,
    reconstruction_filter,
)

#: Scans each family's window is fitted on (``data.load_scan`` names under the shared data).
#: Smooth has one image in the data, a Siemens B30s neck slice: fitted on it, checked on none.
FIT: dict[str, tuple[str, ...]] = {
    "smooth": ("transfer-syntaxes/pydicom-data/bad_sequence.dcm",),
    "medium": ("ct-chest/lidc-idri-0001/ct", "ct-chest/lidc-idri-0002/ct"),
    "sharp": ("ct-chest/cptac-luad-C3N-00247",),
}
#: Scans no window was fitted on: A0002's B40f is another vendor's medium kernel than the GE
#: STANDARD it is checked against; its B70f is the same kernel on another scanner and patient.
CHECK: dict[str, tuple[str, ...]] = {
    "smooth": (),
    "medium": ("ct-chest/lung-pet-ct-dx-A0002/B40f", "ct-chest/lidc-idri-0003/ct"),
    "sharp": ("ct-chest/lung-pet-ct-dx-A0002/B70f",),
}
#: Slices per scan (``data.spread_slices``), as many as the photon calibration uses.
SLICES = CALIBRATION_SLICES
#: The share of the real noise power the compared band holds (from its 5th to 95th percentile).
BAND_SHARE = 0.9
#: Lowest frequency (cycles/mm) a fit uses: below it the real ROIs hold anatomy, not only noise.
FIT_FROM = 0.1


@dataclass(frozen=True)
class Spectrum:
    """A radial NPS (HU^2 mm^2) on one scan's ring grid (cycles/mm) and the ROIs it averages."""

    frequency: np.ndarray
    nps: np.ndarray
    rois: int

    @property
    def ring_power(self) -> np.ndarray:
        """Each ring's share of the variance (HU^2): NPS times the ring's area in the plane."""
        step = float(self.frequency[2] - self.frequency[1])
        power: np.ndarray = self.nps * 2 * math.pi * self.frequency * step
        return power

    @property
    def variance(self) -> float:
        """The NPS integrated over the plane up to Nyquist (HU^2)."""
        return float(self.ring_power.sum())

    @property
    def peak_frequency(self) -> float:
        return float(self.frequency[int(np.argmax(self.nps))])

    def band(self, share: float = BAND_SHARE) -> tuple[float, float]:
        """The rings (lowest, highest centre) between the (1 - share)/2 and (1 + share)/2 quantiles
        of the power: the band that holds ``share`` of it, cut equally at both ends."""
        cumulative = np.cumsum(self.ring_power) / self.variance
        low = int(np.searchsorted(cumulative, (1 - share) / 2))
        high = int(np.searchsorted(cumulative, (1 + share) / 2))
        return float(self.frequency[low]), float(self.frequency[high])

    def band_power(self, band: tuple[float, float]) -> float:
        """The variance (HU^2) of the rings inside ``band``."""
        inside = (self.frequency >= band[0] - 1e-9) & (self.frequency <= band[1] + 1e-9)
        return float(self.ring_power[inside].sum())

    def scaled_to(self, variance: float) -> Spectrum:
        """The same shape with ``variance`` in all: the photon count that matches the flat ROIs'
        mean variance instead of ``calibrate_photons``'s 25th percentile (variance ~ 1 / photons)."""
        return Spectrum(self.frequency, self.nps * variance / self.variance, self.rois)

    def shape_distance(self, other: Spectrum) -> float:
        """Half the L1 distance between the two spectra's power over rings from ``FIT_FROM`` up, each
        normalised to 1 (0: the same shape, 1: no overlap); ``other`` on the same ring grid."""
        use = self.frequency >= FIT_FROM
        mine, theirs = self.ring_power[use], other.ring_power[use]
        return float(0.5 * np.abs(mine / mine.sum() - theirs / theirs.sum()).sum())

    def summary(self) -> dict[str, object]:
        low, high = self.band()
        return {"peak_per_mm": round(self.peak_frequency, 3), "band_per_mm": [round(low, 3), round(high, 3)],
                "variance_hu2": round(self.variance, 1), "sd_hu": round(math.sqrt(self.variance), 2), "rois": self.rois}


def sample(scan: Scan, count: int = SLICES) -> Scan:
    """``count`` slices spread evenly over the middle of the scan (``data.spread_slices``): the
    slices ``data.full_dose_photons`` calibrates the photon count on."""
    return scan.subset(spread_slices(len(scan.hu), count))


def real_spectrum(scan: Scan) -> Spectrum:
    """The NPS of the scan's own slices: its real full-dose noise (and what anatomy remains)."""
    frequency, nps, rois = measure_nps(scan.hu, scan.pixel_spacing_mm)
    return Spectrum(frequency, nps, rois)


def calibrated_photons(scan: Scan, filter_name: str, seed: int = 0) -> float:
    """``noise.calibrate_photons`` on the scan's slices with this filter: full-dose photons/ray."""
    dose = None if scan.relative_dose is None else list(scan.relative_dose)
    return calibrate_photons(list(scan.hu), scan.pixel_spacing_mm, filter_name, torch.Generator().manual_seed(seed),
                             kvp=scan.kvp, relative_dose=dose)


def simulated_spectrum(scan: Scan, filter_name: str, photons: float, seed: int = 1) -> Spectrum:
    """The NPS of the simulation's full-dose noise on the scan's slices (electronic noise
    included), on the ROIs the real slices give."""
    generator = torch.Generator().manual_seed(seed)
    rois = []
    for k, hu in enumerate(scan.hu):
        noise = SliceScan.of(hu, scan.pixel_spacing_mm, scan.kvp).acquisition_noise(
            scan.slice_photons(photons, k), filter_name, generator, ELECTRONIC_NOISE_COUNTS)
        rois.append(detrend(tiles(noise)[flat_tiles(hu)]))
    frequency, nps = rois_nps(np.concatenate(rois), scan.pixel_spacing_mm)
    return Spectrum(frequency, nps, sum(len(r) for r in rois))


def window_squared(frequency: np.ndarray, cutoff: float, power: float, boost: float) -> np.ndarray:
    """``noise.family_window``'s square for the given parameters (``noise.FAMILY_APODIZATION``)."""
    x = frequency / cutoff
    values: np.ndarray = (1 + boost * x**2) * np.exp(-(x**power))
    return values


def fit_window(pairs: list[tuple[Spectrum, Spectrum]]) -> tuple[float, float, float]:
    """(cutoff, power, boost) whose ``window_squared`` best gives real / ramp-simulated NPS, up to a
    scale (the photon calibration's), in log from ``FIT_FROM`` to below Nyquist. Each ring weighs by
    its share of the real power times the scan's ROIs: the fit follows the noise where its power is."""
    frequency, log_ratio, weight = [], [], []
    for real, ramp in pairs:
        use = (real.frequency >= FIT_FROM) & (real.frequency < real.frequency[-1] - 1e-9) & (ramp.nps > 0) & (real.nps > 0)
        frequency.append(real.frequency[use])
        log_ratio.append(np.log(real.nps[use] / ramp.nps[use]))
        weight.append(np.sqrt(real.rois * real.ring_power[use] / real.variance))
    f, y, w = np.concatenate(frequency), np.concatenate(log_ratio), np.concatenate(weight)

    def residual(theta: np.ndarray) -> np.ndarray:
        cutoff, power, boost, scale = math.exp(theta[0]), math.exp(theta[1]), theta[2], theta[3]
        model = np.log1p(boost * (f / cutoff) ** 2) - (f / cutoff) ** power + scale
        out: np.ndarray = w * (model - y)
        return out

    best = min((optimize.least_squares(residual, [math.log(c), math.log(p), 0.0, 0.0], bounds=(
        [math.log(0.02), math.log(0.5), 0.0, -20.0], [math.log(3.0), math.log(12.0), 20.0, 20.0]))
        for c in (0.15, 0.4, 0.7) for p in (1.0, 3.0)), key=lambda r: float(r.cost))
    return round(math.exp(best.x[0]), 4), round(math.exp(best.x[1]), 3), round(float(best.x[2]), 3)


def fit(data_root: Path, slices: int = SLICES) -> dict[str, tuple[float, float, float]]:
    """Each family's window fitted on its ``FIT`` scans."""
    windows = {}
    for family in FAMILIES:
        pairs = []
        for name in FIT[family]:
            scan = sample(load_scan(data_root, name), slices)
            photons = calibrated_photons(scan, "ramp")
            pairs.append((real_spectrum(scan), simulated_spectrum(scan, "ramp", photons)))
        windows[family] = fit_window(pairs)
    return windows


@dataclass(frozen=True)
class Comparison:
    """One scan's real NPS against the simulation's, with the filter of before and of now."""

    name: str
    kernel: str
    family: str
    role: str  # "fit" or "check"
    real: Spectrum
    before: Spectrum  # reconstruction_filter's iradon window, calibrated with it
    after: Spectrum  # the family's fitted window, calibrated with it
    photons_before: float
    photons_after: float

    def band_ratio(self, simulated: Spectrum) -> float:
        """The simulated over the real power in the band that holds ``BAND_SHARE`` of the real's."""
        band = self.real.band()
        return simulated.band_power(band) / self.real.band_power(band)

    def matched_band_ratio(self, simulated: Spectrum) -> float:
        """``band_ratio`` with the simulation's magnitude matched to the real ROIs' variance: the
        shape's share of the error."""
        return self.band_ratio(simulated.scaled_to(self.real.variance))

    def record(self) -> dict[str, object]:
        return {"scan": self.name, "kernel": self.kernel, "family": self.family, "role": self.role,
                "filter_before": reconstruction_filter(self.kernel), "photons_before": round(self.photons_before),
                "photons_after": round(self.photons_after), "real": self.real.summary(),
                "before": {**self.before.summary(), "band_ratio": round(self.band_ratio(self.before), 3),
                           "matched_band_ratio": round(self.matched_band_ratio(self.before), 3),
                           "shape_distance": round(self.real.shape_distance(self.before), 3)},
                "after": {**self.after.summary(), "band_ratio": round(self.band_ratio(self.after), 3),
                          "matched_band_ratio": round(self.matched_band_ratio(self.after), 3),
                          "shape_distance": round(self.real.shape_distance(self.after), 3)},
                "frequency": np.round(self.real.frequency, 4).tolist(), "nps_real": np.round(self.real.nps, 2).tolist(),
                "nps_before": np.round(self.before.nps, 2).tolist(), "nps_after": np.round(self.after.nps, 2).tolist()}


def compare(data_root: Path, name: str, role: str, slices: int = SLICES) -> Comparison:
    """Real against simulated NPS on one scan, before (``reconstruction_filter``) and after
    (``kernel_family``), each with its own photon calibration."""
    scan = sample(load_scan(data_root, name), slices)
    family = kernel_family(scan.kernel)
    spectra, photons = [], []
    for filter_name in (reconstruction_filter(scan.kernel), family):
        photons.append(calibrated_photons(scan, filter_name))
        spectra.append(simulated_spectrum(scan, filter_name, photons[-1]))
    return Comparison(name, scan.kernel, family, role, real_spectrum(scan), spectra[0], spectra[1], photons[0], photons[1])


def plot(comparisons: list[Comparison], path: Path) -> None:
    """Real against simulated NPS, one panel per family, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(12, 3.6), dpi=80)
    for axis, family in zip(axes, reversed(FAMILIES)):
        for k, c in enumerate(x for x in comparisons if x.family == family):
            colour = f"C{k}"
            label = f"{c.name.split('/')[-2] if c.name.endswith(('/ct', 'B40f', 'B70f')) else c.name.split('/')[-1]}"
            label = f"{label} {c.kernel} ({c.role})"
            rings = slice(1, None)  # not the DC ring, which the detrend empties
            axis.plot(c.real.frequency[rings], c.real.nps[rings], "-", color=colour, lw=2, label=f"{label}: real")
            axis.plot(c.before.frequency[rings], c.before.nps[rings], ":", color=colour,
                      label=f"before ({reconstruction_filter(c.kernel)})")
            axis.plot(c.after.frequency[rings], c.after.nps[rings], "--", color=colour, label=f"after ({family} window)")
        axis.set_title(f"{family} kernels")
        axis.set_xlabel("spatial frequency (cycles/mm)")
        axis.set_yscale("log")
        axis.set_ylim(bottom=1.0)
        axis.legend(fontsize=6)
    axes[0].set_ylabel("NPS (HU$^2$ mm$^2$), full dose")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for nps.png and nps.json")
    parser.add_argument("--fit", action="store_true", help="fit each family's window and print it")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--slices", type=int, default=SLICES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from training.data_folder import DATA_ROOT

    data_root = args.data or DATA_ROOT
    if args.fit:
        for family, window in fit(data_root, args.slices).items():
            print(f'"{family}": {window},')
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        comparisons = [compare(data_root, name, role, args.slices)
                       for family in reversed(FAMILIES) for role, names in (("fit", FIT[family]), ("check", CHECK[family]))
                       for name in names]
        plot(comparisons, args.out / "nps.png")
        record = {"command": "python -m training.denoise.nps --out DIR", "slices_per_scan": args.slices,
                  "electronic_noise_counts": ELECTRONIC_NOISE_COUNTS, "band_share": BAND_SHARE,
                  "scans": [c.record() for c in comparisons]}
        (args.out / "nps.json").write_text(json.dumps(record, indent=1) + "\n")
        for c in comparisons:
            r = c.record()
            print(f"{c.family:6s} {c.role:5s} {c.kernel:8s} {c.name}: real {r['real']}\n    before {r['before']}\n"
                  f"    after  {r['after']}")


if __name__ == "__main__":
    main()
