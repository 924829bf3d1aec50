"""How long ``ct-denoise`` takes for a 300-slice 512 x 512 CT, per stage, and its peak memory.

Targets (issue 5): under 60 s on 2 CPU cores, under 2 s on one H100. The series is made of the
real slices of ../shared/data/ct-chest/cptac-luad-C3N-00247 repeated at 300 evenly spaced
positions (one valid volume for the loader); the pipeline runs exactly as a worker runs it, on
CUDA when a GPU is visible (mixed precision) and on the CPU otherwise.

    python -m bench.denoise [--slices 300] [--device auto|cpu|cuda] [--repeat 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.ct_series import repeated_series
from bench.pipeline_timing import parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.denoise.pipeline import CTDenoise


def main() -> None:
    args = parse_arguments(__doc__, slices=300)
    with tempfile.TemporaryDirectory() as tmp:
        timing = time_pipeline(
            lambda: CTDenoise(PipelineSettings(name="ct-denoise", device=args.device)),
            {"series": repeated_series(Path(tmp) / "in", args.slices)}, Path(tmp), args.repeat,
        )
    print_timing(f"ct-denoise, {args.slices} slices of 512x512", timing)


if __name__ == "__main__":
    main()
