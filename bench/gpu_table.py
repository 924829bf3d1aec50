"""One table of ``bench/gpu_all.sh``'s timings, with issue #67's GPU targets beside the shipped pipelines.

    python3 -m bench.gpu_table DIR    # the *.json files the benches wrote with --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Warm seconds per case on one GPU (issue #67); the bundle and the nnU-Net folder have none.
TARGETS = {"ct-denoise": 1.0, "nodule-detection": 2.0, "tumor-segmentation": 3.0}
ORDER = ("ct-denoise", "nodule-detection", "tumor-segmentation", "lung-bundle", "nnunet")


def row(name: str, figures: dict) -> str:
    target = TARGETS.get(name)
    verdict = "" if target is None else (f"<= {target:g} s: " + ("met" if figures["median_seconds"] <= target
                                                                   else "not met"))
    gpu = figures.get("peak_gpu_gib")
    stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in figures["stages"].items())
    return (f"| {name} | {figures['title']} | {figures['median_seconds']:.2f} | {figures['best_seconds']:.2f} | "
            f"{figures['load_seconds']:.1f} | {'-' if gpu is None else f'{gpu:.1f}'} | {verdict} | {stages} |")


def table(folder: Path) -> str:
    found = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    devices = sorted({figures["device"] for figures in found.values()})
    lines = [f"Device: {', '.join(devices) or 'none'}; warm runs after the model's load.", "",
             "| pipeline | input | median s | best s | model load s | peak GPU GiB | target | stages (best run, s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        lines.append(row(name, found[name]) if name in found else f"| {name} | not run (its log says why) |||||||")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
