"""How long ``tumor-segmentation`` takes for the commonest clinical study: a skull-on T1c alone, thick slices.

Target: under 30 s on 2 CPU cores including brain extraction, peak RSS under 3 GB.
The study is TCGA-FG-6692's raw post-contrast T1 (../shared/data/mr-brain: 26 axial slices of
5.5 mm, 224 x 256 pixels of 0.9 mm, skull on) written as one DICOM series (``tests.support.mr_dicom``);
the pipeline runs exactly as a worker runs it, with the model the shipped folder picks for T1c
alone, on CUDA when a GPU is visible and on the CPU otherwise.

    python -m bench.tumor_clinical [--model DIR] [--device auto|cpu|cuda] [--repeat 2] [--threads 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.pipeline_timing import parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.tumor.pipeline import TumorSegmentation
from tests.support.mr_dicom import Study, write_series
from training.tumor.data import load_clinical


def main() -> None:
    args = parse_arguments(__doc__, model=True)
    settings = PipelineSettings(name="tumor-segmentation", device=args.device,
                                model=Path(args.model) if args.model else None)
    with tempfile.TemporaryDirectory() as tmp:
        series = {"t1c": write_series(load_clinical("t1c"), "t1c", Path(tmp) / "t1c", Study())}
        timing = time_pipeline(lambda: TumorSegmentation(settings), series, Path(tmp), args.repeat)
    print_timing("tumor-segmentation, skull-on T1c alone (26 slices of 5.5 mm)", timing)
    print(f"  model               {timing.summary.get('model')}, {timing.summary['volumes_ml']}")


if __name__ == "__main__":
    main()
