"""The teacher precisions a fast teacher runs in (video_kd.distill.fast_teacher).

Apart from the algorithm so that ``TrainOptions`` (and ``video-kd --help``) can list
them without importing MMRazor's models, or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    import torch

# name -> torch's dtype of it (by name: torch is imported only to autocast; None: fp32)
PRECISIONS = {'fp32': None, 'bf16': 'bfloat16', 'fp16': 'float16'}
# CPU flags (Linux /proc/cpuinfo) of instructions that multiply bf16 natively: there a bf16
# teacher makes the tiny KD step 0.86x (benchmarks/README.md, KD step overhead); elsewhere
# oneDNN emulates bf16, not expected to be faster than fp32
NATIVE_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_has_native_bf16(cpuinfo: Path = Path('/proc/cpuinfo')) -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), from its flags; False
    where they cannot be read (not Linux).  Read without torch: ``--help`` uses it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith('flags')), '')
    return any(flag in flags.split() for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise UserError(
            f'unknown teacher precision {precision!r}: choose one of {", ".join(PRECISIONS)}'
        )
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    import torch  # deferred: torch (seconds), not needed to list the precisions

    return getattr(torch, dtype)
