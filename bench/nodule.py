"""How long ``nodule-detection`` takes for a 300-slice 512 x 512 chest CT, per stage, and its peak memory.

Targets: under 15 s on 2 CPU cores (issue #64), under 2 s on one GPU (issue #67), peak RSS
under 3 GB for a 600-slice CT. The series is the real chest CT ../shared/data/ct-chest/cptac-luad-C3N-00247
(99 x 3 mm slices) resampled along z to ``--slices`` thinner slices over the same 297 mm, by
linear interpolation between neighbouring real slices: one real chest, as a thin-slice scanner
would deliver it. The pipeline runs exactly as a worker runs it (shipped weights, SEG + SR
written), on CUDA when a GPU is visible (mixed precision) and on the CPU otherwise.

    python -m bench.nodule [--slices 300] [--device auto|cpu|cuda] [--repeat 2] [--model DIR]

``--model``: a model folder instead of the shipped default, for example
``pipelines/nodule/scorer_weights`` (the candidate stage + scorer). CPU seconds of the process
(all threads) are printed beside the wall time, which a loaded machine stretches.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from bench.ct_series import save_slice, source_slices
from bench.pipeline_timing import parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.nodule.pipeline import NoduleDetection


def make_series(folder: Path, slices: int) -> list[Path]:
    """``slices`` files of one new series spanning the source's extent, interpolated along z."""
    sources = source_slices()
    stored = np.stack([d.pixel_array.astype(np.float32) for d in sources])
    z = np.array([float(d.ImagePositionPatient[2]) for d in sources])
    positions = np.linspace(z[0], z[-1], slices)
    study_uid, series_uid = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, position in enumerate(positions):
        below = int(np.clip(np.searchsorted(z, position, side="right") - 1, 0, len(z) - 2))
        weight = (position - z[below]) / (z[below + 1] - z[below])
        pixels = (1 - weight) * stored[below] + weight * stored[below + 1]
        ds = copy.deepcopy(sources[below])
        ds.PixelData = np.round(pixels).astype(sources[below].pixel_array.dtype).tobytes()
        ds.SliceThickness = round(float(positions[1] - positions[0]), 3)
        paths.append(save_slice(ds, folder, i, study_uid, series_uid, float(position)))
    return paths


def main() -> None:
    args = parse_arguments(__doc__, slices=300, model=True)
    with tempfile.TemporaryDirectory() as tmp:
        series = {"series": make_series(Path(tmp) / "in", args.slices)}
        cpu_started = time.process_time()
        timing = time_pipeline(
            lambda: NoduleDetection(PipelineSettings(name="nodule-detection", device=args.device, model=args.model)),
            series, Path(tmp), args.repeat,
        )
        cpu_seconds = (time.process_time() - cpu_started) / args.repeat
    found = len(timing.summary["nodules"])
    print_timing(f"nodule-detection ({args.model or 'shipped default'}), {args.slices} slices of 512x512; "
                 f"{found} nodule(s) reported", timing, args.json)
    print(f"  CPU seconds per run {cpu_seconds:7.2f} s (model load included, all threads)")


if __name__ == "__main__":
    main()
