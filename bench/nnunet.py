"""How long an nnU-Net v2 3d_fullres folder takes in radnode on a brain MR, against nnUNetv2_predict.

The folder is the tests' (``tests/nnunet_folder.py``: planned by nnU-Net's own tools on three
BraTS-2015 cases, T1c + FLAIR, network built from its plans and saved as nnU-Net saves it), here
on BraTS's own 1 mm grid by default (``--shrink 3,4,2`` is the tests' small grid). The held-out
case goes once through ``nnUNetv2_predict`` on its NIfTI files (a fresh process: its start and
model load included) and once through radnode as two DICOM series (the pipeline's load included),
both on the CPU with nnU-Net's defaults (step 0.5, Gaussian, mirroring on the checkpoint's axes);
the script prints both times and their ratio (tests/test_nnunet.py checks that the label maps agree).

    python -m bench.nnunet [--shrink 1,1,1] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

import tests.nnunet_folder as nnunet_folder
from pipelines.base import JobInput, PipelineSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shrink", default="1,1,1", help="source voxels averaged per axis x,y,z")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shrink = tuple(int(v) for v in args.shrink.split(","))
    peer: dict[str, float] = {}
    predict = nnunet_folder.predict

    def timed_predict(*positional: object, **named: object) -> None:
        start = time.perf_counter()
        predict(*positional, **named)  # type: ignore[arg-type]
        peer["seconds"] = time.perf_counter() - start

    nnunet_folder.predict = timed_predict  # the reference run is the peer's timed run
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as tmp:
        case = nnunet_folder.build_case(Path(tmp) / "root", folds=(0,), shrink=shrink)  # type: ignore[arg-type]
        series = nnunet_folder.to_dicom_series(case, Path(tmp) / "dicom")
        start = time.perf_counter()
        from pipelines.nnunet.pipeline import NnUNetSegmentation

        pipeline = NnUNetSegmentation(PipelineSettings(name="nnunet-segmentation", model=case.folder, device="cpu",
                                                       options={"channels": {"T1c": "t1c", "FLAIR": "flair"}}))
        result = pipeline.run(JobInput(series={"t1c": series["T1c"], "flair": series["FLAIR"]},
                                       output_dir=Path(tmp) / "out"))
        ours = time.perf_counter() - start
        reference = sitk.ReadImage(str(case.reference))
        shape = reference.GetSize()
    print(f"nnU-Net 3d_fullres, BraTS-2015 pat0001 T1c + FLAIR, grid {shape} (shrink {args.shrink}), "
          f"{args.threads} CPU threads")
    print(f"  nnUNetv2_predict   {peer['seconds']:.1f} s (process start and model load included)")
    print(f"  radnode            {ours:.1f} s (pipeline load, DICOM in, SEG + SR + key images out); "
          f"stages {result.summary.seconds}")
    print(f"  ratio radnode / nnUNetv2_predict {ours / peer['seconds']:.2f}")
    print(f"  volumes (mL)       {result.summary.volumes_ml}")


if __name__ == "__main__":
    main()
