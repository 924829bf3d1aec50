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
import tempfile
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from bench.pipeline_timing import print_timing, time_pipeline
from pipelines.base import PipelineSettings
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



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="runs after model load; the best is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        timing = time_pipeline(
            lambda: CTDenoise(PipelineSettings(name="ct-denoise", device=args.device)),
            {"series": make_series(Path(tmp) / "in", args.slices)}, Path(tmp), args.repeat,
        )
    print_timing(f"ct-denoise, {args.slices} slices of 512x512", timing)

if __name__ == "__main__":
    main()
