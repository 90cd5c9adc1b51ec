"""One short line per training epoch: how far along, the loss, the rate and the time left.

MMEngine's ``LoggerHook`` logs every few iterations with every scalar; on a
console that someone watches (``video-kd run-local``, a pod's log) one line an
epoch is enough to see that training moves and when it will end::

    epoch 3/15 loss 0.843 12.3 clips/s ETA 2m10s

Added to every resolved training config (``video_kd.distill.train_config.resolve``).
"""

from __future__ import annotations

import time
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from video_kd.core.progress import format_duration


@HOOKS.register_module(force=True)
class EpochProgressHook(Hook):
    """Logs ``epoch E/N loss L R clips/s ETA T`` after each training epoch (rank 0's logger).

    The loss is the epoch's mean of the total training loss; the rate counts this
    process's clips over the epoch's training time; the ETA is the remaining epochs
    times the mean time of the epochs so far (validation included).
    """

    priority = 'BELOW_NORMAL'

    def __init__(self) -> None:
        self._train_start = 0.0
        self._first_epoch = 0
        self._epoch_start = 0.0
        self._clips = 0
        self._losses: list[float] = []

    def before_train(self, runner: Any) -> None:
        self._train_start = time.monotonic()
        self._first_epoch = runner.epoch  # a resumed run counts from where it resumed

    def before_train_epoch(self, runner: Any) -> None:
        self._epoch_start = time.monotonic()
        self._clips, self._losses = 0, []

    def after_train_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if isinstance(data_batch, dict):
            self._clips += len(data_batch.get('data_samples') or data_batch.get('inputs') or [])
        if isinstance(outputs, dict) and 'loss' in outputs:
            self._losses.append(float(outputs['loss']))

    def after_train_epoch(self, runner: Any) -> None:
        now = time.monotonic()
        runner.logger.info(
            self.line(
                runner.epoch + 1,
                runner.max_epochs,
                sum(self._losses) / len(self._losses) if self._losses else float('nan'),
                self._clips / max(now - self._epoch_start, 1e-9),
                now - self._train_start,
                runner.epoch + 1 - self._first_epoch,
            )
        )

    @staticmethod
    def line(
        epoch: int, max_epochs: int, loss: float, clips_per_s: float, elapsed: float, done: int
    ) -> str:
        """``epoch 3/15 loss 0.843 12.3 clips/s ETA 2m10s`` (``done``: epochs this process ran)."""
        eta = (max_epochs - epoch) * elapsed / max(done, 1)
        return (
            f'epoch {epoch}/{max_epochs} loss {loss:.3f} {clips_per_s:.1f} clips/s '
            f'ETA {format_duration(eta)}'
        )
