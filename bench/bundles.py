"""How long the model zoo's ``lung_nodule_ct_detection`` bundle takes in radnode on a 300-slice CT.

The bundle (../shared/data/monai-bundles, v0.6.8) is copied to a temporary folder and given
seeded random weights of its own network (ResNet50-FPN RetinaNet, built from its
``network_def``; the published weights cannot be downloaded here), then run exactly as a worker
runs it: its preprocessing (Spacingd to 0.703125 x 0.703125 x 1.25 mm), its RetinaNetInferer
(one pass when the grid fits its 512 x 512 x 192 window, sliding windows otherwise), its
postprocessing, and radnode's SEG + SR. The series is bench.nodule's: the real chest CT
cptac-luad-C3N-00247 interpolated to ``--slices`` slices over the same 297 mm. The time depends
on the network and the grid, not on the weights; the number of reported boxes means nothing
with random weights (``--report-threshold`` keeps the SEG small).

The bundle's published figure: 7.3 s on an A100 with AMP. On CPU, expect minutes and GBs.

    python -m bench.bundles [--slices 300] [--device auto|cpu|cuda] [--repeat 1] [--threads 2] [--report-threshold 0.99]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bench.nodule import make_series
from bench.pipeline_timing import parse_arguments, print_timing, time_pipeline
from pipelines.base import PipelineSettings
from pipelines.bundle import read_bundle
from pipelines.nodule.pipeline import NoduleDetection
from pipelines.torchvision_parts import provide_if_missing
from training.data_folder import DATA_ROOT

BUNDLE = DATA_ROOT / "monai-bundles" / "lung_nodule_ct_detection"


def bundle_with_random_weights(folder: Path) -> Path:
    shutil.copytree(BUNDLE, folder)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)
    (folder / "models").mkdir(exist_ok=True)
    provide_if_missing()  # as the pipeline does: torchvision's two helpers where its wheel cannot load
    torch.manual_seed(0)
    torch.save(read_bundle(folder).build("network_def").state_dict(), folder / "models" / "model.pt")
    return folder


def main() -> None:
    sys.argv, threshold = _threshold_argument(sys.argv)
    args = parse_arguments(__doc__, slices=300)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = bundle_with_random_weights(Path(tmp) / "bundle")
        series = {"series": make_series(Path(tmp) / "in", args.slices)}
        timing = time_pipeline(
            lambda: NoduleDetection(PipelineSettings(name="nodule-detection", model=bundle, device=args.device,
                                                     options={"report_threshold": threshold})),
            series, Path(tmp), args.repeat,
        )
    print_timing(f"lung_nodule_ct_detection 0.6.8 (random weights), {args.slices} slices of 512x512; "
                 f"{timing.summary['candidates']} boxes", timing, args.json)


def _threshold_argument(argv: list[str]) -> tuple[list[str], float]:
    """``--report-threshold X`` (default 0.99) taken out before the shared options are parsed."""
    if "--report-threshold" in argv:
        at = argv.index("--report-threshold")
        return argv[:at] + argv[at + 2:], float(argv[at + 1])
    return argv, 0.99


if __name__ == "__main__":
    main()
