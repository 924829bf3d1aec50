"""The dose-reduction simulator and the denoiser's model-folder loading, on small inputs.

The simulator is what the shipped weights and their quality claims rest on, so it is checked
against scikit-image's radon/iradon and against physics it must reproduce: noise falls with
1/sqrt(photons), grows with attenuation, and on a real scan reconstructed with two kernels from
the same raw data, both reconstructions imply the same photon count.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import radon, resize

from pipelines.denoise.data import HELD_OUT, HELD_OUT_SHARP, load_scan
from pipelines.denoise.inference import Denoiser, Preprocessing
from pipelines.model_folder import ModelFolderError
from pipelines.denoise.model import Architecture, ResidualDenoiser
from pipelines.denoise.noise import (
    N_VIEWS, ParallelBeam, SliceScan, calibrate_photons, reconstruction_filter,
)
from pipelines.denoise.train import write_weights


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True).astype(np.float32)


def water_disk(radius_px: int, size: int = 128) -> np.ndarray:
    """A water cylinder in air, in HU."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.where(xx**2 + yy**2 <= radius_px**2, 0.0, -1000.0).astype(np.float32)


def test_projection_matches_skimage_radon(phantom):
    beam = ParallelBeam.for_size(128)
    mine = beam.project(torch.from_numpy(phantom)).numpy()
    theirs = radon(phantom, np.arange(N_VIEWS) * 180 / N_VIEWS, circle=False)  # (bins, views)
    centre = beam.n_det // 2
    mine = mine[:, centre - theirs.shape[0] // 2 : centre - theirs.shape[0] // 2 + theirs.shape[0]].T
    assert np.abs(mine - theirs).mean() < 0.01 * np.abs(theirs).mean()


def test_filtered_backprojection_inverts_projection(phantom):
    beam = ParallelBeam.for_size(128)
    image = beam.filtered_backprojection(beam.project(torch.from_numpy(phantom)), "ramp").numpy()
    inner = (slice(16, 112), slice(16, 112))
    assert np.abs(image - phantom)[inner].mean() < 0.05 * np.abs(phantom[inner]).mean()


def test_noise_falls_with_photons_and_grows_with_attenuation():
    generator = torch.Generator().manual_seed(0)
    centre = (slice(56, 72), slice(56, 72))
    big, small = SliceScan.of(water_disk(60), 0.7), SliceScan.of(water_disk(20), 0.7)
    std = lambda scan, photons: float(scan.acquisition_noise(photons, "hann", generator)[centre].std())  # noqa: E731
    ratio = std(big, 1e4) / std(big, 4e4)
    assert ratio == pytest.approx(2.0, rel=0.15)  # 4x the photons, half the noise
    assert std(big, 1e4) > 1.5 * std(small, 1e4)  # longer paths through water, fewer photons


def test_kernel_names_map_to_filter_textures():
    assert reconstruction_filter("B40f") == "hann"
    assert reconstruction_filter("B70f") == "ramp"
    assert reconstruction_filter("STANDARD") == "hann"
    assert reconstruction_filter(None) == "ramp"


def test_both_kernels_of_one_real_scan_imply_the_same_photon_count(data_dir):
    """B40f and B70f are two reconstructions of the same raw data: one I0 must explain both."""
    photons = {}
    for name in (HELD_OUT, HELD_OUT_SHARP):
        scan = load_scan(data_dir, name)
        photons[name] = calibrate_photons(
            list(scan.hu[8:24:4]), scan.pixel_spacing_mm, scan.filter_name, torch.Generator().manual_seed(1)
        )
    assert photons[HELD_OUT] == pytest.approx(photons[HELD_OUT_SHARP], rel=0.3)


def test_model_stays_within_the_cpu_budget():
    # 300 slices of 512x512 in under 60 s on 2 cores allows roughly 40k multiply-adds per pixel.
    assert Architecture().multiply_adds_per_pixel() <= 40_000


def test_tiles_give_the_same_result_as_whole_slices(tmp_path):
    torch.manual_seed(0)
    arch = Architecture(channels=8, layers=4)
    folder = tmp_path / "model"
    write_weights(folder, ResidualDenoiser(arch), arch, Preprocessing(halo=arch.layers * arch.downscale))
    hu = np.random.default_rng(0).normal(0, 300, (2, 130, 150)).astype(np.float32)
    whole = Denoiser.load(folder, "cpu")(hu)
    tiled = Denoiser.load(folder, "cpu", batch_pixels=64 * 64)(hu)
    np.testing.assert_allclose(tiled, whole, atol=1e-3)


def test_torchscript_and_state_dict_folders_agree(tmp_path):
    torch.manual_seed(0)
    arch = Architecture(channels=8, layers=3)
    network = ResidualDenoiser(arch).eval()
    write_weights(tmp_path / "state", network, arch, Preprocessing())
    scripted = tmp_path / "script"
    scripted.mkdir()
    torch.jit.script(network).save(str(scripted / "model.ts"))
    (scripted / "params.json").write_text('{"input": {"clip": [-1024, 3071], "offset": 0, "scale": 1000}}')
    hu = np.random.default_rng(1).normal(0, 200, (1, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(Denoiser.load(scripted, "cpu")(hu), Denoiser.load(tmp_path / "state", "cpu")(hu),
                               atol=1e-3)


def test_unusable_model_folders_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        Denoiser.load(tmp_path / "missing", "cpu")
    (tmp_path / "params.toml").write_text("[input]\nscale = 1000.0\n")
    with pytest.raises(ModelFolderError, match="neither model.ts"):
        Denoiser.load(tmp_path, "cpu")
    torch.save(ResidualDenoiser(Architecture(channels=8, layers=3)).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelFolderError, match="does not match"):
        Denoiser.load(tmp_path, "cpu")  # [model] missing: defaults describe a different network
