"""Half precision on a GPU, bfloat16 where a CPU computes in it natively, float32 otherwise:
the rule every shipped pipeline follows.

On a GPU memory bandwidth is the cost, and float16 (11-bit mantissa) stays well under the
pipelines' tolerances (under 1 HU for the denoiser). A CPU's convolutions are bound by arithmetic:
one with native bfloat16 (AVX512-BF16 or AMX) runs them several times faster in it, one without
gains nothing and runs float32. bfloat16 has an 8-bit mantissa, so a pipeline takes it on a CPU
only where it was measured that its results do not change (``cpu_bfloat16``; ct-denoise:
training/denoise/LOG.md, "Acceptance rules for the quality and bias targets").
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def native_cpu_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles); oneDNN
    emulates it elsewhere, more slowly than float32. Asked once: every forward pass asks."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast(cuda: bool, cpu_bfloat16: bool = False) -> contextlib.AbstractContextManager[object]:
    """float16 autocast on CUDA; on a CPU, bfloat16 autocast when asked for and native, else nothing."""
    if cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    if cpu_bfloat16 and native_cpu_bfloat16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
