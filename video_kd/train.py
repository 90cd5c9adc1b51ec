"""Train a recognizer, or distill a teacher into a student, with the mmengine Runner.

The same entry point runs alone, under ``torchrun`` and in a PyTorchJob pod::

    python -m video_kd.train kd_logits_tsm-res50_tsm-mobilenetv2_tiny \\
        --work-dir work_dirs/kd --teacher-ckpt teacher.pth --data-root data/kd_demo
    torchrun --nproc_per_node 2 -m video_kd.train ...     # gloo on CPU, nccl on GPU

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

from mmengine.config import Config, DictAction

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd import dataset
from video_kd.config import is_distill_config, load_config, set_num_classes
from video_kd.convert import load_state_dict, state_dict_mismatch
from video_kd.fast_teacher import PRECISIONS
from video_kd.runtime import (
    UsageError,
    dist_backend,
    init_cpu_process_group,
    is_main_process,
    launcher_from_env,
    register_all_modules,
    run_cli,
    set_data_root,
    setup_logging,
    wait_for_file,
)

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.train',
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
        help='Kinetics-style dataset root: videos/, train_list.txt, '
        "val_list.txt, classes.txt (overrides the config's paths and "
        'sets num_classes)',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        default=None,
        help='continue training: from the last checkpoint in --work-dir '
        '(no value) or from the given checkpoint',
    )
    parser.add_argument('--max-epochs', type=int, help='override train_cfg.max_epochs')
    parser.add_argument(
        '--no-data-check',
        action='store_true',
        help='skip decoding every video first (when data prep already did)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        default={},
        help='override config keys, mmengine style: '
        'optim_wrapper.optimizer.lr=0.01 train_dataloader.batch_size=4',
    )
    parser.add_argument(
        '--teacher-logit-cache',
        metavar='URI',
        help="KD only: reuse the teacher's logits per augmented view, stored "
        'under URI/teacher_logits/ (an s3:// prefix or a local dir; see '
        'video_kd.logit_cache). Off by default',
    )
    parser.add_argument(
        '--teacher-precision',
        choices=list(PRECISIONS),
        help='KD only: run the frozen teacher as an inference model (eval mode, '
        'torch.inference_mode) in this precision (autocast; the student '
        'stays fp32). bf16 made a KD step 1.2-1.7x faster on CPU (see '
        'benchmarks/). Default: as MMRazor runs it (train mode with frozen '
        'norm layers, fp32). See video_kd.fast_teacher',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch'],
        default=None,
        help='distributed launcher (default: pytorch under torchrun, else none)',
    )
    return parser.parse_args(argv)


def existing_checkpoints(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob('*.pth')) if work_dir.is_dir() else []


def check_work_dir(work_dir: Path, resume: str | None) -> None:
    """Refuse to train over earlier results; require something to resume from."""
    found = existing_checkpoints(work_dir)
    if found and not resume:
        raise UsageError(
            f'work dir {work_dir} already holds checkpoints '
            f'({", ".join(p.name for p in found[:3])}); pass --resume to continue '
            'from them, or choose another --work-dir'
        )
    if resume == 'auto' and not (work_dir / 'last_checkpoint').is_file():
        logger.info('--resume: no checkpoint in %s yet, starting from scratch', work_dir)
    elif resume and resume != 'auto' and not Path(resume).is_file():
        raise FileNotFoundError(f'--resume checkpoint {resume} does not exist')


def build_teacher(cfg: Config):
    from mmrazor.registry import MODELS

    return MODELS.build(cfg.model.teacher)


def check_teacher_checkpoint(cfg: Config, teacher_ckpt: str) -> None:
    """The checkpoint must fit the teacher exactly: MMRazor alone would only warn."""
    state = load_state_dict(teacher_ckpt)
    expected = build_teacher(cfg).state_dict()
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        teacher_type = cfg.model.teacher.get('backbone', {}).get('type', 'teacher')
        raise UsageError(
            f"teacher checkpoint {teacher_ckpt} does not fit the config's "
            f'teacher ({teacher_type}): {mismatch}'
        )


def prepare_data(cfg: Config, data_root: str, work_dir: Path, check_videos: bool) -> None:
    """Point the config at data_root; with check_videos, leave unreadable videos out."""
    root = Path(data_root)
    if check_videos:
        clean_root = work_dir / 'data'
        if is_main_process():
            report = dataset.validate_dataset(root, clean_root)
            if report['rejected_total']:
                logger.warning(
                    '%d unreadable or mislabelled videos left out, see %s',
                    report['rejected_total'],
                    clean_root / 'report.json',
                )
        else:  # other ranks wait for rank 0's cleaned lists
            wait_for_file(clean_root / dataset.VAL_LIST)
        root = clean_root
    classes = set_data_root(cfg, root)
    logger.info('dataset %s: %d classes', root, len(classes))


def set_max_epochs(cfg: Config, max_epochs: int) -> None:
    """Change the epoch budget, stretching epoch-based schedules that span all of it."""
    old = cfg.train_cfg.get('max_epochs')
    cfg.train_cfg.max_epochs = max_epochs
    schedulers = cfg.get('param_scheduler') or []
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if not scheduler.get('by_epoch', True):
            continue
        for key in ('T_max', 'end'):
            if scheduler.get(key) == old:
                scheduler[key] = max_epochs


def build_config(args: argparse.Namespace) -> Config:
    """Load and check everything; returns the config the Runner will run."""
    cfg = load_config(args.config, args.cfg_options)
    register_all_modules()
    work_dir = Path(args.work_dir).resolve()
    check_work_dir(work_dir, args.resume)
    if args.data_root:  # heads sized to the dataset before the teacher is checked
        set_num_classes(cfg.model, len(dataset.read_classes(args.data_root)))
    if is_distill_config(cfg):
        teacher_ckpt = args.teacher_ckpt or cfg.model.get('teacher_ckpt')
        if not teacher_ckpt:
            raise UsageError(f'{args.config} distills from a teacher: pass --teacher-ckpt')
        if not Path(teacher_ckpt).is_file():
            raise FileNotFoundError(f'teacher checkpoint {teacher_ckpt} does not exist')
        check_teacher_checkpoint(cfg, teacher_ckpt)
        cfg.model.teacher_ckpt = str(Path(teacher_ckpt).resolve())
    elif args.teacher_ckpt:
        raise UsageError(
            f'{args.config} is not a distillation config; --teacher-ckpt makes no sense with it'
        )
    if args.data_root:
        prepare_data(cfg, args.data_root, work_dir, check_videos=not args.no_data_check)
    if args.max_epochs:
        set_max_epochs(cfg, args.max_epochs)
    if getattr(args, 'teacher_precision', None):  # before the cache: its location hashes it
        if not is_distill_config(cfg):
            raise UsageError('--teacher-precision needs a distillation config')
        from video_kd.fast_teacher import enable_fast_teacher

        enable_fast_teacher(cfg, args.teacher_precision)
        logger.info('teacher: eval mode, inference_mode, %s', args.teacher_precision)
    if getattr(args, 'teacher_logit_cache', None):
        if not is_distill_config(cfg):
            raise UsageError('--teacher-logit-cache needs a distillation config')
        from video_kd.logit_cache import enable_cache

        logger.info('teacher-logit cache: %s', enable_cache(cfg, args.teacher_logit_cache))
    cfg.work_dir = str(work_dir)
    cfg.launcher = args.launcher or launcher_from_env()
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = dist_backend()
    if cfg.launcher == 'pytorch' and dist_backend() == 'gloo':
        # mmengine's default DDP wrapper pins device_ids=[LOCAL_RANK]: GPU only.
        cfg.setdefault(
            'model_wrapper_cfg',
            dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False),
        )
    if args.resume:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    return cfg


def train(cfg: Config):
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


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    runner = train(cfg)
    if is_main_process():
        logger.info('done: last checkpoint %s', last_checkpoint(runner.work_dir))
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
