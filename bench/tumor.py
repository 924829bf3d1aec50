"""How long ``tumor-segmentation`` takes for a four-contrast 240 x 240 x 155 brain MR study, per stage.

Targets (issue 6): under 90 s on 2 CPU cores, under 3 s on one H100. The study is
BraTS-GLI-00001 (../shared/data/mr-brain) written as four DICOM series of 155 slices at 1 mm
(``tests.mr_dicom``), with FLAIR, T2 and T1 each moved by a few millimetres and degrees so that
registration has real work; the pipeline runs exactly as a worker runs it, on CUDA when a GPU
is visible (mixed precision) and on the CPU otherwise.

    python -m bench.tumor [--device auto|cpu|cuda] [--repeat 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from pipelines.base import JobInput, PipelineSettings
from pipelines.tumor.data import BRATS, load_images
from pipelines.tumor.pipeline import TumorSegmentation
from tests.mr_dicom import CLINICAL, Study, moved, write_series


def make_study(folder: Path) -> dict[str, list[Path]]:
    """The four BraTS contrasts as 1 mm DICOM series, all but T1c with the CLINICAL protocol's motion."""
    study = Study()
    series = {}
    for role, image in load_images(BRATS).items():
        _, rotation, shift = CLINICAL[role]
        series[role] = write_series(moved(image, rotation, shift)[0], role, folder / role, study)
    return series


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="runs after model load; the best is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        series = make_study(Path(tmp) / "in")
        started = time.perf_counter()
        pipeline = TumorSegmentation(PipelineSettings(name="tumor-segmentation", device=args.device))
        load_s = time.perf_counter() - started
        runs = []
        for attempt in range(args.repeat):
            job = JobInput(series=series, output_dir=Path(tmp) / f"out{attempt}")
            started = time.perf_counter()
            result = pipeline.run(job)
            runs.append((time.perf_counter() - started, result.summary["seconds"]))
        total, stages = min(runs, key=lambda run: run[0])

    device = pipeline.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"tumor-segmentation, four contrasts of 240x240x155 on {device} ({name})")
    print(f"  model load          {load_s:7.2f} s (once per worker)")
    for stage, seconds in stages.items():
        print(f"  {stage:<19} {seconds:7.2f} s")
    print(f"  total               {total:7.2f} s")
    print(f"  peak RSS            {peak_rss_gib():7.2f} GiB")
    if device.startswith("cuda"):
        print(f"  peak GPU memory     {torch.cuda.max_memory_allocated() / 2**30:7.2f} GiB")


if __name__ == "__main__":
    main()
