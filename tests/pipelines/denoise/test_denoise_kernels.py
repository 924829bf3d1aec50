"""The denoiser is told the series' kernel family: by ConvolutionKernel when the name is known,
else by the series' own noise; and a site can turn its strength down.

The measured family is checked on real scans whose names are withheld: the thresholds
(``kernels.MEDIAN_FREQUENCY_LIMITS``) were set from these scans' median noise frequencies
(B70f 0.56 and 0.58, GE STANDARD 0.35-0.40, B40f 0.34 cycles/mm), so each case states its number.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.denoise.inference import Denoiser, Preprocessing
from pipelines.denoise.kernels import median_noise_frequency, named_family, series_family
from pipelines.denoise.model import Architecture, ResidualDenoiser
from pipelines.model_folder import ModelFolderError
from training.denoise import nps
from training.denoise.data import load_scan
from training.denoise.train import write_weights


@pytest.mark.parametrize(("kernel", "family"), [
    ("B30f", "smooth"), ("I31f\\3", "smooth"), ("Br40d", "medium"), ("B40f", "medium"), ("D45f", "medium"),
    ("B70f", "sharp"), ("Hr64h", "sharp"), ("SOFT", "smooth"), ("STANDARD", "medium"), ("LUNG", "sharp"),
    ("BONEPLUS", "sharp"), ("FC07", "smooth"), ("FC21", "medium"), ("FC52", "sharp"), ("B", "medium"),
    ("YA", "sharp"), ("L", "sharp"),
])
def test_vendor_kernel_names_fall_into_their_family(kernel: str, family: str) -> None:
    assert named_family(kernel) == family


@pytest.mark.parametrize("kernel", [None, "", "XCEED", "KERNEL7", "Q"])
def test_a_kernel_name_nobody_told_us_about_is_not_guessed(kernel: str | None) -> None:
    assert named_family(kernel) is None


@pytest.mark.parametrize(("name", "family", "measured_per_mm"), [
    ("ct-chest/lung-pet-ct-dx-A0002/B70f", "sharp", 0.582),
    ("ct-chest/lung-pet-ct-dx-A0002/B40f", "medium", 0.341),
    ("ct-chest/lidc-idri-0003/ct", "medium", 0.345),
])
@pytest.mark.slow
def test_without_its_kernel_name_a_real_series_is_read_by_its_own_noise(
        data_dir: Path, name: str, family: str, measured_per_mm: float) -> None:
    scan = load_scan(data_dir, name)
    median = median_noise_frequency(scan.hu, scan.pixel_spacing_mm)
    assert median == pytest.approx(measured_per_mm, abs=0.03)
    read = series_family("VENDOR-X", scan.hu, scan.pixel_spacing_mm)
    assert (read.family, read.source) == (family, "measured noise")
    named = series_family(scan.kernel, scan.hu, scan.pixel_spacing_mm)
    assert (named.family, named.source) == (family, "ConvolutionKernel")


@pytest.mark.parametrize(("name", "kernel", "read"), [
    # a name that calls sharp noise medium (D45f: the Mayo/AAPM challenge's sharp kernel): its noise
    # (median 0.582 /mm) overrules it
    ("ct-chest/lung-pet-ct-dx-A0002/B70f", "D45f", ("sharp", "measured noise", "medium")),
    # a smoother name on medium noise (0.345 /mm) is kept: by noise alone a smooth B30s reads medium
    ("ct-chest/lidc-idri-0003/ct", "B30f", ("smooth", "ConvolutionKernel", None)),
])
@pytest.mark.slow
def test_noise_that_reads_sharp_overrules_a_name_that_calls_it_smoother_and_nothing_else_does(
        data_dir: Path, name: str, kernel: str, read: tuple[str, str, str | None]) -> None:
    scan = load_scan(data_dir, name)
    family = series_family(kernel, scan.hu, scan.pixel_spacing_mm)
    assert (family.family, family.source, family.named) == read


def test_a_series_with_no_flat_soft_tissue_and_an_unknown_name_is_taken_as_sharp() -> None:
    air = np.full((4, 128, 128), -1000.0, np.float32)
    assert series_family(None, air, 0.7).family == "sharp"
    assert series_family(None, air, 0.7).source == "default"


@pytest.fixture(scope="module")
def conditioned() -> Denoiser:
    torch.manual_seed(0)
    network = ResidualDenoiser(Architecture(channels=8, layers=3, families=3))
    return Denoiser(network, Preprocessing(halo=6), "cpu", half_precision=False)


def _noisy(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (40 + 30 * rng.standard_normal((2, 64, 64))).astype(np.float32)


def test_a_conditioned_network_gives_each_family_its_own_result_and_refuses_an_unknown_one(conditioned: Denoiser) -> None:
    hu = _noisy()
    results = {family: conditioned(hu, (0.7, 0.7), family) for family in ("sharp", "medium", "smooth")}
    assert not np.allclose(results["sharp"], results["smooth"])
    assert not np.allclose(results["medium"], results["smooth"])
    with pytest.raises(ValueError, match="unknown kernel family 'lung'"):
        conditioned(hu, (0.7, 0.7), "lung")


def test_a_conditioned_network_without_a_family_measures_it_from_the_slices(data_dir: Path) -> None:
    scan = nps.sample(load_scan(data_dir, "ct-chest/lung-pet-ct-dx-A0002/B70f"), 12)
    torch.manual_seed(0)
    denoiser = Denoiser(ResidualDenoiser(Architecture(channels=8, layers=3, families=3)), Preprocessing(halo=6),
                        "cpu", half_precision=False)
    spacing = (scan.pixel_spacing_mm,) * 2
    assert series_family(None, scan.hu, scan.pixel_spacing_mm).family == "sharp"
    unnamed = denoiser(scan.hu, spacing)
    np.testing.assert_array_equal(unnamed, denoiser(scan.hu, spacing, "sharp"))
    assert not np.allclose(unnamed, denoiser(scan.hu, spacing, "smooth"))


def _weights(folder: Path, seed: int, family_weights: str = "") -> Denoiser:
    """A small untrained model folder (``family_weights``: its [family_weights] table's lines),
    and the same network loaded alone, to compare with."""
    torch.manual_seed(seed)
    arch = Architecture(channels=8, layers=3)
    write_weights(folder, ResidualDenoiser(arch), arch, Preprocessing(halo=6))
    alone = Denoiser.load(folder, "cpu", half_precision=False)
    if family_weights:
        with (folder / "params.toml").open("a") as params:
            params.write(f"\n[family_weights]\n{family_weights}\n")
    return alone


def test_a_family_with_weights_of_its_own_is_denoised_by_them_and_every_other_by_the_folders(
        tmp_path: Path, data_dir: Path) -> None:
    general = _weights(tmp_path, 0, 'sharp = "sharp"')
    sharp = _weights(tmp_path / "sharp", 1)
    folder = Denoiser.load(tmp_path, "cpu", half_precision=False)
    hu, spacing = _noisy(), (0.7, 0.7)
    np.testing.assert_array_equal(folder(hu, spacing, "sharp"), sharp(hu, spacing))
    np.testing.assert_array_equal(folder(hu, spacing, "medium"), general(hu, spacing))
    assert not np.allclose(sharp(hu, spacing), general(hu, spacing))
    assert (folder.weights_for("sharp"), folder.weights_for("smooth")) == ("sharp", ".")
    # no family given: a real B70f series is read as sharp by its own noise
    scan = nps.sample(load_scan(data_dir, "ct-chest/lung-pet-ct-dx-A0002/B70f"), 12)
    real_spacing = (scan.pixel_spacing_mm,) * 2
    np.testing.assert_array_equal(folder(scan.hu, real_spacing), sharp(scan.hu, real_spacing))


@pytest.mark.parametrize(("line", "refusal"), [
    ('sharp = "../elsewhere"', "[family_weights] sharp '../elsewhere' must lie inside the model folder"),
    ('medium = "medium"', "[family_weights] medium names 'medium', which is not a folder in it"),
    ('lung = "lung"', "family_weights.lung: unknown key"),
])
def test_family_weights_outside_the_folder_missing_or_for_an_unknown_family_are_refused_naming_them(
        tmp_path: Path, line: str, refusal: str) -> None:
    _weights(tmp_path, 0, line)
    with pytest.raises(ModelFolderError, match=re.escape(refusal)):
        Denoiser.load(tmp_path, "cpu")


@pytest.mark.parametrize("strength", [0.0, 0.25, 0.5, 1.0])
def test_strength_applies_that_share_of_the_models_change(strength: float) -> None:
    torch.manual_seed(0)
    network = ResidualDenoiser(Architecture(channels=8, layers=3))
    full = Denoiser(network, Preprocessing(halo=6), "cpu", half_precision=False)
    part = Denoiser(network, Preprocessing(halo=6), "cpu", half_precision=False, strength=strength)
    hu = _noisy(1)
    change, applied = full(hu, (0.7, 0.7)) - hu, part(hu, (0.7, 0.7)) - hu
    assert np.abs(change).mean() > 1.0  # the untrained network does change the image
    np.testing.assert_allclose(applied, strength * change, atol=1e-3)


def test_a_strength_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\], got 1.2"):
        Denoiser(torch.nn.Identity(), Preprocessing(), "cpu", strength=1.2)
