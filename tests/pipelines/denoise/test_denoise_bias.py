"""ct-denoise keeps HU: the mean of every 15 mm soft-tissue square stays within 2 HU of the input's.

A denoiser that shifts HU changes diagnoses (enhancement, fat, fluid), so the shipped pipeline
high-passes whatever the network changes (``inference``: ``input + r - G(r)``; G's scale is
``restore_mean_sigma_mm`` in the weights' params.toml). The rule (training/denoise/LOG.md,
"Acceptance rules for the quality and bias targets" and
"Bias against a known truth, and the mean-restore scale") is checked on a uniform water cylinder
simulated at 80, 100, 120 and 140 kVp and on the held-out real anatomy at every kernel at
simulated quarter dose.

What is measured is the systematic part: the mean over ``DRAWS`` independent noise draws. A single
draw cannot tell bias from noise: the noise's own 15 mm box mean reaches 8 HU on the sharp kernel.
Nor can draws that share a real full-dose image's own noise, which a good denoiser removes, so the
real anatomy is measured against a known truth (``evaluate.known_truth_deviation``): the full-dose
slices smoothed by 1 mm, and draws simulated from it. The rule's reference is the input's expected
image: that truth plus the simulation's own systematic error, which is not zero where few photons
arrive (training/denoise/LOG.md, "The input's own systematic error as the reference").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipelines.denoise.inference import DEFAULT_MODEL_DIR, Denoiser, Preprocessing
from training.denoise import evaluate
from training.denoise.data import HELD_OUT_BY_KERNEL, load_scan
from training.denoise.noise import ELECTRONIC_NOISE_COUNTS, SliceScan

pytestmark = [pytest.mark.slow]

#: Noise draws averaged per measurement: the noise's box mean falls by sqrt(DRAWS).
DRAWS = 8
#: The rule: 2 HU in any 15 mm soft-tissue square (evaluate.local_mean_deviation).
MAX_BIAS_HU = 2.0


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    return Denoiser.load(DEFAULT_MODEL_DIR, "cpu")


@pytest.mark.parametrize("kvp", [80, 100, 120, 140])
def test_water_phantom_keeps_its_local_mean_at_every_tube_voltage(denoiser, kvp):
    deviation = evaluate.water_phantom_deviation(denoiser, kvp, DRAWS, seed=kvp)
    # measured 2026-11-24 (restore scale 1 mm, input-mean target): 80 kVp 0.83, 100 kVp 0.73, 120 kVp 0.74,
    # 140 kVp 0.76 HU max over 143,632 squares wholly inside the water, p99 0.29-0.34 HU
    assert deviation["max_hu"] <= MAX_BIAS_HU, deviation


@pytest.mark.parametrize("kernel", sorted(HELD_OUT_BY_KERNEL))
def test_held_out_real_anatomy_keeps_its_local_mean_at_quarter_dose_against_a_known_truth(denoiser, data_dir, kernel):
    scan = load_scan(data_dir, HELD_OUT_BY_KERNEL[kernel])
    scan = scan.subset([len(scan.hu) // 3, 2 * len(scan.hu) // 3])
    deviation = evaluate.known_truth_deviation(denoiser, scan, evaluate.EVALUATION_SEED,
                                               most_draws=evaluate.TRUTH_DRAWS)
    # measured 2026-11-24 on these 2 slices, 32 draws, against the input: B40f 0.97, B70f 1.32, STANDARD
    # 1.18 HU max (against the truth 0.97, 1.30, 1.27; noise floor 0.16, 0.30, 0.68; 10-12 s each); B70f
    # by the sharp weights of 2026-11-26: 0.95 HU (truth 0.94, floor 0.34); at their 0.75 mm restore
    # scale (2026-11-29) 0.92 HU (1.15 at 1.0 mm; floor 0.41). On the evaluation's 28-30
    # slices under today's simulation: 0.92, 1.42 and 2.40 HU (training/denoise/LOG.md,
    # "Per-family weights: outcome")
    assert deviation["max_hu"] <= MAX_BIAS_HU, deviation


class _Oracle:
    """A perfect denoiser for one known image: it returns that image through the mean correction."""

    def __init__(self, truth: np.ndarray, preprocessing: Preprocessing) -> None:
        self.truth, self.preprocessing = truth, preprocessing

    def __call__(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], family: str | None = None) -> np.ndarray:
        sigma = (0.0, *(self.preprocessing.restore_mean_sigma_mm / s for s in pixel_spacing_mm))
        return self.truth + ndimage.gaussian_filter(hu - self.truth, sigma, mode="nearest")


def test_a_perfect_denoiser_scores_zero_against_the_known_truth_but_not_against_the_shared_full_dose_noise(data_dir):
    """Why the real-scan measurement has a known truth: the old one failed even a perfect denoiser."""
    scan = load_scan(data_dir, HELD_OUT_BY_KERNEL["B70f"]).subset([15])
    truth = evaluate.gaussian(scan.hu, evaluate.TRUTH_SMOOTHING_MM / scan.pixel_spacing_mm)
    oracle = _Oracle(truth, Preprocessing())
    known = evaluate.known_truth_deviation(oracle, scan, evaluate.EVALUATION_SEED, draws=2)  # type: ignore[arg-type]
    # A full-dose image with noise of its own, shared by every draw, as the old measurement had it.
    generator = torch.Generator().manual_seed(1)
    sim = SliceScan.of(truth[0], scan.pixel_spacing_mm, scan.kvp)
    photons = evaluate.scan_photons(scan, evaluate.EVALUATION_SEED)
    full = truth + sim.acquisition_noise(photons, scan.filter_name, generator, ELECTRONIC_NOISE_COUNTS)[None]
    draws = np.stack([full + sim.acquisition_noise(photons / 3, scan.filter_name, generator)[None] for _ in range(DRAWS)])
    shared = evaluate.systematic_deviation(oracle, draws, scan.pixel_spacing_mm, scan.filter_name)  # type: ignore[arg-type]
    # measured: 3.42 HU (p99 1.74) by the shared-noise measurement, 2e-7 HU against the known truth
    assert known["truth_max_hu"] < 0.01, known
    assert shared["max_hu"] > MAX_BIAS_HU, shared


def test_on_a_starved_scan_keeping_the_inputs_own_streak_bias_is_what_the_issues_rule_asks(data_dir):
    """The simulated starved input is itself biased (b); the rule compares with the input, not the truth.

    A denoiser that returns the input's expected image (truth + b, plus the low frequencies the
    mean correction gives back) scores 0 against the input; one that also removes the fine part of
    b scores 0 against the truth and exactly that fine part against the input.
    """
    scan = load_scan(data_dir, "ct-chest/lidc-idri-0002/ct").subset([231])  # GE STANDARD, few photons
    truth = evaluate.gaussian(scan.hu, evaluate.TRUTH_SMOOTHING_MM / scan.pixel_spacing_mm)
    photons = evaluate.scan_photons(scan, evaluate.EVALUATION_SEED) * evaluate.TRUTH_DOSE
    own_error = SliceScan.of(truth[0], scan.pixel_spacing_mm, scan.kvp).expected_acquisition_error(
        scan.slice_photons(photons, 0), scan.filter_name, ELECTRONIC_NOISE_COUNTS)
    restore = Preprocessing(restore_mean_sigma_mm=1.0)
    keeps = evaluate.known_truth_deviation(_Oracle(truth + own_error[None], restore), scan,  # type: ignore[arg-type]
                                           evaluate.EVALUATION_SEED, draws=2)
    removes = evaluate.known_truth_deviation(_Oracle(truth, restore), scan, evaluate.EVALUATION_SEED, draws=2)  # type: ignore[arg-type]
    fine = removes["input_fine_error_max_hu"]
    # measured: the input's fine streak bias reaches 0.85 HU in a 15 mm square of this slice (1 mm restore)
    assert fine > 0.5, removes
    assert keeps["max_hu"] < 0.01 and keeps["truth_max_hu"] == pytest.approx(fine, rel=1e-3), keeps
    assert removes["truth_max_hu"] < 0.01 and removes["max_hu"] == pytest.approx(fine, rel=1e-3), removes


class _Offset(_Oracle):
    """The perfect denoiser plus a fixed 3 HU: a bias with no noise in it."""

    def __call__(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], family: str | None = None) -> np.ndarray:
        return super().__call__(hu, pixel_spacing_mm, family) + 3.0


def test_the_noise_floor_reads_noise_left_in_the_output_and_not_a_fixed_bias(data_dir):
    """The known-truth maximum is a maximum of a noisy mean; its noise floor says how much is noise."""
    scan = load_scan(data_dir, HELD_OUT_BY_KERNEL["B70f"]).subset([15])
    truth = evaluate.gaussian(scan.hu, evaluate.TRUTH_SMOOTHING_MM / scan.pixel_spacing_mm)
    offset = evaluate.known_truth_deviation(_Offset(truth, Preprocessing()), scan, evaluate.EVALUATION_SEED, draws=2)  # type: ignore[arg-type]
    unchanged = Denoiser(torch.nn.Identity(), Preprocessing(), "cpu")  # leaves every bit of noise in
    left = evaluate.known_truth_deviation(unchanged, scan, evaluate.EVALUATION_SEED, draws=2, most_draws=2)
    assert offset["truth_max_hu"] == pytest.approx(3.0, abs=1e-3) and offset["noise_floor_hu"] < 1e-3, offset
    # measured: the unchanged input reads a floor of 3.68 HU beside a maximum of 3.63 HU (2 draws)
    assert left["noise_floor_hu"] > 0.5 * left["max_hu"] > 0, left
    # and where the floor is above TRUTH_FLOOR_HU the draws go on, four times as many (2 -> 8 here)
    more = evaluate.known_truth_deviation(unchanged, scan, evaluate.EVALUATION_SEED, draws=2, most_draws=8)
    assert more["draws"] == 8 and more["noise_floor_hu"] < left["noise_floor_hu"], more


class _Biased(torch.nn.Module):
    """A stand-in model that shifts HU, the defect the correction exists for: +14 HU everywhere, plus fine texture."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.014 + 0.01 * torch.sin(x.shape[-1] * x)


def test_a_model_that_shifts_hu_is_corrected_back_to_the_input_mean(data_dir):
    """By construction: a 14 HU offset is pure low frequency, so the correction removes all of it."""
    scan = load_scan(data_dir, HELD_OUT_BY_KERNEL["B70f"]).subset([15])
    spacing = (scan.pixel_spacing_mm, scan.pixel_spacing_mm)
    biased = Denoiser(_Biased(), Preprocessing(), "cpu")
    uncorrected = Denoiser(_Biased(), Preprocessing(restore_mean_sigma_mm=0.0), "cpu")
    # measured: 14.90 HU without the correction, 0.45 HU (p99 0.28) with it
    assert evaluate.local_mean_deviation(uncorrected(scan.hu, spacing), scan.hu, scan.pixel_spacing_mm)["max_hu"] > 13
    deviation = evaluate.local_mean_deviation(biased(scan.hu, spacing), scan.hu, scan.pixel_spacing_mm)
    assert deviation["max_hu"] <= MAX_BIAS_HU, deviation
