"""KD checkpoints without the frozen teacher's weights: it is rebuilt from its own checkpoint.

MMRazor's ``SingleTeacherDistill`` saves its whole state dict: the student
(``architecture.*``), the distiller and the teacher (``teacher.*``).  A frozen teacher
(``teacher_trainable=False`` with its norm layers in eval mode, MMRazor's defaults) never
changes: every checkpoint would carry a copy of the teacher checkpoint the run already
has, sha256-pinned (121 MB of the demo's 136 MB; ~95 MB per epoch for TSM-R50).
``FrozenTeacherCheckpointHook`` drops those keys when a checkpoint is saved, and puts the
teacher's weights back when one is loaded (resume, ``load_from``): the algorithm loaded
them from ``teacher_ckpt`` when it was built, so the state dict mmengine then loads is whole
(no missing keys) and the teacher is the teacher checkpoint's, bit for bit.  A checkpoint
that has the teacher's keys (saved before this hook) loads as it is.

    custom_hooks = [dict(type='FrozenTeacherCheckpointHook')]   # train_config.resolve adds it
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

if TYPE_CHECKING:
    from mmengine.runner import Runner
    from torch import nn

log = logging.getLogger(__name__)

TEACHER_PREFIX = 'teacher.'  # SingleTeacherDistill.teacher in its state dict


def frozen_teacher(model: nn.Module) -> nn.Module | None:
    """The teacher of a distillation algorithm whose teacher never changes during training;
    None for any other model (a trainable teacher, or norm layers that keep updating their
    running statistics, must be saved)."""
    algorithm = model.module if is_model_wrapper(model) else model
    teacher = getattr(algorithm, 'teacher', None)
    if teacher is None or getattr(algorithm, 'teacher_trainable', True):
        return None
    return teacher if getattr(algorithm, 'teacher_norm_eval', False) else None


def teacher_keys(state_dict: dict) -> list[str]:
    return [key for key in state_dict if key.startswith(TEACHER_PREFIX)]


@HOOKS.register_module(force=True)
class FrozenTeacherCheckpointHook(Hook):
    """Save KD checkpoints without the frozen teacher; restore it from the model on load."""

    priority = 'VERY_HIGH'  # before any other hook reads the checkpoint

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        if frozen_teacher(runner.model) is None:
            return
        state = checkpoint['state_dict']
        for key in teacher_keys(state):
            del state[key]
        checkpoint.setdefault('meta', {})['teacher_weights'] = 'teacher_ckpt'  # not in here

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        teacher = frozen_teacher(runner.model)
        state = checkpoint.get('state_dict')
        if teacher is None or state is None or teacher_keys(state):
            return
        # the teacher as built: loaded from the run's (sha256-pinned) teacher checkpoint
        state.update({TEACHER_PREFIX + k: v for k, v in teacher.state_dict().items()})
        log.info("teacher weights restored from the teacher checkpoint (not saved in KD's)")


# what train_config.resolve adds to a distillation config's custom_hooks (importing this
# module registers the hook)
FROZEN_TEACHER_HOOK = dict(type=FrozenTeacherCheckpointHook.__name__)
