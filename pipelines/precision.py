"""Half precision on a GPU, full precision on a CPU: the rule every shipped pipeline follows.

On a GPU memory bandwidth is the cost, and float16 (11-bit mantissa) stays well under the
pipelines' tolerances (under 1 HU for the denoiser); a CPU gains nothing from it and runs float32.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(cuda: bool) -> contextlib.AbstractContextManager[object]:
    """float16 autocast on CUDA, nothing on a CPU."""
    if cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
