"""GPU timings without DICOM: the denoiser on a 300 x 512 x 512 volume, and the model zoo's nodule bundle.

For a machine that has torch (and monai) but neither the shared data nor a DICOM stack, such as
a lent GPU: the volume is made from the training pack's real CPTAC slices
(``python -m training.denoise.pack``), tiled or interpolated to 300 slices.

    python -m bench.gpu_timing --pack training.npz --weights pipelines/denoise/weights \\
        [--bundle ../shared/data/monai-bundles/lung_nodule_ct_detection] [--device cuda] [--repeat 3] \\
        [--slices 300] [--out timings.json]

Measured on a lent H100 (2026-11-23, ``--repeat 2``): ct-denoise 0.48-0.59 s in float16 and
0.57-0.63 s in float32; lung_nodule_ct_detection 4.1-4.7 s per detect with AMP (3.1-3.5 s of it
the bundle's preprocessing on 16 CPU threads; resampled input 411 x 411 x 236).

1. ``ct-denoise``: ``inference.Denoiser`` exactly as the pipeline calls it (float32 HU in host
   memory in, denoised HU in host memory out, mean preservation included), with float16
   autocast (the pipeline's default on CUDA) and without. One warm-up call first.
2. ``lung_nodule_ct_detection`` (when ``--bundle`` is given): seeded random weights of its
   network, ``BundleDetector.detect`` as the nodule pipeline calls it (the bundle's
   preprocessing, its RetinaNetInferer with the bundle's ``amp``, its postprocessing) on the same
   real slices interpolated to 300 slices over the scan's extent (294 mm in the 5 mm pack; as
   ``bench.bundles``' series);
   the preprocessing alone is timed as well. Boxes mean nothing with random weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.denoise.inference import Denoiser
from pipelines.torchvision_parts import provide_if_missing
from training.denoise import pack

#: The pack's scan the volumes are made from (real chest CT, 0.56 mm pixels, 3 mm slices).
SOURCE_SCAN = "ct-chest/cptac-luad-C3N-00247"
#: Its kernel family (ConvolutionKernel B70f), which the pipeline passes, so the folder's sharp
#: weights run and no time goes into measuring the family from the noise.
SOURCE_FAMILY = "sharp"


def source_slices(pack_file: Path) -> tuple[np.ndarray, float, float]:
    """The source scan's slices in the pack, their pixel spacing and their slice spacing (mm)."""
    scans, _ = pack.load(pack_file)
    scan = next(s for s in scans if s.name == SOURCE_SCAN)
    stride = max(1, round(99 / len(scan.hu)))  # the pack keeps every n-th of its 99 slices
    return scan.hu, scan.pixel_spacing_mm, float(scan.slice_thickness_mm) * stride


def timed(call, repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after one warm-up call, the GPU synchronised."""
    call()
    seconds = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def denoise_timing(weights: Path, slices: np.ndarray, spacing_mm: float, device: str, repeat: int,
                   count: int) -> dict:
    volume = np.ascontiguousarray(np.resize(slices, (count, *slices.shape[1:])), dtype=np.float32)
    report = {"volume": list(volume.shape)}
    for half in (True, False):
        denoiser = Denoiser.load(weights, device, half_precision=half)
        seconds = timed(lambda d=denoiser: d(volume, (spacing_mm, spacing_mm), SOURCE_FAMILY), repeat)
        report["float16 autocast" if half else "float32"] = {"seconds": [round(s, 3) for s in seconds]}
        print(f"ct-denoise {volume.shape} on {device}, {'float16' if half else 'float32'}: "
              + ", ".join(f"{s:.3f}" for s in seconds) + " s", flush=True)
    return report


def bundle_timing(bundle_dir: Path, slices: np.ndarray, spacing_mm: float, slice_mm: float, device: str,
                  repeat: int, count: int) -> dict:
    from pipelines.bundle import read_bundle
    from pipelines.bundle_runner import affine_lps
    from pipelines.nodule.bundle_detection import BundleDetector
    from pipelines.volume import Volume

    z = np.arange(len(slices)) * slice_mm
    positions = np.linspace(0, z[-1], count)
    below = np.clip(np.searchsorted(z, positions, side="right") - 1, 0, len(z) - 2)
    weight = ((positions - z[below]) / slice_mm).astype(np.float32)[:, None, None]
    array = np.ascontiguousarray((1 - weight) * slices[below] + weight * slices[below + 1], dtype=np.float32)
    volume = Volume(array=array, spacing=(spacing_mm, spacing_mm, float(positions[1])),
                    origin=np.array([-150.0, -150.0, -300.0]), direction=np.eye(3), sources=(), frames=(),
                    frame_of_reference_uid=None, modality="CT")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        shutil.copytree(bundle_dir, folder)
        (folder / "models").mkdir(exist_ok=True)
        torch.manual_seed(0)
        torch.save(read_bundle(folder).build("network_def").state_dict(), folder / "models" / "model.pt")
        detector = BundleDetector.load(folder, device, report_threshold=0.99)
        runner = detector.runner
        affine = affine_lps(volume.origin, np.asarray(volume.spacing), volume.direction)
        image = lambda: runner.loader_image(np.transpose(volume.array, (2, 1, 0)), affine)  # noqa: E731
        pre = timed(lambda: runner.preprocessing({runner.input_key: image()}), repeat)
        boxes: list = []
        total = timed(lambda: boxes.append(len(detector.detect(volume))), repeat)
        shape = list(runner.preprocessing({runner.input_key: image()})[runner.input_key].shape)
    report = {"volume": list(array.shape), "resampled_input": shape, "amp": runner.amp,
              "preprocessing_seconds": [round(s, 3) for s in pre], "detect_seconds": [round(s, 3) for s in total],
              "boxes": boxes[-1]}
    print(f"lung_nodule_ct_detection on {device} (amp {runner.amp}), input {shape}: preprocessing "
          + ", ".join(f"{s:.2f}" for s in pre) + " s; whole detect " + ", ".join(f"{s:.2f}" for s in total)
          + f" s; {boxes[-1]} boxes (random weights)", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300, help="slices of 512 x 512 in each volume")
    parser.add_argument("--out", type=Path, help="JSON to write the timings to")
    args = parser.parse_args(argv)
    slices, spacing_mm, slice_mm = source_slices(args.pack)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__,
              "ct-denoise": denoise_timing(args.weights, slices, spacing_mm, args.device, args.repeat, args.slices)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.bundle:
        provide_if_missing()
        report["lung_nodule_ct_detection"] = bundle_timing(args.bundle, slices, spacing_mm, slice_mm, args.device,
                                                           args.repeat, args.slices)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
