"""The teacher precisions a fast teacher runs in (video_kd.distill.fast_teacher).

Apart from the algorithm so that ``TrainOptions`` (and ``video-kd --help``) can list
them without importing MMRazor's models, or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    import torch

# name -> torch's dtype of it (by name: torch is imported only to autocast; None: fp32)
PRECISIONS = {'fp32': None, 'bf16': 'bfloat16', 'fp16': 'float16'}


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
