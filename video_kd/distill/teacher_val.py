"""Validation that scores a frozen teacher once per process, not at every validation.

MMRazor's ``SingleTeacherDistillValLoop`` (the KD configs' ``val_cfg``, as the seed's) runs
the student over the val set and then the teacher, at every validation.  A frozen teacher
(``teacher_trainable=False`` with its norm layers in eval mode, MMRazor's defaults; see
``video_kd.distill.frozen_teacher``) never changes, so its score never does either: on
Kinetics-400 (~20k val videos, a Swin teacher) the second pass doubles every validation
for the same numbers.  ``FrozenTeacherDistillValLoop`` runs it at the first validation of
the process (a resumed run scores it once again) and reports those metrics, under the same
``teacher.*`` keys, at every later one: logs, ``scalars.json`` and TensorBoard curves are
unchanged.  A teacher that can change (trainable, or norm layers that update their
statistics) is scored every time, by MMRazor's own loop.

Distributed validation: every rank runs the first teacher pass, and mmengine's evaluator
collects the ranks' results and broadcasts rank 0's metrics, so the kept metrics are the
same on every rank; every rank then skips the same later passes.

``train_config.resolve`` swaps it in for MMRazor's loop; the config key
``score_frozen_teacher_once=False`` (``--cfg-options``) keeps MMRazor's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from mmengine.config import Config
from mmrazor.engine import SingleTeacherDistillValLoop
from mmrazor.registry import LOOPS

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.distill.frozen_teacher import frozen_teacher

# the config key that turns the swap off (train_config.resolve reads it; default on)
SWITCH_KEY = 'score_frozen_teacher_once'
MMRAZOR_LOOP = 'SingleTeacherDistillValLoop'
TEACHER_PREFIX = 'teacher.'  # MMRazor's loop names the teacher's metrics so


@LOOPS.register_module(force=True)
class FrozenTeacherDistillValLoop(SingleTeacherDistillValLoop):
    """MMRazor's distillation val loop; a frozen teacher's metrics kept from its first pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_metrics: dict[str, Any] | None = None

    def run(self) -> dict | None:
        """Launch validation: MMRazor's hooks and passes, the teacher's only when needed."""
        if frozen_teacher(self.runner.model) is None:  # it may change: score it every time
            self.teacher_metrics = None
            return super().run()
        self.runner.call_hook('before_val')
        self.runner.call_hook('before_val_epoch')
        self.runner.model.eval()
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        metrics = self.evaluator.evaluate(len(self.dataloader.dataset))  # the student's
        skipped = self.teacher_metrics is not None
        metrics.update(self.frozen_teacher_metrics())
        if skipped:
            self.draw_as_the_teacher_pass_would()
        self.runner.call_hook('after_val_epoch', metrics=metrics)
        self.runner.call_hook('after_val')
        return metrics

    def frozen_teacher_metrics(self) -> dict[str, Any]:
        """The teacher's ``teacher.*`` metrics: its val pass the first time, then a copy."""
        if self.teacher_metrics is None:
            self.runner.call_hook('before_val_epoch')  # as MMRazor's loop does before it
            for idx, data_batch in enumerate(self.dataloader):
                self.run_iter_teacher(idx, data_batch)
            scores = self.evaluator.evaluate(len(self.dataloader.dataset))
            self.teacher_metrics = {TEACHER_PREFIX + key: value for key, value in scores.items()}
            self.runner.logger.info(
                'frozen teacher scored once: later validations report these metrics (%s=False '
                'scores it every time)',
                SWITCH_KEY,
            )
        return copy.deepcopy(self.teacher_metrics)  # hooks may change the dict they get

    def draw_as_the_teacher_pass_would(self) -> None:
        """Draw what the skipped pass would have drawn from the global RNG, so training after
        this validation sees the same random stream as with MMRazor's loop (same dropout,
        same augmentations: the same student; measured, one draw fewer per epoch changed the
        demo's KD student from 85% to 55%).  A pass over a DataLoader draws its workers' base
        seed when it makes a new iterator (``torch.utils.data.dataloader._BaseDataLoaderIter``);
        persistent workers keep one iterator, so there is nothing to draw."""
        loader = self.dataloader
        if loader.persistent_workers and loader.num_workers > 0:
            return
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


def score_frozen_teacher_once(cfg: Config) -> bool:
    """Swap MMRazor's val loop for ``FrozenTeacherDistillValLoop`` (same arguments), unless
    the config says ``score_frozen_teacher_once=False``; True when it did."""
    val_cfg = cfg.get('val_cfg') or {}
    if not cfg.get(SWITCH_KEY, True) or val_cfg.get('type', '').split('.')[-1] != MMRAZOR_LOOP:
        return False
    val_cfg['type'] = 'mmrazor.' + FrozenTeacherDistillValLoop.__name__
    return True
