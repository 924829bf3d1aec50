"""A healthy brain reads "no tumor": whole brains built from the tumor-free hemisphere of BraTS-2015 cases.

How the false-positive volume is measured: the tumor-free hemisphere of a case (no tumor label
within 5 mm of it; pat0005 and pat0001 qualify) joined to its mirror image (``training.tumor.healthy``),
T1c + FLAIR written as DICOM and run through the pipeline; every voxel it labels is a false
positive, and the pipeline reports only connected tumors of 1 mL or more (``min_tumor_ml``).
T1c + FLAIR is served by ``weights/brats2015/``, which labels no voxel of the held-out pat0001
brain (0.0 mL; pat0005's mirrored brain was among its tumor-free training brains, so it is a
regression check there, not a held-out one). T1c alone is not asserted: the earlier weights that
serve it call 61 and 64 mL of these healthy brains tumor (MODEL_CARD.md).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipelines.base import JobInput, PipelineSettings
from pipelines.tumor.pipeline import TumorSegmentation
from tests.support.cpu_share import CPU_THREADS
from tests.support.mr_dicom import Study, write_series
from tests.support.peers import dciodvfy
from training.tumor.data import load_brats2015
from training.tumor.healthy import mirrored_healthy

pytestmark = [pytest.mark.peers, pytest.mark.slow]

#: The bound on false-positive tumor volume per healthy brain: a healthy brain must read "no tumor".
MAX_FALSE_POSITIVE_ML = 1.0


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(CPU_THREADS)
    return TumorSegmentation(PipelineSettings(name="tumor-segmentation", device="cpu"))


def _scanner_units(image: sitk.Image) -> sitk.Image:
    """A z-scored BraTS image in positive integer-like units, as a scanner would store it (background constant)."""
    return image * 100.0 + 1000.0


@pytest.mark.parametrize("case", ["train/brats_2013_pat0005_1", "test/brats_2013_pat0001_1"])
def test_a_healthy_brain_reads_no_tumor(pipeline, data_dir, tmp_path, case):
    images = load_brats2015(case, data_dir)
    healthy = mirrored_healthy({role: images[role] for role in ("t1c", "flair")}, images["labels"])
    assert healthy is not None, f"{case} no longer has a tumor-free hemisphere"
    study = Study()
    series = {role: write_series(_scanner_units(image), role, tmp_path / role, study)
              for role, image in healthy.items()}
    result = pipeline.run(JobInput(series=series, output_dir=tmp_path / "out"))
    print(case, result.summary.volumes_ml, result.summary.brain_ml)
    false_positive_ml = sum(result.summary.volumes_ml.values())
    assert false_positive_ml < MAX_FALSE_POSITIVE_ML
    assert not result.summary.tumor_found
    report = next(ds for ds in map(pydicom.dcmread, result.outputs) if ds.Modality == "SR")
    assert report.Modality == "SR" and "none detected" in report.SeriesDescription
    # the report, the summary image and their KOS, nothing else: no SEG, no key image of a lesion, no GSPS
    assert sorted(pydicom.dcmread(p, stop_before_pixels=True).Modality for p in result.outputs) == ["KO", "OT", "SR"]
    for path in result.outputs:
        assert not dciodvfy(path).errors
    assert np.isclose(result.summary.brain_ml, (sitk.GetArrayFromImage(images["brainmask"]) > 0).sum() / 1000,
                      rtol=0.03)
