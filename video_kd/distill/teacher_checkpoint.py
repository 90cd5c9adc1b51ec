"""A released teacher checkpoint -> one that fits the KD config's teacher exactly.

The teacher step calls ``convert_teacher_checkpoint`` on what it downloaded: a
checkpoint that already fits is used as it is; the seed's TSN-Swin teacher (timm
names, see ``video_kd.distill.swin_convert``) is converted to our mmpretrain Swin and
written beside it.  Either way the result is checked key by key and shape by shape
against the built teacher, so a wrong file fails here, in one line, and not hours
later in the training pod.

    python -m video_kd.distill.teacher_checkpoint teacher.pth kd_logits_tsn-swin_tsn-r50_8xb16_k400
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch
from mmengine.config import Config

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.artifacts import TeacherCheck
from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.distill.swin_convert import MMPRETRAIN, TeacherCheckpointError, convert_state_dict
from video_kd.openmmlab.checkpoints import (
    load_checkpoint_file,
    save_checkpoint,
    state_dict_mismatch,
)
from video_kd.openmmlab.config import UnknownConfigError, load_config, set_num_classes
from video_kd.openmmlab.runtime import register_all_modules
from video_kd.storage import s3

logger = logging.getLogger(__name__)

NATIVE = 'native'  # already the config's names: nothing to convert
HEAD_WEIGHT = 'cls_head.fc_cls.weight'


def convert_teacher_checkpoint(
    src: str | Path, kd_cfg: Config, num_classes: int | None = None
) -> tuple[Path, TeacherCheck]:
    """(checkpoint that fits ``kd_cfg``'s teacher, info); raises ``TeacherCheckpointError``.

    ``num_classes``: the dataset's, when known; a teacher head of another size is
    refused.  ``info``: ``layout`` (native, mmpretrain, timm-0.6, timm>=0.9),
    ``converted`` (bool), ``source_sha256``, ``converted_sha256`` (equal to the
    source's when nothing was converted).  A converted file is written beside the
    source as ``<stem>_mmpretrain.pth``.
    """
    src = Path(src)
    state, meta = _read(src)
    teacher = _build_teacher(kd_cfg, _head_size(state, src, num_classes))
    if _is_mmpretrain_swin(teacher.backbone):
        state, layout = convert_state_dict(state, teacher)
    else:
        layout = NATIVE
        mismatch = state_dict_mismatch(teacher.state_dict(), state)
        if mismatch:
            raise TeacherCheckpointError(
                f"teacher checkpoint {src.name} does not fit the config's teacher "
                f'({type(teacher.backbone).__name__}): {mismatch}'
            )
    source_sha = s3.sha256_file(src)
    info: TeacherCheck = {'layout': layout, 'converted': layout not in (NATIVE, MMPRETRAIN)}
    info['source_sha256'] = source_sha
    if not info['converted']:
        logger.info('teacher checkpoint %s fits the teacher as it is (%s names)', src.name, layout)
        return src, {**info, 'converted_sha256': source_sha}
    dst = src.with_name(f'{src.stem}_mmpretrain.pth')
    meta.update(converted_from=src.name, source_sha256=source_sha, source_layout=layout)
    save_checkpoint({'state_dict': state, 'meta': meta}, dst)
    info['converted_sha256'] = s3.sha256_file(dst)
    logger.info(
        "teacher checkpoint %s: %s Swin names converted to mmpretrain's -> %s (sha256 %s)",
        src.name,
        layout,
        dst.name,
        info['converted_sha256'],
    )
    return dst, info


def _read(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        return load_checkpoint_file(src)
    except UserError as error:
        raise TeacherCheckpointError(f'teacher checkpoint: {error}') from error


def _head_size(state: dict[str, torch.Tensor], src: Path, num_classes: int | None) -> int | None:
    """The checkpoint's class count; must equal the dataset's when that is given."""
    head = state.get(HEAD_WEIGHT)
    found = int(head.shape[0]) if head is not None else None
    if num_classes and found and found != num_classes:
        raise TeacherCheckpointError(
            f'teacher checkpoint {src.name} classifies {found} classes, the dataset has '
            f'{num_classes}: distill from a teacher trained on these classes'
        )
    return num_classes or found


def _build_teacher(kd_cfg: Config, num_classes: int | None) -> torch.nn.Module:
    from mmrazor.registry import MODELS

    register_all_modules()
    teacher_cfg = copy.deepcopy(kd_cfg.model.teacher)
    if num_classes:
        set_num_classes(teacher_cfg, num_classes)
    return MODELS.build(teacher_cfg)


def _is_mmpretrain_swin(backbone: object) -> bool:
    from mmpretrain.models.backbones import SwinTransformer

    return isinstance(backbone, SwinTransformer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.distill.teacher_checkpoint',
        description="Check a teacher checkpoint against a KD config's teacher and, for the "
        "seed's TSN-Swin teacher (timm 0.6 or >= 0.9 names), convert it to the mmpretrain "
        'Swin the config builds. Prints the path of the checkpoint to train with.',
        epilog='example: python -m video_kd.distill.teacher_checkpoint tsn_swin_k400.pth '
        'kd_logits_tsn-swin_tsn-r50_8xb16_k400',
    )
    parser.add_argument('checkpoint', type=Path, help='the teacher checkpoint file')
    parser.add_argument('config', help='KD config name or path (its teacher is the target)')
    parser.add_argument(
        '--num-classes', type=int, help="the dataset's class count (default: the checkpoint's)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        kd_cfg = load_config(args.config)
    except UnknownConfigError as error:
        raise TeacherCheckpointError(str(error)) from error
    path, info = convert_teacher_checkpoint(args.checkpoint, kd_cfg, args.num_classes)
    logger.info('%s', info)
    print(path)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
