"""A per-case self-consistency score: how far the model agrees with itself on this study.

The held-out Dice of a model folder is a median over a few scans; a reader needs to know
whether *this* case is one the model gets wrong. Two scores were measured against the cases'
tumor-core Dice (``training/quality_eval.py``; the rule and the numbers are in the LOG, "Issue #65
item 5"), both on the model grid, inside the brain, on the tumor-core channel at the folder's own
TC threshold ``t``:

- ``crispness``: no added pass. A model unsure where the core ends spreads probability it does
  not commit to: 2 sum(p over p >= t) / (sum(p) + count(p >= t)).
- ``mirror_agreement``: one added pass. The channels mirrored left-right, run again and mirrored
  back: Dice of the two passes' cores. A brain is nearly symmetric; a network that finds a
  different core in the mirror image is guessing.

Each is 1.0 when nothing reaches ``t`` (the passes agree: no core). A case under
``LOW_CONFIDENCE_BELOW`` is reported "low confidence".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.tumor.inference import Segmenter
from pipelines.tumor.preprocess import dice

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


def mirror_agreement(segmenter: Segmenter, channels: np.ndarray, probabilities: np.ndarray,
                     inside: np.ndarray, threshold: float) -> float:
    """Dice of the tumor core of ``probabilities`` and that of the left-right mirrored pass
    (``channels`` are (C, z, y, x) in LPS order: x is left-right)."""
    mirrored = segmenter.probabilities(np.ascontiguousarray(channels[..., ::-1]))[..., ::-1]
    return dice((probabilities[CORE] >= threshold) & inside, (mirrored[CORE] >= threshold) & inside)


#: The score the node reports and its threshold, chosen by the LOG's rule on the calibration
#: cases before the held-out ones were scored ("Issue #65 item 5").
SCORE = "mirror_agreement"
LOW_CONFIDENCE_BELOW = 0.0
MEANING = ""
TRACK_RECORD = ""


def assess(segmenter: Segmenter, channels: np.ndarray, probabilities: np.ndarray, inside: np.ndarray) -> Quality:
    """This case's ``SCORE`` against ``LOW_CONFIDENCE_BELOW``."""
    threshold = segmenter.format.threshold[CORE]
    if SCORE == "crispness":
        score = crispness(probabilities, inside, threshold)
    else:
        score = mirror_agreement(segmenter, channels, probabilities, inside, threshold)
    return Quality(round(score, 3), LOW_CONFIDENCE_BELOW)
