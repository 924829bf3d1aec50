"""Seconds per pipeline stage, reported in each job's summary and read by the benchmarks."""

from __future__ import annotations

import time


class StageClock:
    """Wall-clock laps: ``lap("load")`` records the time since the previous lap under that name."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now
