"""The teacher precisions a fast teacher runs in (video_kd.distill.fast_teacher).

Apart from the algorithm so that ``TrainOptions`` (and ``video-kd --help``) can list
them without importing MMRazor's models.
"""

from __future__ import annotations

import torch

from video_kd.core.errors import UserError

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise UserError(
            f'unknown teacher precision {precision!r}: choose one of {", ".join(PRECISIONS)}'
        )
    return PRECISIONS[precision]
