"""Sharp weights on the held-out sharp scan under the shipped and the matched simulation.

    python -m training.denoise.beam_check --weights DIR --baseline pipelines/denoise/weights/sharp \
        --held-out FILE --out FILE.json

The ship rule of training/denoise/LOG.md ("Real against simulated sharp noise, ...") asks whether new
sharp weights keep +1.5 dB over the oracle Gaussian at quarter dose on the sharp simulation,
with the shipped beam (``noise.PARALLEL``) and the one matched to real sharp noise
(``noise.MATCHED_BEAM``). ``evaluate.kernel_report`` (no BM3D) on A0002's B70f for each, with the
shipped sharp weights on the same noise. ``--held-out`` reads a pack (``pack``) of that scan, so
this runs where only the repository is, as on a lent GPU; ``pack --held-out-sharp`` writes it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pipelines.denoise.inference import Denoiser
from training.denoise import pack
from training.denoise.evaluate import EVALUATION_SEED, evaluation_slices, kernel_report
from training.denoise.noise import MATCHED_BEAM, PARALLEL


def gains(report: dict[str, object]) -> dict[str, dict[str, float]]:
    """PSNR of the model and the baseline over the oracle Gaussian's, per dose (dB)."""
    out = {}
    for dose in ("quarter", "tenth"):
        rows = report[dose]
        assert isinstance(rows, dict)
        gaussian = next(v for k, v in rows.items() if k.startswith("oracle gaussian"))["psnr_db"]
        out[dose] = {name: round(rows[name]["psnr_db"] - gaussian, 3) for name in ("model", "baseline", "noisy")
                     if name in rows}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="a sharp model folder (one network)")
    parser.add_argument("--baseline", type=Path, help="the shipped sharp folder, on the same noise")
    parser.add_argument("--held-out", type=Path, required=True, help="pack of the held-out sharp scan")
    parser.add_argument("--only-matched", action="store_true", help="leave out the shipped simulation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    scan = evaluation_slices(pack.load(args.held_out)[0][0])
    model = Denoiser.load(args.weights, args.device)
    baseline = Denoiser.load(args.baseline, args.device) if args.baseline else None
    result = {}
    beams = {"shipped simulation": PARALLEL, "matched simulation": MATCHED_BEAM}
    if args.only_matched:
        del beams["shipped simulation"]
    for name, beam in beams.items():
        report = kernel_report(model, scan, EVALUATION_SEED, with_bm3d=False, baseline=baseline, beam=beam)
        result[name] = {"beam": asdict(beam), "gain_over_oracle_gaussian_db": gains(report), "report": report}
        print(name, json.dumps(result[name]["gain_over_oracle_gaussian_db"]), flush=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
