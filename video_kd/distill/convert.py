"""KD checkpoint -> student-only checkpoint, and strict checkpoint/model matching.

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
import os
import tempfile
from pathlib import Path

import torch

from video_kd.core.errors import UserError, run_cli, setup_logging

logger = logging.getLogger(__name__)

STUDENT_PREFIX = 'architecture.'


def load_checkpoint_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an mmengine checkpoint or of a bare state dict file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise UserError(
            f'{path} is not a readable PyTorch checkpoint: {str(error).splitlines()[0]}'
        ) from error
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f'{path} holds no state dict')
    return state, dict(checkpoint.get('meta') or {})


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(path)[0]


def state_dict_mismatch(expected: dict, loaded: dict, limit: int = 3) -> str | None:
    """None if loaded fits expected exactly, else a one-line description of how not."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    shapes = sorted(
        key
        for key in set(expected) & set(loaded)
        if tuple(expected[key].shape) != tuple(loaded[key].shape)
    )
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for label, keys in (
        ('missing', missing),
        ('unexpected', unexpected),
        ('shape mismatch', shapes),
    ):
        if keys:
            parts.append(f'{len(keys)} {label} (e.g. {", ".join(keys[:limit])})')
    return '; '.join(parts)


def save_checkpoint(checkpoint: dict, path: Path) -> Path:
    """``torch.save`` atomically: a reader (another rank, a retried step) never sees half a
    file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.part')
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


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
