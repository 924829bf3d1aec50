"""How far and how fast ``tumor-segmentation`` registers contrasts, against known patient motion.

The T1, T2 and FLAIR of BraTS-GLI-00001 (reference T1c at 1 mm) and of the TCGA case (reference at
1.5 mm) are each moved by three rigid motions (up to 10 degrees and 12 mm), resliced to 3-4 mm
slices as a clinical 2D protocol would be and written as DICOM series; each is registered onto its
T1c as the pipeline does (``registration.register``). Printed per case: the largest and mean
distance between where the found and the known motion put the reference's brain points, and the
seconds it took.

    python -m bench.tumor_registration
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.tumor.registration import register
from pipelines.volume import load_series
from tests.support.mr_dicom import Study, moved, resliced, write_series
from training.tumor.data import BRATS, TCGA, Subject, load_images

#: (rotation about x, y, z in degrees, shift in mm): the CLINICAL protocol's FLAIR, the registration test's, a large one
MOTIONS = (((2.0, -1.5, 3.0), (3.0, -2.0, 2.5)), ((4.0, -3.0, 6.0), (6.0, -8.0, 4.0)),
           ((-8.0, 5.0, -10.0), (-12.0, 10.0, 6.0)))
CASES: tuple[tuple[str, Subject, float], ...] = (("BraTS-GLI-00001", BRATS, 1.0), ("TCGA", TCGA, 1.5))


def cases(folder: Path) -> Iterator[tuple[str, sitk.Image, sitk.Image, sitk.Transform]]:
    """(label, reference, moved contrast, the known motion) for every case, motion and contrast."""
    for name, subject, reference_mm in CASES:
        images = load_images(subject)
        study = Study()
        reference = load_series(write_series(resliced(images["t1c"], (reference_mm,) * 3), "t1c",
                                             folder / name / "t1c", study)).to_sitk()
        for role in ("t1", "t2", "flair"):
            for m, (rotation, shift) in enumerate(MOTIONS):
                slice_mm = 4.0 if m == 0 else 3.0
                image, truth = moved(resliced(images[role], (1.5, 1.5, slice_mm)), rotation, shift)
                moving = load_series(write_series(image, role, folder / name / f"{role}{m}", study)).to_sitk()
                yield f"{name} {role} motion {m + 1}", reference, moving, truth


def errors_mm(reference: sitk.Image, found: sitk.Transform, truth: sitk.Transform) -> tuple[float, float]:
    """Largest and mean distance between the found and the known motion of the brain's points."""
    brain = np.argwhere(sitk.GetArrayFromImage(reference) > 0)[::200, ::-1].astype(float)
    points = [reference.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in brain]
    distances = [np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points]
    return float(max(distances)), float(np.mean(distances))


def main() -> None:
    means = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, reference, moving, truth in cases(Path(tmp)):
            started = time.perf_counter()
            found = register(reference, moving)
            seconds = time.perf_counter() - started
            largest, mean = errors_mm(reference, found, truth)
            means.append(mean)
            print(f"{label:<32} max {largest:5.2f} mm  mean {mean:5.2f} mm  {seconds:5.1f} s", flush=True)
    print(f"mean of the means {np.mean(means):.2f} mm over {len(means)} cases")


if __name__ == "__main__":
    main()
