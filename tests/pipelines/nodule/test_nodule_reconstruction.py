"""Another reconstruction of the same acquisition (training/nodule/reconstruction.py).

The numbers beside each threshold are what the code measured when the test was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.volume import Volume
from training.nodule import reconstruction

LIDC = "ct-chest/lidc-idri-0001/ct"
SHARP = "ct-chest/cptac-luad-C3N-00247"


def _volume(hu: np.ndarray, pixel_mm: float, slice_mm: float) -> Volume:
    return Volume(array=hu, spacing=(pixel_mm, pixel_mm, slice_mm), origin=np.array([0.0, 0.0, -100.0]),
                  direction=np.eye(3), sources=tuple({} for _ in hu), frames=(1,) * len(hu),
                  frame_of_reference_uid=None, modality="CT")


def _sphere(pixel_mm: float = 0.7, slice_mm: float = 1.25, slices: int = 40, side: int = 160) -> np.ndarray:
    """A 20 mm solid sphere (40 HU) in lung (-850 HU), centred in slice 20's slab edge-free."""
    z, y, x = np.mgrid[:slices, :side, :side]
    distance = np.sqrt(((z - 18) * slice_mm) ** 2 + ((y - side / 2) * pixel_mm) ** 2 + ((x - side / 2) * pixel_mm) ** 2)
    hu: np.ndarray = np.where(distance <= 10.0, 40.0, -850.0).astype(np.float32)
    return hu


def _half_max_diameter_mm(hu_slice: np.ndarray, pixel_mm: float) -> float:
    """The in-plane diameter of the area above half-way between lung and sphere."""
    return float(2 * np.sqrt((hu_slice > (-850.0 + 40.0) / 2).sum() * pixel_mm**2 / np.pi))


def _noise_sd(frequency: np.ndarray, nps: np.ndarray) -> float:
    """The noise SD of a radial NPS, integrated as the table's are (on its grid, up to Nyquist)."""
    grid = np.arange(reconstruction.FREQUENCY_STEP / 2, frequency[-1], reconstruction.FREQUENCY_STEP)
    return float(np.sqrt(np.sum(np.interp(grid, frequency, nps) * 2 * np.pi * grid * reconstruction.FREQUENCY_STEP)))


@pytest.fixture
def lidc_slab(data_dir: Path) -> Volume:
    """30 slices (2.5 mm, GE STANDARD) from the middle of lidc-idri-0001."""
    from training.nodule import data

    volume = data.load(data_dir, LIDC)
    return _volume(volume.array[50:80], volume.spacing[0], volume.spacing[2])


def test_the_sharp_table_is_what_the_measurement_gives_on_c3n_00247(data_dir: Path) -> None:
    from training.nodule import data

    volume = data.load(data_dir, SHARP)
    frequency, nps, _ = reconstruction.measure_nps(volume.array, volume.spacing[0])
    table = reconstruction.load_table()["sharp"]
    assert abs(frequency[np.argmax(nps)] - table.peak_frequency) < 0.03  # 0.560 (its own 0.055 /mm grid) against 0.5375 /mm
    assert abs(_noise_sd(frequency, nps) / table.noise_sd_hu - 1) < 0.05  # 57.92 HU both (3 mm slices, the reference)


def test_the_measured_kernels_differ_as_b70f_and_ge_standard_do() -> None:
    table = reconstruction.load_table()
    assert table["sharp"].peak_frequency > 0.45  # 0.5375 /mm
    assert table["soft"].peak_frequency < 0.3  # 0.0875 /mm (flat to 0.35, then falling)
    assert table["sharp"].noise_sd_hu > 3 * table["soft"].noise_sd_hu  # 57.9 against 15.1 HU at 3 mm


def test_the_kernel_gain_is_one_at_low_frequency_and_rises_to_its_bound() -> None:
    table = reconstruction.load_table()
    gain = reconstruction.kernel_gain(np.array([0.0, 0.04, 0.3, 0.55, 0.8]), table)
    assert gain[0] == gain[1] == 1.0
    assert 1.2 < gain[2] < gain[3] <= reconstruction.MAX_GAIN  # 1.37, 3.09 (bound 4; 3.54 at 0.8 /mm)


@pytest.mark.slow
def test_a_soft_lidc_slab_made_sharper_has_the_b70f_nps_peak_and_noise(lidc_slab: Volume) -> None:
    pixel_mm, slice_mm = lidc_slab.spacing[0], lidc_slab.spacing[2]
    sharp = reconstruction.rekernel(lidc_slab.array, pixel_mm, "sharper", slice_mm, np.random.default_rng(0))
    frequency, nps, _ = reconstruction.measure_nps(sharp, pixel_mm)
    table = reconstruction.load_table()["sharp"]
    assert abs(frequency[np.argmax(nps)] - table.peak_frequency) < 0.06  # 0.535 against 0.5375 /mm (soft: 0.096)
    at_reference = _noise_sd(frequency, nps * slice_mm / reconstruction.REFERENCE_THICKNESS_MM)
    # 44.4 against 57.9 HU (-23 %); the source itself: 13.0 HU on 2.5 mm, quieter than the LIDC mean
    # the added noise assumes (15.1 HU at 3 mm), so it adds less than the B70f scan has.
    assert abs(at_reference / table.noise_sd_hu - 1) < 0.3


@pytest.mark.slow
def test_a_kernel_change_keeps_the_mean_of_a_15_mm_soft_tissue_roi_within_1_hu(lidc_slab: Volume) -> None:
    pixel_mm = lidc_slab.spacing[0]
    rows, cols = np.ogrid[:512, :512]
    disk = (rows - 410) ** 2 + (cols - 217) ** 2 <= (7.5 / pixel_mm) ** 2  # flat soft tissue, -2 HU
    before = float(lidc_slab.array[:, disk].mean())
    for change in ("sharper", "softer"):
        after = reconstruction.rekernel(lidc_slab.array, pixel_mm, change, lidc_slab.spacing[2], np.random.default_rng(0))
        assert abs(float(after[:, disk].mean()) - before) < 1.0  # 0.08 HU sharper, 0.07 HU softer


def test_a_20_mm_sphere_keeps_its_half_max_diameter_within_1_mm_through_both_changes() -> None:
    hu = _sphere()
    for change in ("sharper", "softer"):
        changed = reconstruction.rekernel(hu, 0.7, change, 1.25, np.random.default_rng(1))
        thick = reconstruction.rethicken(_volume(changed, 0.7, 1.25), 5.0)
        centre = int(np.argmax([(s > -405).sum() for s in thick.array]))
        assert abs(_half_max_diameter_mm(changed[18], 0.7) - 20.0) < 1.0  # 20.0 mm, both
        assert abs(_half_max_diameter_mm(thick.array[centre], 0.7) - 20.0) < 1.0  # 19.87 mm, both (5 mm slab through the centre)


def test_rethickening_to_5_mm_gives_the_slice_count_spacing_and_position() -> None:
    volume = _volume(np.arange(40, dtype=np.float32)[:, None, None] * np.ones((40, 4, 4), np.float32), 0.7, 1.25)
    thick = reconstruction.rethicken(volume, 5.0)
    assert thick.array.shape == (10, 4, 4)  # 40 x 1.25 mm = 10 x 5 mm
    assert thick.spacing == (0.7, 0.7, 5.0)
    assert thick.origin[2] == pytest.approx(-100.0 + 1.5 * 1.25)  # the first slab's centre: source slices 0-3
    assert thick.array[0, 0, 0] == pytest.approx(1.5)  # the mean of slices 0-3
    assert len(thick.sources) == 10


def test_thin_slices_are_not_made_from_thick_ones() -> None:
    with pytest.raises(ValueError, match="cannot make"):
        reconstruction.rethicken(_volume(np.zeros((4, 4, 4), np.float32), 0.7, 5.0), 2.0)


def test_a_drawn_reconstruction_is_seeded_and_never_thinner_than_the_source() -> None:
    volume = _volume(np.zeros((4, 4, 4), np.float32), 0.7, 2.5)
    drawn = [reconstruction.draw(np.random.default_rng(seed), volume) for seed in range(40)]
    assert drawn == [reconstruction.draw(np.random.default_rng(seed), volume) for seed in range(40)]
    assert {d.thickness_mm for d in drawn} == {None, 3.0, 5.0}
    assert {d.kernel for d in drawn} == {"as acquired", "sharper"}  # the source has no kernel name: soft
