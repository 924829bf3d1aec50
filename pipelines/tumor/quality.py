"""A per-case self-consistency score: how far the model agrees with itself on this study.

A folder's held-out Dice is a median over a few scans; a reader needs to know whether *this* case
is one the model gets wrong. ``crispness`` is served: the soft Dice between the tumor-core
probabilities and their own thresholded core inside the brain (1.0 when nothing reaches the
threshold), since a model unsure where the core ends spreads probability it does not commit to. It
was the cheaper of two scores that separated poor cases (the evaluation: docs/tumor.md). A case
under ``LOW_CONFIDENCE_BELOW`` is reported "low confidence".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The tumor-core channel of the network's outputs (TC, WT, ET).
CORE = 0
#: How a case under the threshold is marked (SR, series descriptions, key-image banner).
LOW_CONFIDENCE = "LOW CONFIDENCE"


@dataclass(frozen=True)
class Quality:
    """One case's self-consistency score and whether it is under the threshold."""

    score: float
    threshold: float

    @property
    def low_confidence(self) -> bool:
        return self.score < self.threshold

    @property
    def explanation(self) -> str:
        """The score and the threshold in words, and what a score under it has meant."""
        verdict = "under" if self.low_confidence else "at or above"
        return (f"self-consistency {self.score:.2f}, {verdict} {self.threshold:.2f} ({MEANING}). {TRACK_RECORD}")


def crispness(probabilities: np.ndarray, inside: np.ndarray, threshold: float) -> float:
    """Soft Dice between the tumor-core probabilities and their own thresholded core, in the brain."""
    p = probabilities[CORE][inside]
    core = p >= threshold
    total = float(p.sum()) + float(core.sum())
    return 1.0 if not core.any() else 2.0 * float(p[core].sum()) / total


#: The threshold on ``crispness``, fixed by the LOG's rule on the 38 calibration cases before the
#: held-out ones were scored ("Issue #65 item 5": AUROC 0.846 for tumor-core Dice < 0.5).
LOW_CONFIDENCE_BELOW = 0.7089
MEANING = "how sharply the model commits to the tumor core it outlines"
TRACK_RECORD = ("Of 31 calibration scans under it, 29 had a tumor-core Dice under 0.5 (median 0.14); "
                "of 7 at or above it, 5 had 0.5 or more (median 0.61).")


def assess(thresholds: Sequence[float], probabilities: np.ndarray, inside: np.ndarray) -> Quality:
    """This case's ``crispness`` against ``LOW_CONFIDENCE_BELOW``: no added pass (the LOG's rule
    chose it over ``mirror_agreement``, which doubles the inference, as both reached AUROC 0.8)."""
    return Quality(round(crispness(probabilities, inside, thresholds[CORE]), 3), LOW_CONFIDENCE_BELOW)
