"""How long ``ct-denoise`` takes for a 300-slice 512 x 512 CT, per stage, and its peak memory.

Targets: under 2 s on one H100 and under 30 s on 2 CPU cores (first set at 60 s, then tightened).
The series is made of the real slices of ../shared/data/ct-chest/cptac-luad-C3N-00247 repeated
at 300 evenly spaced positions (one valid volume for the loader); the pipeline runs exactly as a
worker runs it, on CUDA when a GPU is visible (float16) and on the CPU otherwise
(bfloat16 where the CPU has it natively). On such a CPU the same series runs again in float32
(``half_precision = false``), the peer the bfloat16 rule compares against
(training/denoise/LOG.md, "Acceptance rules for the quality and bias targets").

    python -m bench.denoise [--slices 300] [--device auto|cpu|cuda] [--repeat 2]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.ct_series import repeated_series
from bench.pipeline_timing import Timing, parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.denoise.pipeline import CTDenoise
from pipelines.precision import native_cpu_bfloat16


def main() -> None:
    args = parse_arguments(__doc__, slices=300)
    title = f"ct-denoise, {args.slices} slices of 512x512"
    with tempfile.TemporaryDirectory() as tmp:
        series = {"series": repeated_series(Path(tmp) / "in", args.slices)}

        def timed(options: dict[str, bool]) -> Timing:
            return time_pipeline(lambda: CTDenoise(PipelineSettings(name="ct-denoise", device=args.device,
                                                                    options=options)),
                                 series, Path(tmp), args.repeat)

        timing = timed({})
        print_timing(title, timing, args.json)
        if timing.device == "cpu" and native_cpu_bfloat16():
            float32 = timed({"half_precision": False})
            print_timing(f"{title}, float32 (half_precision = false)", float32)
            print(f"bfloat16 / float32: denoise {float32.stages['denoise'] / timing.stages['denoise']:.2f}x, "
                  f"total {float32.total_seconds / timing.total_seconds:.2f}x faster")


if __name__ == "__main__":
    main()
