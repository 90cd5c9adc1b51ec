"""What a user chooses about a training run, besides the config: ``TrainOptions``.

Apart from ``train_config`` (the one mapping of these options onto config keys, which
imports mmengine and MMAction2) so that ``video-kd``'s parser, and with it ``video-kd runs``
and ``--help``, takes the same flags without importing them.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from video_kd.core.errors import UserError
from video_kd.distill.teacher_precision import PRECISIONS


@dataclasses.dataclass
class TrainOptions:
    """What a user chooses about a training run, besides the config itself."""

    max_epochs: int = dataclasses.field(
        default=0, metadata={'help': "epoch budget; 0 keeps the config's (schedules stretch)"}
    )
    cfg_options: list[str] = dataclasses.field(
        default_factory=list,
        metadata={
            'help': 'mmengine config overrides, one KEY=VALUE per argument '
            '(optim_wrapper.optimizer.lr=0.01 train_dataloader.batch_size=8); a value is a '
            "Python literal (0.1, [1, 2], 'a b') or plain text, spaces kept: "
            'work_dir=\'/a b\' or "work_dir=/a b" in a shell'
        },
    )
    teacher_precision: str = dataclasses.field(
        default='',
        metadata={
            'help': 'run the frozen teacher as an inference model (eval mode, inference_mode) in '
            f'this precision ({", ".join(PRECISIONS)}; the student stays fp32); empty: as '
            'MMRazor runs it. See video_kd.distill.fast_teacher',
            'choices': ['', *PRECISIONS],
        },
    )
    teacher_logit_cache: bool = dataclasses.field(
        default=False,
        metadata={
            'help': "KD only: keep the teacher's logits per augmented view next to the "
            "dataset's videos (<dataset>/teacher_logits/, in S3 or on disk), so retraining "
            'with the same teacher skips its forward pass (see video_kd.distill.logit_cache)'
        },
    )

    student_pretrained_url: str = dataclasses.field(
        default='',
        metadata={
            'help': "ImageNet weights for the student's backbone (https://, s3:// or a path; the "
            "seed's are listed in README.md), loaded as MMAction2 means it and checked tensor by "
            'tensor; empty: random init, as offline runs have always done'
        },
    )
    student_pretrained_sha256: str = dataclasses.field(
        default='', metadata={'help': "the weights' SHA-256 (checked; keys the S3 cache)"}
    )
    keep_checkpoints: int = dataclasses.field(
        default=3,
        metadata={
            'help': 'checkpoint retention: the newest N epoch checkpoints stay (in the work '
            "dir and the run's S3 directory), with the best by the val metric (best_*.pth); "
            "older ones are deleted (mmengine CheckpointHook's max_keep_ckpts and save_best)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.cfg_options, str) or not all(
            isinstance(item, str) for item in self.cfg_options
        ):  # one form only: a string would be split somewhere, breaking values with spaces
            raise UserError(
                f'cfg_options must be a list of KEY=VALUE strings, got {self.cfg_options!r}'
            )
        if self.max_epochs < 0:
            raise UserError(
                f"max_epochs must be >= 0 (0 keeps the config's), got {self.max_epochs}"
            )
        if self.keep_checkpoints < 1:
            raise UserError(
                f'keep_checkpoints must be 1 or more (the newest checkpoints kept, with the '
                f'best), got {self.keep_checkpoints}'
            )
        if self.teacher_precision not in ('', *PRECISIONS):
            raise UserError(
                f'teacher_precision {self.teacher_precision!r}: use one of '
                f'{", ".join(PRECISIONS)} or leave it empty (the teacher as MMRazor runs it)'
            )

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        only: tuple[str, ...] | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        """One ``--flag`` per option (or per option named in ``only``), with its help:
        every entry point takes the same flags.  ``defaults``: an entry point's own defaults
        for options that take a value (its help says so)."""
        for field in dataclasses.fields(cls):
            if only is not None and field.name not in only:
                continue
            flag = '--' + field.name.replace('_', '-')
            kwargs = {'help': field.metadata['help']}
            if field.name == 'cfg_options':
                kwargs.update(nargs='+', default=[], metavar='KEY=VALUE')
            elif field.type in (bool, 'bool'):
                kwargs.update(action='store_true')
            else:
                default = (defaults or {}).get(field.name, field.default)
                kwargs.update(type=type(field.default), default=default)
                if default != field.default:
                    kwargs['help'] += f' (default: {default})'
                if 'choices' in field.metadata:
                    kwargs['choices'] = field.metadata['choices']
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
