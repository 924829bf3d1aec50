"""The LG-CHO low-contrast detectability observer (training/denoise/lcd.py) on synthetic images.

The observer will judge the denoiser, so it is checked first where the answer is known: noise
alone must give chance (AUC 0.5), a bigger or stronger insert must be easier, a plain one must be
found, and in white noise its d' must reach the value computed from the signal and the noise
(for a signal inside the channels' span, the ideal observer's). Its agreement with the FDA LCD-CT
toolbox on the toolbox's own images is bench/lcd_observer.py's job (it needs the toolbox's data).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import ndtr

from training.denoise.lcd import (
    channel_width,
    find_inserts,
    laguerre_gauss_channels,
    lg_cho_study,
    mann_whitney_auc,
    measure_lcd,
    remove_dc,
    train_test_indices,
)

SIZE = 96
#: Three inserts on a 96 x 96 image, far enough apart that no ROI (half-width <= 13) reaches another.
CENTRES = ((24, 24), (24, 72), (72, 48))


def disc(radius: int, centre: tuple[int, int] = (SIZE // 2, SIZE // 2), size: int = SIZE) -> np.ndarray:
    """A disc of ones: the pixels whose centres lie within ``radius`` of ``centre``."""
    rows, cols = np.mgrid[:size, :size]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.float64)


#: The "reconstruction's" blur (pixels): it correlates the noise and softens the inserts alike.
BLUR_PX = 1.0


def correlated_noise(rng: np.random.Generator, n: int, std: float) -> np.ndarray:
    """``n`` images of correlated Gaussian noise: white noise blurred by ``BLUR_PX``, rescaled to ``std``."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, SIZE, SIZE)), sigma=(0, BLUR_PX, BLUR_PX))
    return noise * (std / noise.std())


def phantom_auc(rng: np.random.Generator, inserts: list[tuple[int, float]], n: int, std: float) -> list[float]:
    """Mean AUC per insert for discs of (radius, contrast) at ``CENTRES`` in correlated noise.

    The discs are blurred like the noise, as a scanner blurs both: a sharp disc in low-pass noise
    would carry fine detail no noise covers, and a small one could then beat a large one (the
    LG-CHO's analytic d' does so for radius 2 against 3-4 px with an unblurred disc in this noise).
    """
    truth = np.zeros((SIZE, SIZE))
    signal = np.zeros((SIZE, SIZE))
    for label, ((radius, contrast), centre) in enumerate(zip(inserts, CENTRES), start=1):
        truth += 10.0 * label * disc(radius, centre)  # distinct labels: the truth only says where
        signal += contrast * disc(radius, centre)
    found = find_inserts(truth, insert_hu=[10.0 * label for label in range(1, len(inserts) + 1)])
    present = correlated_noise(rng, n, std) + ndimage.gaussian_filter(signal, BLUR_PX)
    absent = correlated_noise(rng, n, std)
    return [row.auc for row in measure_lcd(present, absent, found, seed=1)]


def test_the_laguerre_gauss_channels_are_orthonormal_on_a_fine_enough_grid():
    channels = laguerre_gauss_channels(65, width=8.0).reshape(5, -1)
    gram = channels @ channels.T
    deviation = float(np.abs(gram - np.eye(5)).max())
    assert deviation < 1e-3, f"largest deviation of the Gram matrix from identity: {deviation:.2e}"  # measured 6.7e-16


def test_inserts_are_found_where_the_truth_puts_them_with_their_bounding_box_extent():
    truth = sum(hu * disc(radius, centre) for hu, radius, centre in ((14.0, 2, (24, 24)), (7.0, 4, (24, 72)), (3.0, 6, (72, 48))))
    found = find_inserts(truth)  # the MITA order: 14, 7, 5, 3 HU; 5 HU is absent and skipped
    # A digital disc of radius r has one-pixel tips on its axes; the 3 x 3 median filter (the
    # toolbox's) removes them, so the extent is 2r - 1, not 2r + 1, as in the toolbox.
    assert [(i.hu, i.centre, i.extent_px) for i in found] == [(14.0, (24, 24), 3), (7.0, (24, 72), 7), (3.0, (72, 48), 11)]


def test_the_empirical_auc_counts_each_tie_as_half_a_correct_pair():
    assert mann_whitney_auc(np.array([0.0, 1.0]), np.array([1.0, 2.0])) == 0.875  # 3 pairs right, 1 tied, of 4
    assert mann_whitney_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0


def test_a_split_trains_and_tests_on_disjoint_halves_and_repeats_with_its_seed():
    train, test = train_test_indices(10, 0.5, seed=12345)
    assert len(train) == len(test) == 5 and not set(train) & set(test)
    again = train_test_indices(10, 0.5, seed=12345)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])


def test_noise_against_noise_is_read_at_chance():
    rng = np.random.default_rng(2)
    first, second = correlated_noise(rng, 1000, 20.0), correlated_noise(rng, 1000, 20.0)
    rois = (slice(None), slice(34, 63), slice(34, 63))  # 29 x 29, the toolbox's ROI for the MITA inserts
    aucs, _ = lg_cho_study(second[rois], first[rois], channel_width(14))
    auc = float(np.mean(aucs))
    assert abs(auc - 0.5) <= 0.05, f"signal-absent against signal-absent: AUC {auc:.3f}"  # measured 0.510


def test_auc_rises_with_contrast_at_one_size_and_with_size_at_one_contrast():
    rng = np.random.default_rng(3)
    # 200 images per class, 100 tested: one reader's AUC varies by about 0.04, the mean of 10 by less;
    # the measured steps are 0.06 to 0.22, and the order held on 8 seeds of 8 tried
    by_contrast = phantom_auc(rng, [(3, 5.0), (3, 10.0), (3, 20.0)], n=200, std=20.0)
    by_size = phantom_auc(rng, [(2, 10.0), (4, 10.0), (6, 10.0)], n=200, std=20.0)
    # measured 0.583, 0.641, 0.857
    assert by_contrast[0] < by_contrast[1] < by_contrast[2], f"AUC at 5, 10, 20 HU, radius 3 px: {by_contrast}"
    assert by_size[0] < by_size[1] < by_size[2], f"AUC at radius 2, 4, 6 px, 10 HU: {by_size}"  # measured 0.603, 0.680, 0.837


def test_a_plainly_visible_insert_is_found_even_from_the_toolboxs_ten_images_per_class():
    rng = np.random.default_rng(4)
    # Five training images per class make a rough template: over 30 seeds the AUC was 0.992 at least
    (auc,) = phantom_auc(rng, [(4, 60.0)], n=10, std=10.0)
    assert auc > 0.95, f"60 HU disc of radius 4 px in 10 HU noise: AUC {auc:.3f}"  # measured 1.000


def white_noise_study(signal: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """Mean d' and mean AUC of the LG-CHO (width 6 px) for ``signal`` in unit white noise."""
    rng = np.random.default_rng(seed)
    present = rng.standard_normal((n, *signal.shape)) + signal
    absent = rng.standard_normal((n, *signal.shape))
    aucs, snrs = lg_cho_study(present, absent, 6.0, n_readers=4, seed=seed)
    return float(np.mean(snrs)), float(np.mean(aucs))


def test_in_white_noise_a_signal_shaped_like_the_first_channel_is_detected_at_the_ideal_observers_d_prime():
    # In white noise of unit variance the ideal observer's d' is the signal's norm. The ROI's DC is
    # removed first, so the signal it sees is s - mean(s); a Gaussian of the first channel's shape
    # stays in the channels' span after that, and the CHO must reach the ideal d' exactly (up to sampling).
    first_channel = laguerre_gauss_channels(25, 6.0)[0]
    signal = first_channel * (2.0 / np.linalg.norm(remove_dc(first_channel[None])[0]))
    ideal = float(np.linalg.norm(remove_dc(signal[None])[0]))
    d_prime, auc = white_noise_study(signal, n=2000, seed=5)  # 1000 test images a class: d' to about 3 %
    assert ideal == pytest.approx(2.0)
    assert abs(d_prime / ideal - 1) < 0.08, f"d' {d_prime:.3f} against the ideal {ideal:.3f}"  # measured 2.028 / 2.000
    # Gaussian test statistics: AUC = Phi(d' / sqrt 2), 0.921 for d' = 2
    assert abs(auc - float(ndtr(ideal / math.sqrt(2)))) < 0.02, f"AUC {auc:.3f} against Phi(d'/sqrt 2)"  # measured 0.924 / 0.921


def test_in_white_noise_a_disc_is_detected_at_the_channelised_hotelling_d_prime_below_the_ideal():
    # For a disc the channels are not enough: the analytic CHO d' is sqrt(s_c' K_c^-1 s_c), with
    # s_c = T s and K_c = T P T' (P the DC removal, unit variance), and it must lie below the ideal ||P s||.
    signal = 0.6 * disc(4, centre=(12, 12), size=25)
    channels = laguerre_gauss_channels(25, 6.0).reshape(5, -1)
    projection = np.eye(625) - 1.0 / 625
    s_c = channels @ projection @ signal.ravel()
    analytic = float(np.sqrt(s_c @ np.linalg.solve(channels @ projection @ channels.T, s_c)))
    ideal = float(np.linalg.norm(projection @ signal.ravel()))
    d_prime, _ = white_noise_study(signal, n=2000, seed=6)
    assert analytic < ideal, f"channelised {analytic:.3f} against ideal {ideal:.3f}"  # measured 3.809 / 4.032
    assert abs(d_prime / analytic - 1) < 0.08, f"d' {d_prime:.3f} against the analytic CHO {analytic:.3f}"  # measured 3.760/3.809
