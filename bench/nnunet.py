"""How long an nnU-Net v2 3d_fullres folder takes in radnode on a brain MR, against nnUNetv2_predict.

The folder is the tests' (``tests/support/nnunet_folder.py``: planned by nnU-Net's own tools on three
BraTS-2015 cases, T1c + FLAIR, network built from its plans and saved as nnU-Net saves it), here
on BraTS's own 1 mm grid by default (``--shrink 3,4,2`` is the tests' small grid). The held-out
case goes once through ``nnUNetv2_predict`` on its NIfTI files (a fresh process: its start and
model load included) and once through radnode as two DICOM series (the pipeline's load included),
both on the CPU (or both on ``--device cuda``) with nnU-Net's defaults (step 0.5, Gaussian, mirroring on the checkpoint's axes);
the script prints both times and their ratio (tests/pipelines/bundles/test_nnunet.py checks that the label maps agree).

    python -m bench.nnunet [--shrink 1,1,1] [--threads 2] [--device cpu|cuda] [--repeat 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

import tests.support.nnunet_folder as nnunet_folder
from bench.pipeline_timing import time_pipeline, write_json
from pipelines.base import PipelineSettings
from pipelines.nnunet.pipeline import NnUNetSegmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shrink", default="1,1,1", help="source voxels averaged per axis x,y,z")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda: both nnUNetv2_predict and radnode")
    parser.add_argument("--repeat", type=int, default=1, help="radnode's warm runs after the pipeline's load")
    parser.add_argument("--json", type=Path, default=None, help="also write radnode's timing to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shrink = tuple(int(v) for v in args.shrink.split(","))
    peer: dict[str, float] = {}
    predict = nnunet_folder.predict

    def timed_predict(*positional: object, **named: object) -> None:
        start = time.perf_counter()
        predict(*positional, device=args.device, **named)  # type: ignore[arg-type]
        peer["seconds"] = time.perf_counter() - start

    nnunet_folder.predict = timed_predict  # the reference run is the peer's timed run
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as tmp:
        case = nnunet_folder.build_case(Path(tmp) / "root", folds=(0,), shrink=shrink)  # type: ignore[arg-type]
        series = nnunet_folder.to_dicom_series(case, Path(tmp) / "dicom")
        settings = PipelineSettings(name="nnunet-segmentation", model=case.folder, device=args.device,
                                    options={"channels": {"T1c": "t1c", "FLAIR": "flair"}})
        timing = time_pipeline(lambda: NnUNetSegmentation(settings),
                               {"t1c": series["T1c"], "flair": series["FLAIR"]}, Path(tmp), args.repeat)
        ours = timing.load_seconds + timing.run_seconds[0]  # as the peer: a cold start, then one case
        shape = sitk.ReadImage(str(case.reference)).GetSize()
    title = f"nnU-Net 3d_fullres, BraTS-2015 pat0001 T1c + FLAIR, grid {shape} (shrink {args.shrink})"
    print(f"{title}, {args.threads} CPU threads")
    print(f"  nnUNetv2_predict   {peer['seconds']:.1f} s (process start and model load included)")
    print(f"  radnode            {ours:.1f} s (pipeline load, DICOM in, SEG + SR + key images out); "
          f"stages {timing.stages}")
    print(f"  ratio radnode / nnUNetv2_predict {ours / peer['seconds']:.2f}")
    if args.repeat > 1:
        print(f"  radnode warm       {timing.median_seconds:.1f} s (median of {args.repeat} runs, model loaded)")
    print(f"  volumes (mL)       {timing.summary.get('volumes_ml')}")
    if args.json is not None:
        write_json(args.json, title, args.device, timing)


if __name__ == "__main__":
    main()
