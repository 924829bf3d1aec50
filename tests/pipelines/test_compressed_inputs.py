"""Compressed inputs decode to the same pixels as their uncompressed originals, or say why not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.volume import VolumeError, decode_pixels, load_series
from tests.conftest import DATA

pytestmark = [pytest.mark.data]

WG04 = DATA / "transfer-syntaxes" / "nema-wg04"
LOSSLESS = sorted(
    p for folder in ("J2KR", "JLSL", "JPLL", "RLE") for p in (WG04 / folder).iterdir()
)
LOSSY_12_BIT = sorted((WG04 / "JPLY").iterdir())
GENERIC = DATA / "malformed" / "dicom2nifti-geometry" / "generic"


def reference_of(path: Path) -> Path:
    return WG04 / "REF" / f"{path.name.rsplit('_', 1)[0]}_UNC"


@pytest.mark.parametrize("path", LOSSLESS, ids=lambda p: p.name)
def test_lossless_file_decodes_to_the_reference_pixels(path: Path):
    np.testing.assert_array_equal(decode_pixels(path), decode_pixels(reference_of(path)))


@pytest.mark.parametrize("path", LOSSY_12_BIT, ids=lambda p: p.name)
def test_undecodable_file_names_its_transfer_syntax(path: Path):
    with pytest.raises(
        VolumeError,
        match=r"transfer syntax JPEG Extended \(Process 2 and 4\) "
        r"\(1\.2\.840\.10008\.1\.2\.4\.51\)",
    ):
        decode_pixels(path)


@pytest.mark.parametrize("codec", ["anatomical", "compressed", "compressed_j2k", "compressed_jpeg",
                                   "compressed_jpegls", "compressed_rle"])
def test_compressed_series_matches_its_ground_truth_at_every_world_point(codec: str):
    """dicom2nifti's NIfTI of the same series is an independent decoder and geometry peer."""
    volume = load_series(sorted((GENERIC / codec / "001").glob("*.dcm")))
    truth = sitk.ReadImage(str(GENERIC / codec / "001_ground_truth.nii.gz"))
    to_lps = np.array(truth.GetDirection()).reshape(3, 3) * np.array(truth.GetSpacing())

    kji = np.indices(volume.array.shape).reshape(3, -1).T
    lps = volume.kji_to_lps(kji)
    ijk = np.rint(np.linalg.solve(to_lps, (lps - truth.GetOrigin()).T).T).astype(int)
    expected = sitk.GetArrayViewFromImage(truth)[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    np.testing.assert_array_equal(volume.array.reshape(-1), expected)
