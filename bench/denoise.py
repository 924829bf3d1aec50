"""How long ``ct-denoise`` takes for a 300-slice 512 x 512 CT, per stage, and its peak memory.

Targets (issue 5): under 60 s on 2 CPU cores, under 2 s on one H100. The series is made of the
real slices of ../shared/data/ct-chest/cptac-luad-C3N-00247 repeated at 300 evenly spaced
positions (one valid volume for the loader); the pipeline runs exactly as a worker runs it, on
CUDA when a GPU is visible (mixed precision) and on the CPU otherwise.

    python -m bench.denoise [--slices 300] [--device auto|cpu|cuda] [--repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

from pipelines.base import JobInput, PipelineSettings
from pipelines.denoise.pipeline import CTDenoise

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-chest" / "cptac-luad-C3N-00247"


def make_series(folder: Path, slices: int) -> list[Path]:
    """``slices`` files of one new series: the real slices in turn, 1 mm apart along z."""
    sources = sorted((pydicom.dcmread(p) for p in SOURCE.glob("*.dcm")),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(slices):
        ds = copy.deepcopy(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        x, y, _ = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, -float(i)]
        ds.SliceLocation = -float(i)
        paths.append(folder / f"{i:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="runs after model load; the best is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_series(Path(tmp) / "in", args.slices)
        started = time.perf_counter()
        pipeline = CTDenoise(PipelineSettings(name="ct-denoise", device=args.device))
        load_s = time.perf_counter() - started
        rss_after_load = peak_rss_gib()
        runs = []
        for attempt in range(args.repeat):
            job = JobInput(series={"series": paths}, output_dir=Path(tmp) / f"out{attempt}")
            started = time.perf_counter()
            result = pipeline.run(job)
            runs.append((time.perf_counter() - started, result.summary["seconds"]))
        total, stages = min(runs)

    device = pipeline.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"ct-denoise, {args.slices} slices of 512x512 on {device} ({name})")
    print(f"  model load          {load_s:7.2f} s (once per worker)")
    for stage, seconds in stages.items():
        print(f"  {stage:<19} {seconds:7.2f} s")
    print(f"  total               {total:7.2f} s  ({args.slices / total:.1f} slices/s)")
    print(f"  peak RSS            {peak_rss_gib():7.2f} GiB (after model load: {rss_after_load:.2f} GiB)")
    if device.startswith("cuda"):
        print(f"  peak GPU memory     {torch.cuda.max_memory_allocated() / 2**30:7.2f} GiB")


if __name__ == "__main__":
    main()
