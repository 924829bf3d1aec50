"""The simulated noise's power spectrum against real CT noise, per kernel family (training/denoise/nps.py).

Each family's window was fitted on other scans (``nps.FIT``); these are checked on scans it was not
fitted on: medium (fitted on GE STANDARD, LIDC-IDRI-0001/0002) on A0002's Siemens B40f, sharp
(fitted on C3N-00247's B70f) on A0002's B70f, another scanner and patient. The numbers beside each
threshold are what the code measured when the test was written (6 slices per scan). "Matched
variance": the simulation scaled to the real ROIs' variance, so that the shape alone is compared;
"calibrated": the magnitude ``calibrate_photons`` sets, as training and evaluation use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.noise_power import detrend, flat_tiles, rois_nps, tiles
from training.denoise import nps
from training.denoise.data import full_dose_photons, load_scan
from training.denoise.noise import SliceScan, kernel_family, reconstruction_filter

SLICES = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _spectra(data_dir: Path, name: str, filter_name: str) -> tuple[nps.Spectrum, nps.Spectrum]:
    scan = nps.sample(load_scan(data_dir, name), SLICES)
    photons = nps.calibrated_photons(scan, filter_name)
    return nps.real_spectrum(scan), nps.simulated_spectrum(scan, filter_name, photons)


@pytest.mark.parametrize(("family", "name", "limit"), [
    # real band 0.104-0.679 /mm: 1.026 (before, hann: 1.069); calibrated: the next test
    ("medium", "ct-chest/lung-pet-ct-dx-A0002/B40f", 0.15),
    # real band 0.248-0.772 /mm: 1.004 (before, ramp: 1.013); calibrated: the next test
    ("sharp", "ct-chest/lung-pet-ct-dx-A0002/B70f", 0.15),
])
@pytest.mark.slow
def test_on_a_held_out_scan_the_simulated_power_in_the_real_90_percent_band_is_within_15_percent_at_matched_variance(
        data_dir: Path, family: str, name: str, limit: float) -> None:
    assert name not in nps.FIT[family] and name in nps.CHECK[family]
    real, simulated = _spectra(data_dir, name, family)
    assert kernel_family(load_scan(data_dir, name).kernel) == family
    band = real.band()
    ratio = simulated.scaled_to(real.variance).band_power(band) / real.band_power(band)
    assert abs(ratio - 1) < limit


@pytest.mark.parametrize(("family", "name", "limit"), [
    # calibrated as training calibrates (12 slices), checked on the 6 NPS slices: 0.998 (was 1.63)
    ("medium", "ct-chest/lung-pet-ct-dx-A0002/B40f", 0.15),
    # GE, photon-starved: 1.019
    ("medium", "ct-chest/lidc-idri-0003/ct", 0.15),
    # 1.028 (was 1.49)
    ("sharp", "ct-chest/lung-pet-ct-dx-A0002/B70f", 0.15),
])
@pytest.mark.slow
def test_on_a_held_out_scan_the_calibrated_simulated_power_in_the_real_90_percent_band_is_within_15_percent(
        data_dir: Path, family: str, name: str, limit: float) -> None:
    """The magnitude as the training and the evaluation set it (``data.full_dose_photons``: the
    noise power of flat ROIs on 12 slices over the middle of the scan), checked on the 6 slices
    the NPS is measured on here, most of them not among the 12."""
    full = load_scan(data_dir, name)
    photons = full_dose_photons(full, torch.Generator().manual_seed(0))
    scan = nps.sample(full, SLICES)
    real, simulated = nps.real_spectrum(scan), nps.simulated_spectrum(scan, family, photons)
    band = real.band()
    assert abs(simulated.band_power(band) / real.band_power(band) - 1) < limit


def test_the_sharper_the_family_the_higher_the_simulated_noises_mean_frequency(data_dir: Path) -> None:
    """The power-weighted mean frequency (the spectrum's centroid), not its peak: over a broad,
    noisy spectrum the argmax jumps between neighbouring bins from one draw or CPU to the next
    (smooth and medium tied at 0.197 /mm on 3 of 6 seeds). All three families filter the same
    draw, so their differences hardly scatter: over 6 seeds medium - smooth 0.009-0.011 /mm,
    sharp 0.464-0.468 /mm."""
    scan = nps.sample(load_scan(data_dir, "ct-chest/lung-pet-ct-dx-A0002/B70f"), 1)
    hu, pixel_mm = scan.hu[0], scan.pixel_spacing_mm
    sim = SliceScan.of(hu, pixel_mm, scan.kvp)
    centroids = {}
    for family in ("smooth", "medium", "sharp"):
        noise = sim.acquisition_noise(3e5, family, torch.Generator().manual_seed(0))
        frequency, power = rois_nps(detrend(tiles(noise)[flat_tiles(hu)]), pixel_mm)
        centroids[family] = float((frequency * power).sum() / power.sum())
    assert centroids["medium"] > centroids["smooth"] + 0.005  # 0.305 against 0.294 /mm
    assert centroids["sharp"] > centroids["medium"] + 0.1  # 0.467 against 0.305 /mm
    assert centroids["sharp"] > 0.42  # 0.467 /mm


def test_kernel_names_fall_into_families_and_old_filter_names_are_unchanged() -> None:
    assert [kernel_family(k) for k in ("B30f", "B40f", "D45f", "B70f", "Br64", "STANDARD", "SOFT", "LUNG", "FC13", "FC51",
                                       "BONE", None)] == [
        "smooth", "medium", "medium", "sharp", "sharp", "medium", "smooth", "sharp", "smooth", "sharp", "sharp", "sharp"]
    assert (reconstruction_filter("B40f"), reconstruction_filter("B70f"), reconstruction_filter("STANDARD")) == (
        "hann", "ramp", "hann")


def test_a_family_filter_is_defined_in_cycles_per_mm_and_refuses_to_guess_the_pixel() -> None:
    from training.denoise.noise import family_window, fourier_filter

    with pytest.raises(ValueError, match="pixel_mm"):
        fourier_filter(256, "sharp")
    assert family_window(np.array([0.0]), "medium")[0] == 1.0
    # the same frequency in cycles/mm gets the same gain whatever the pixel: 0.25 /mm at 0.5 and 1.0 mm
    fine, coarse = fourier_filter(256, "medium", 0.5).numpy(), fourier_filter(256, "medium", 1.0).numpy()
    ramp = fourier_filter(256, "ramp").numpy()
    assert fine[32] / ramp[32] == pytest.approx(coarse[64] / ramp[64], rel=1e-5)


@pytest.mark.slow
def test_on_the_held_out_b40f_the_family_window_brings_the_simulated_nps_shape_closer_to_the_real_one(data_dir: Path) -> None:
    name = "ct-chest/lung-pet-ct-dx-A0002/B40f"
    real, after = _spectra(data_dir, name, "medium")
    _, before = _spectra(data_dir, name, reconstruction_filter("B40f"))
    # 0.095 against 0.164 with hann (0.093 against 0.156 on 12 slices)
    assert real.shape_distance(after) < 0.12
    assert real.shape_distance(after) < real.shape_distance(before) - 0.03
