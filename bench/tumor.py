"""How long ``tumor-segmentation`` takes for a four-contrast 240 x 240 x 155 brain MR study, per stage.

Targets: under 90 s on 2 CPU cores, under 3 s on one H100. The study is
BraTS-GLI-00001 (../shared/data/mr-brain) written as four DICOM series of 155 slices at 1 mm
(``tests.support.mr_dicom``), with FLAIR, T2 and T1 each moved by a few millimetres and degrees so that
registration has real work; the pipeline runs exactly as a worker runs it, on CUDA when a GPU
is visible (mixed precision) and on the CPU otherwise.

    python -m bench.tumor [--device auto|cpu|cuda] [--repeat 2] [--threads 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.pipeline_timing import parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.tumor.pipeline import TumorSegmentation
from tests.support.mr_dicom import CLINICAL, Study, moved, write_series
from training.tumor.data import BRATS, load_images


def make_study(folder: Path) -> dict[str, list[Path]]:
    """The four BraTS contrasts as 1 mm DICOM series, all but T1c with the CLINICAL protocol's motion."""
    study = Study()
    series = {}
    for role, image in load_images(BRATS).items():
        _, rotation, shift = CLINICAL[role]
        series[role] = write_series(moved(image, rotation, shift)[0], role, folder / role, study)
    return series


def main() -> None:
    args = parse_arguments(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        timing = time_pipeline(
            lambda: TumorSegmentation(PipelineSettings(name="tumor-segmentation", device=args.device)),
            make_study(Path(tmp) / "in"), Path(tmp), args.repeat,
        )
    print_timing("tumor-segmentation, four contrasts of 240x240x155", timing, args.json)

if __name__ == "__main__":
    main()
