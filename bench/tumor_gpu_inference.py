"""Network inference time of the tumor model for a T1c-only clinical study, on a GPU or the CPU.

For a machine with torch and MONAI but neither SimpleITK nor the shared data (a lent GPU): the
input is the four-channel model-grid array that ``pipeline.segment`` builds for the skull-on
clinical TCGA-FG-6692 T1c alone (26 slices of 5.5 mm; written by
``python -m training.tumor.prepare``). ``Segmenter.probabilities`` is timed exactly as
the pipeline calls it (MONAI sliding windows, half precision on CUDA), after one warm-up call.
Brain extraction, resampling and writing are CPU work and are timed by ``bench/tumor.py``.

    python -m bench.tumor_gpu_inference --input clinical_t1c_input.npz --model pipelines/tumor/weights [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.tumor.inference import Segmenter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    x = np.load(args.input)["x"].astype(np.float32)
    results = {"input_shape": list(x.shape), "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
               else args.device, "torch": torch.__version__}
    for folder in args.model:
        segmenter = Segmenter.load(folder, args.device)
        segmenter.probabilities(x)  # warm-up: CUDA context, kernels
        seconds = []
        for _ in range(args.repeat):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            probabilities = segmenter.probabilities(x)
            seconds.append(round(time.perf_counter() - started, 4))
        results[str(folder)] = {"seconds": seconds, "wt_voxels_at_0.5": int((probabilities[1] >= 0.5).sum())}
        print(folder, seconds, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
