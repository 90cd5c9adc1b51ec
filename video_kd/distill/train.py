"""Train a recognizer, or distill a teacher into a student, with the mmengine Runner.

The same entry point runs alone, under ``torchrun`` and in a PyTorchJob pod::

    python -m video_kd.distill.train kd_logits_tsm-res50_tsm-mobilenetv2_tiny \\
        --work-dir work_dirs/kd --teacher-ckpt teacher.pth --data-root data/kd_demo
    torchrun --nproc_per_node 2 -m video_kd.distill.train ...     # gloo on CPU, nccl on GPU

Everything is checked before the work dir is touched: the config name, the
teacher checkpoint (exists, and fits the teacher architecture exactly), the
dataset (list files, classes; unreadable videos are reported and left out).
A work dir that already holds checkpoints is only continued (``--resume``),
never trained over.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mmengine.config import Config

from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.data import data_layout, data_stream, dataset
from video_kd.distill import train_config
from video_kd.distill.train_config import TrainOptions
from video_kd.openmmlab.runtime import init_cpu_process_group, is_main_process
from video_kd.storage import s3

if TYPE_CHECKING:
    from mmengine.runner import Runner

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.distill.train',
        description='Train an MMAction2 recognizer, or distill a teacher into a student with '
        'MMRazor (SingleTeacherDistill). Runs alone, under torchrun, or in a '
        'Kubeflow PyTorchJob pod (same command).',
        epilog='Configs: a shipped name (see `video-kd configs`) or a path to an mmengine '
        'config file.',
    )
    parser.add_argument(
        'config', help='config name or path, e.g. kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'
    )
    parser.add_argument(
        '--work-dir', required=True, help='where checkpoints (epoch_N.pth) and logs are written'
    )
    parser.add_argument('--teacher-ckpt', help='teacher checkpoint file (required for KD configs)')
    parser.add_argument(
        '--data-root',
        help='the dataset, as the pipeline takes it: a directory or s3:// prefix in '
        "video-kd's layout (videos/, train_list.txt, val_list.txt, classes.txt), MMAction2's "
        'Kinetics tree (videos_train/, kinetics400_*_list_videos.txt, a label map or the '
        'annotation CSVs) or the flat Kinetics copy (train/, annotations/train.csv); '
        'names in a URI query, e.g. "data/k400?train_videos=train_256". Overrides the '
        "config's paths and sets num_classes",
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        default=None,
        help='continue training: from the last checkpoint in --work-dir '
        '(no value) or from the given checkpoint',
    )
    parser.add_argument(
        '--no-data-check',
        action='store_true',
        help='skip decoding every video first (when data prep already did)',
    )
    TrainOptions.add_arguments(parser)
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch'],
        default=None,
        help='distributed launcher (default: pytorch under torchrun, else none)',
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """Resolve and localize the config; everything is checked before the work dir is touched."""
    options = TrainOptions.from_args(args)
    num_classes, videos_uri, source = _dataset_of(args.data_root)
    teacher_sha256 = None
    if options.teacher_logit_cache and args.teacher_ckpt:
        if not Path(args.teacher_ckpt).is_file():
            raise UserError(f'teacher checkpoint {args.teacher_ckpt} does not exist')
        teacher_sha256 = s3.sha256_file(args.teacher_ckpt)
    cfg = train_config.resolve(
        args.config,
        options,
        num_classes=num_classes,
        teacher_sha256=teacher_sha256,
        videos_uri=videos_uri,
    )
    return train_config.localize(
        cfg,
        work_dir=args.work_dir,
        data_root=args.data_root,
        data_source=source,
        teacher_ckpt=args.teacher_ckpt,
        resume=args.resume,
        launcher=args.launcher,
        check_videos=not args.no_data_check,
    )


def _dataset_of(data_root: str | None) -> tuple[int | None, str, data_layout.DatasetSource | None]:
    """(number of classes, where the train videos are, the dataset as found) of
    ``--data-root``: found once, here, and handed to data prep (``localize``), since
    finding it reads the lists or CSVs (on S3, requests).  Our layout's root stays as
    named, a link included (the teacher-logit cache goes with it)."""
    if not data_root:
        return None, '', None
    if data_stream.is_own_root(data_root):
        videos = Path(data_root).absolute() / dataset.VIDEO_DIR
        return len(dataset.read_classes(data_root)), str(videos), None
    source = data_layout.resolve(data_root)
    return len(source.classes), source.splits['train'].videos_uri, source


def train(cfg: Config) -> Runner:
    """Run the mmengine Runner; returns it (work_dir, checkpoints...)."""
    from mmengine.runner import Runner

    init_cpu_process_group(cfg.launcher)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def last_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint mmengine wrote last (its `last_checkpoint` file), if any."""
    marker = Path(work_dir) / 'last_checkpoint'
    if not marker.is_file():
        return None
    path = Path(marker.read_text().strip())
    return path if path.is_absolute() else Path(work_dir) / path.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    runner = train(cfg)
    if is_main_process():
        logger.info('done: last checkpoint %s', last_checkpoint(runner.work_dir))
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
