"""Timing a shipped pipeline exactly as a worker runs it: model loaded once, then jobs.

Shared by ``bench.denoise``, ``bench.nodule``, ``bench.tumor`` and ``bench.bundles`` so that their
numbers mean the same thing: model load apart (paid once per worker), the best and the median of
``repeat`` warm runs with the best run's per-stage seconds, peak RSS of the process and, on CUDA,
peak GPU memory. ``--json FILE`` also writes them for ``bench/gpu_all.sh``'s table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.base import JobInput, Pipeline


@dataclass(frozen=True)
class Timing:
    device: str
    load_seconds: float
    rss_after_load_gib: float
    total_seconds: float
    stages: Mapping[str, float]
    summary: Mapping[str, Any]
    run_seconds: tuple[float, ...] = ()

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.run_seconds) if self.run_seconds else self.total_seconds


def parse_arguments(doc: str, slices: int | None = None, model: bool = False) -> argparse.Namespace:
    """The options every pipeline benchmark takes; torch's CPU threads are set from --threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if slices is not None:
        parser.add_argument("--slices", type=int, default=slices)
    if model:
        parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--repeat", type=int, default=2, help="runs after model load; the best is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the targets are for 2 cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the timing to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def time_pipeline(make: Callable[[], Pipeline], series: Mapping[str, Sequence[Path]], workdir: Path,
                  repeat: int) -> Timing:
    started = time.perf_counter()
    pipeline = make()
    load_seconds = time.perf_counter() - started
    rss_after_load = peak_rss_gib()
    runs = []
    for attempt in range(repeat):
        job = JobInput(series=series, output_dir=workdir / f"out{attempt}")
        started = time.perf_counter()
        result = pipeline.run(job)
        runs.append((time.perf_counter() - started, result.summary.to_stored()))
    total, summary = min(runs, key=lambda run: run[0])
    device = str(getattr(pipeline, "device", "cpu"))
    return Timing(device, load_seconds, rss_after_load, total, summary["seconds"], summary,
                  tuple(seconds for seconds, _ in runs))


def print_timing(title: str, timing: Timing, json_path: Path | None = None) -> None:
    device = timing.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{title} on {device} ({name})")
    print(f"  model load          {timing.load_seconds:7.2f} s (once per worker)")
    for stage, seconds in timing.stages.items():
        print(f"  {stage:<19} {seconds:7.2f} s")
    print(f"  total               {timing.total_seconds:7.2f} s (best; median of {len(timing.run_seconds)}: "
          f"{timing.median_seconds:.2f} s)")
    print(f"  peak RSS            {peak_rss_gib():7.2f} GiB (after model load: {timing.rss_after_load_gib:.2f} GiB)")
    if device.startswith("cuda"):
        print(f"  peak GPU memory     {torch.cuda.max_memory_allocated() / 2**30:7.2f} GiB")
    if json_path is not None:
        write_json(json_path, title, f"{device} ({name})", timing)


def write_json(path: Path, title: str, device: str, timing: Timing) -> None:
    """The figures ``bench/gpu_table.py`` puts in one table."""
    gpu_gib = torch.cuda.max_memory_allocated() / 2**30 if timing.device.startswith("cuda") else None
    path.write_text(json.dumps({
        "title": title, "device": device, "load_seconds": timing.load_seconds,
        "best_seconds": timing.total_seconds, "median_seconds": timing.median_seconds,
        "runs": list(timing.run_seconds), "stages": dict(timing.stages), "peak_rss_gib": peak_rss_gib(),
        "peak_gpu_gib": gpu_gib,
    }, indent=1))
