"""Run the frozen teacher as an inference model: eval mode, ``torch.inference_mode``, bf16/fp16.

MMRazor's ``SingleTeacherDistill`` runs a frozen teacher under ``no_grad`` but in
*train* mode (only its norm layers frozen, ``teacher_norm_eval=True``), in fp32.
For logits distillation the teacher is pure inference, so:

* **eval mode**: no dropout / drop-path, so the teacher's logits are
  deterministic (the same ones the teacher-logit cache stores);
* **inference_mode**: no autograd bookkeeping at all (the recorded logits are
  copied out of inference mode before the distill loss uses them);
* **precision** ``bf16`` / ``fp16``: ``torch.autocast`` around the teacher only;
  the student and the losses stay in fp32.  On the 2-core CPU of
  benchmarks/README.md, bf16 takes a KD step from 1.66-2.51x to 1.38-1.57x of
  the student-only step.

``InferenceTeacherDistill`` (registered in MMRazor's ``MODELS`` when this module is
imported) is that algorithm; ``enable_fast_teacher(cfg, precision)`` switches a KD config to it
(``python -m video_kd.distill.train ... --teacher-precision bf16``).  Checkpoints are
interchangeable with ``SingleTeacherDistill`` (same modules, same state dict).
The teacher-logit cache (video_kd.distill.logit_cache) builds on it: its misses run the
teacher this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from mmrazor.models import SingleTeacherDistill
from mmrazor.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import UserError
from video_kd.distill.teacher_precision import PRECISIONS, autocast_dtype  # noqa: F401  (re-exported)
from video_kd.openmmlab.config import is_distill_config

if TYPE_CHECKING:
    from mmaction.structures import ActionDataSample
    from mmengine.config import Config

ALGORITHM = 'InferenceTeacherDistill'


@contextlib.contextmanager
def _forward_replaced(module: torch.nn.Module, forward: Callable) -> Iterator[None]:
    """Calls of ``module`` run ``forward`` in this block (its hooks still run around it)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@MODELS.register_module(force=True)
class InferenceTeacherDistill(SingleTeacherDistill):
    """SingleTeacherDistill whose frozen teacher runs in eval mode under inference_mode.

    ``teacher_precision``: ``'fp32'`` (default), ``'bf16'`` or ``'fp16'``
    (autocast around the teacher forward only).  ``loss`` is MMRazor's; only its
    teacher forward is ours (``teacher_records``).
    """

    def __init__(self, *args, teacher_precision: str = 'fp32', **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_dtype = autocast_dtype(teacher_precision)
        self.teacher_precision = teacher_precision
        if self.teacher_trainable:
            raise UserError('a trainable teacher is not an inference model')
        if getattr(self.distiller.deliveries, 'deliveries', None):
            # delivered teacher outputs would be inference tensors inside the student's graph
            raise UserError('deliveries are not supported with a fast teacher')

    def _restore_teacher_mode(self, was_training: bool) -> None:
        self.teacher.train(was_training)
        if was_training and self.teacher_norm_eval:  # as SingleTeacherDistill.train
            for module in self.teacher.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def run_teacher(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample] | None
    ) -> dict[str, torch.Tensor]:
        """One teacher forward; returns each teacher recorder's output (fp32, no grad)."""
        recorders = self.distiller.teacher_recorders
        amp = (
            torch.autocast(batch_inputs.device.type, dtype=self.teacher_dtype)
            if self.teacher_dtype is not None
            else contextlib.nullcontext()
        )
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            with recorders, torch.inference_mode(), amp:
                # mode='loss' minus the loss: the head's top-k accuracy is numpy (no bf16)
                self.teacher.extract_feat(batch_inputs, stage='head', data_samples=data_samples)
                records = {name: r.get_record_data() for name, r in recorders.recorders.items()}
        finally:
            self._restore_teacher_mode(was_training)
        # Out of inference mode: a copy is an ordinary tensor the distill loss can use.
        return {name: t.float().clone() for name, t in records.items()}

    def set_teacher_records(self, records: dict[str, torch.Tensor]) -> None:
        for name, recorder in self.distiller.teacher_recorders.recorders.items():
            recorder.reset_data_buffer()
            recorder.data_buffer.append(records[name])

    def teacher_records(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample] | None
    ) -> dict:
        """What the distill losses read from the teacher recorders (subclasses: a cache)."""
        return self.run_teacher(batch_inputs, data_samples)

    def loss(
        self, batch_inputs: torch.Tensor, data_samples: list[ActionDataSample] | None = None
    ) -> dict[str, torch.Tensor]:
        """``SingleTeacherDistill.loss``, whose teacher call fills the teacher recorders
        with ``teacher_records`` instead of running the teacher in train mode."""

        def teacher_forward(
            inputs: torch.Tensor, samples: list[ActionDataSample] | None, mode: str = 'loss'
        ) -> None:
            self.set_teacher_records(self.teacher_records(inputs, samples))

        with _forward_replaced(self.teacher, teacher_forward):
            return super().loss(batch_inputs, data_samples)


def enable_fast_teacher(cfg: Config, precision: str = 'fp32') -> None:
    """Switch a KD config's algorithm to InferenceTeacherDistill with this teacher precision."""
    autocast_dtype(precision)
    if not is_distill_config(cfg):
        raise UserError(
            'a fast teacher needs a distillation config (model.type SingleTeacherDistill)'
        )
    if 'Cached' in str(cfg.model.type):  # the cache location hashes the precision
        raise UserError('enable the fast teacher before the teacher-logit cache')
    cfg.model.type = ALGORITHM
    cfg.model.teacher_precision = precision
