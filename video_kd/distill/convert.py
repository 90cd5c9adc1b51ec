"""KD checkpoint -> student-only checkpoint.

A ``SingleTeacherDistill`` checkpoint holds ``architecture.*`` (the student),
``teacher.*`` and distiller state.  The student-only checkpoint keeps the
student's weights under the names plain MMAction2 expects, so
``mim test mmaction <student config> --checkpoint x_student.pth`` (or
``video_kd.distill.evaluate``) loads it with no missing or unexpected keys.

    python -m video_kd.distill.convert work_dirs/kd/epoch_6.pth   # -> work_dirs/kd/epoch_6_student.pth
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.openmmlab.checkpoints import load_checkpoint_file

logger = logging.getLogger(__name__)

STUDENT_PREFIX = 'architecture.'


def student_state_dict(kd_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's weights of a KD state dict, under plain MMAction2 names."""
    student = {
        key[len(STUDENT_PREFIX) :]: value
        for key, value in kd_state.items()
        if key.startswith(STUDENT_PREFIX)
    }
    if not student:
        raise UserError(
            'not a knowledge-distillation checkpoint: no "architecture.*" (student) weights in it'
        )
    return student


def student_checkpoint_path(kd_checkpoint: str | Path) -> Path:
    kd_checkpoint = Path(kd_checkpoint)
    return kd_checkpoint.with_name(f'{kd_checkpoint.stem}_student.pth')


def convert_kd_ckpt_to_student(
    kd_checkpoint: str | Path, out: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the student-only checkpoint (default: ``<name>_student.pth`` beside it)."""
    out = Path(out) if out else student_checkpoint_path(kd_checkpoint)
    if out.exists() and not overwrite:
        raise UserError(f'{out} already exists; pass --overwrite to replace it')
    kd_state, meta = load_checkpoint_file(kd_checkpoint)
    state = student_state_dict(kd_state)
    meta.update(converted_from=str(kd_checkpoint), converted_by='video_kd.distill.convert')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp')
    torch.save({'state_dict': state, 'meta': meta}, tmp)
    tmp.replace(out)  # atomic: a half-written file never carries the final name
    logger.info('student checkpoint: %s (%d tensors)', out, len(state))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.distill.convert',
        description='Convert a knowledge-distillation checkpoint (MMRazor SingleTeacherDistill) '
        'to a student-only checkpoint that plain MMAction2 loads.',
    )
    parser.add_argument('checkpoint', help='KD checkpoint, e.g. work_dirs/kd/epoch_6.pth')
    parser.add_argument('--out', help='output path (default: <checkpoint>_student.pth beside it)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    out = convert_kd_ckpt_to_student(args.checkpoint, args.out, args.overwrite)
    print(out)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
