"""The training config: user settings mapped onto mmengine config keys, in one place.

A training config is decided in two parts:

* ``resolve`` — what the run trains: the named config, the user's overrides,
  the number of classes, the epoch budget, the teacher's precision and logit
  cache (kept with the dataset).  The train step resolves it ONCE and writes
  it to the run (``<run>/train/config.py``); every training process loads
  that file.
* ``localize`` — where one process finds things: its work dir, the dataset,
  the teacher checkpoint, the launcher, whether to resume.

``TrainOptions`` lists the settings a user chooses about the training itself;
the pipeline parameters, the train component and ``python -m video_kd.distill.train``
all take these names, and ``resolve`` is the only place they become config
keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmengine.config import Config

from video_kd.core.errors import UserError
from video_kd.data import data_stream, dataset
from video_kd.data.data_layout import DatasetSource
from video_kd.distill.frozen_teacher import FROZEN_TEACHER_HOOK
from video_kd.distill.pretrained import apply_pretrained, fetch_pretrained
from video_kd.distill.train_options import TrainOptions as TrainOptions  # re-exported
from video_kd.openmmlab.cfg_options import check_config_values, checked_cfg_options
from video_kd.openmmlab.checkpoints import load_state_dict, state_dict_mismatch
from video_kd.openmmlab.config import (
    is_distill_config,
    load_config,
    set_num_classes,
)
from video_kd.openmmlab.runtime import (
    dist_backend,
    is_main_process,
    launcher_from_env,
    register_all_modules,
    wait_for_file,
)

log = logging.getLogger(__name__)

# Imported by mmengine when a resolved config is loaded (``custom_imports``): registers
# the modules our configs name (fast teacher, logit cache, S3 checkpoint hook).
PLUGINS_MODULE = 'video_kd.distill.plugins'
CONFIG_NAME = 'config.py'


def resolve(
    config: str,
    options: TrainOptions,
    num_classes: int | None = None,
    teacher_sha256: str | None = None,
    videos_uri: str = '',
) -> Config:
    """The run's training config: everything but where this process finds its files.

    ``videos_uri``: where the dataset's videos are (an s3:// prefix or a local
    dir); the teacher-logit cache (``options.teacher_logit_cache``) is kept in
    the directory above it, with the dataset.  ``teacher_sha256`` keys that
    cache (computed from the checkpoint if not given).  The processes fetch
    the student's pretrained weights from the URL the user gave, unless
    ``fetch_pretrained_from`` names a copy.
    """
    overrides = checked_cfg_options(config, options.cfg_options)
    register_all_modules()
    # with the student's ImageNet weights given, the configs' URLs dropped offline
    # are not worth a warning (video_kd.openmmlab.config.drop_remote_weights)
    cfg = load_config(config, overrides, warn_offline=not options.student_pretrained_url)
    if num_classes:  # heads sized to the dataset (before the teacher checkpoint is checked)
        set_num_classes(cfg.model, num_classes)
    if options.max_epochs:
        set_max_epochs(cfg, options.max_epochs)
    # one line an epoch on the console; registered here for a Runner built in this process,
    # through PLUGINS_MODULE (custom_imports) for one built from the published config
    # deferred: mmengine's hooks, not needed by check inputs' imports
    from video_kd.distill import progress_hook  # noqa: F401

    cfg.custom_hooks = [*(cfg.get('custom_hooks') or []), dict(type='EpochProgressHook')]
    if options.teacher_precision:  # before the cache: its location hashes the precision
        _require_distill(cfg, '--teacher-precision')
        # deferred: imports MMRazor's models (not needed by --help or check inputs)
        from video_kd.distill.fast_teacher import enable_fast_teacher

        enable_fast_teacher(cfg, options.teacher_precision)
        log.info('teacher: eval mode, inference_mode, %s', options.teacher_precision)
    if options.teacher_logit_cache:
        _require_distill(cfg, '--teacher-logit-cache')
        if not videos_uri:
            raise UserError(
                '--teacher-logit-cache keeps the logits with the dataset: give it (--data-root)'
            )
        # deferred: imports MMRazor's models
        from video_kd.distill.logit_cache import enable_cache

        location = enable_cache(cfg, dataset_dir(videos_uri), teacher_sha256)
        log.info('teacher-logit cache: %s', location)
    if options.student_pretrained_url:  # fetched and checked by each process (localize)
        cfg.student_pretrained = dict(
            url=options.student_pretrained_url,
            sha256=options.student_pretrained_sha256,
            fetch_from=options.student_pretrained_url,
        )
    set_checkpoint_retention(cfg, options.keep_checkpoints)
    if is_distill_config(cfg):  # the frozen teacher is rebuilt from its checkpoint, not saved
        cfg.custom_hooks = [*(cfg.get('custom_hooks') or []), FROZEN_TEACHER_HOOK]
        # deferred: imports MMRazor's engine (not needed by --help or check inputs)
        from video_kd.distill.teacher_val import score_frozen_teacher_once

        if score_frozen_teacher_once(cfg):  # a frozen teacher's val score, once a process
            log.info('validation: a frozen teacher is scored once, its metrics reported at each')
    add_tensorboard(cfg)
    cfg.custom_imports = dict(imports=[PLUGINS_MODULE], allow_failed_imports=False)
    # what mmengine would refuse only in the training processes (the files' values and the
    # options' alike), before the step publishes this config and the run is bound to it
    check_config_values(cfg, f'{config} (with --cfg-options)' if options.cfg_options else config)
    return cfg


def set_checkpoint_retention(cfg: Config, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints and the best by the val metric (the config's
    ``save_best``, else mmengine's ``'auto'``: the first metric, the student's top-1 under
    MMRazor's val loop); ``S3CheckpointHook`` makes the run's S3 directory follow."""
    hooks = cfg.setdefault('default_hooks', {})
    checkpoint = hooks.setdefault('checkpoint', dict(type='CheckpointHook', interval=1))
    checkpoint['max_keep_ckpts'] = keep
    checkpoint['save_best'] = checkpoint.get('save_best') or 'auto'


def add_tensorboard(cfg: Config) -> None:
    """TensorBoard event files beside mmengine's ``vis_data/scalars.json`` (its
    ``TensorboardVisBackend``): the curves Kubeflow's TensorBoard shows while training runs
    (``s3_hook`` uploads them as they grow)."""
    visualizer = cfg.get('visualizer') or dict(type='ActionVisualizer')
    backends = list(visualizer.get('vis_backends') or [dict(type='LocalVisBackend')])
    if not any(b.get('type') == 'TensorboardVisBackend' for b in backends):
        backends.append(dict(type='TensorboardVisBackend'))
    visualizer['vis_backends'] = backends
    cfg.visualizer = visualizer


def fetch_pretrained_from(cfg: Config, uri: str, sha256: str = '') -> None:
    """Let the processes fetch the student's pretrained weights from ``uri`` (the run's S3
    cache of them) rather than the URL the user gave, and check them against ``sha256``
    when the user gave none (the value computed when they were cached)."""
    if uri and cfg.get('student_pretrained'):
        cfg.student_pretrained.fetch_from = uri
        if sha256 and not cfg.student_pretrained.get('sha256'):
            cfg.student_pretrained.sha256 = sha256


def dataset_dir(videos_uri: str) -> str:
    """The directory that holds a dataset's videos directory (s3:// or local)."""
    return videos_uri.rstrip('/').rsplit('/', 1)[0]


def _require_distill(cfg: Config, option: str) -> None:
    if not is_distill_config(cfg):
        raise UserError(f'{option} needs a distillation config')


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


def save(cfg: Config, path: str | Path) -> Path:
    """Write a resolved config as an mmengine config file (what pods load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(path))
    return path


def load_resolved(path: str | Path) -> Config:
    """Load a config written by ``save`` (imports the plugins it names)."""
    register_all_modules()
    return Config.fromfile(str(path))


# --------------------------------------------------------------------------- localize


def localize(
    cfg: Config,
    work_dir: str | Path,
    data_root: str | Path | None = None,
    teacher_ckpt: str | Path | None = None,
    resume: str | None = None,
    launcher: str | None = None,
    check_videos: bool = False,
    data_source: DatasetSource | None = None,
) -> Config:
    """Point a resolved config at this process's files; checks everything before writing.
    ``data_source``: ``data_root`` as the caller found it already (``data_layout.resolve``),
    not looked up again."""
    work_dir = Path(work_dir).resolve()
    check_work_dir(work_dir, resume)
    if is_distill_config(cfg):
        teacher_ckpt = teacher_ckpt or cfg.model.get('teacher_ckpt')
        if not teacher_ckpt:
            raise UserError('this config distills from a teacher: give its checkpoint')
        if not Path(teacher_ckpt).is_file():
            raise UserError(f'teacher checkpoint {teacher_ckpt} does not exist')
        check_teacher_checkpoint(cfg, str(teacher_ckpt))
        cfg.model.teacher_ckpt = str(Path(teacher_ckpt).resolve())
    elif teacher_ckpt:
        raise UserError('this is not a distillation config; a teacher checkpoint makes no sense')
    if cfg.get('student_pretrained'):
        load_student_pretrained(cfg, work_dir / 'pretrained')
    if data_root:
        prepare_data(cfg, data_root, work_dir, check_videos, data_source)
    cfg.work_dir = str(work_dir)
    cfg.launcher = launcher or launcher_from_env()
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = dist_backend()
    if cfg.launcher == 'pytorch' and dist_backend() == 'gloo':
        # mmengine's default DDP wrapper pins device_ids=[LOCAL_RANK]: GPU only.
        cfg.setdefault(
            'model_wrapper_cfg',
            dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False),
        )
    if cfg.launcher == 'pytorch':
        collect_over_process_group(cfg)
    if resume:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else resume
    return cfg


def collect_over_process_group(cfg: Config) -> None:
    """Every evaluator metric gathers the ranks' results through the process group.

    mmengine's default (``collect_device='cpu'``) has every rank write its part into a
    directory that rank 0 makes under its working directory: on several nodes (the pods
    of a PyTorchJob or TrainJob) the other ranks never see it, and validation dies with
    ``FileNotFoundError: .dist_test/.../part_1.pkl``.  ``'gpu'`` is mmengine's name for
    ``all_gather_object``, which runs on gloo (CPU) as on nccl.  A metric that names its
    own ``collect_device`` (a shared ``collect_dir``, say) is left as it is.
    """
    for key in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(key)
        if isinstance(evaluator, dict) and 'metrics' in evaluator:  # an explicit Evaluator
            evaluator = evaluator['metrics']
        metrics = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
        for metric in metrics:
            if isinstance(metric, dict) and 'collect_device' not in metric:
                metric['collect_device'] = 'gpu'


def load_student_pretrained(cfg: Config, dest: Path) -> dict:
    """Fetch the run's ImageNet weights (verified) and point the student's backbone at them."""
    weights = cfg.student_pretrained
    path = fetch_pretrained(weights.fetch_from, dest, weights.sha256 or None)
    return apply_pretrained(cfg, path)


def existing_checkpoints(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob('*.pth')) if work_dir.is_dir() else []


def check_work_dir(work_dir: Path, resume: str | None) -> None:
    """Refuse to train over earlier results; require something to resume from."""
    found = existing_checkpoints(work_dir)
    if found and not resume:
        raise UserError(
            f'work dir {work_dir} already holds checkpoints '
            f'({", ".join(p.name for p in found[:3])}); pass --resume to continue '
            'from them, or choose another --work-dir'
        )
    if resume == 'auto' and not (work_dir / 'last_checkpoint').is_file():
        log.info('--resume: no checkpoint in %s yet, starting from scratch', work_dir)
    elif resume and resume != 'auto' and not Path(resume).is_file():
        raise UserError(f'--resume checkpoint {resume} does not exist')


def check_teacher_checkpoint(cfg: Config, teacher_ckpt: str) -> None:
    """The checkpoint must fit the teacher exactly: MMRazor alone would only warn."""
    from mmrazor.registry import MODELS

    state = load_state_dict(teacher_ckpt)
    expected = MODELS.build(cfg.model.teacher).state_dict()
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        teacher_type = cfg.model.teacher.get('backbone', {}).get('type', 'teacher')
        raise UserError(
            f"teacher checkpoint {teacher_ckpt} does not fit the config's "
            f'teacher ({teacher_type}): {mismatch}'
        )


def prepare_data(
    cfg: Config,
    data_root: str | Path,
    work_dir: Path,
    check_videos: bool,
    data_source: DatasetSource | None = None,
) -> None:
    """Point the config at ``data_root``: our layout, or any dataset spec data prep takes
    (MMAction2's Kinetics tree, the CSVs, the flat copy; a path or s3://, see
    ``data.data_layout``; ``data_source``: it as already found).  With check_videos,
    unreadable videos are left out.  Rank 0 checks; the other ranks wait for its lists."""
    clean_root = work_dir / 'data'
    if not data_stream.is_own_root(data_root):
        if is_main_process():
            meta = data_stream.prepare_local(data_root, clean_root, check_videos, data_source)
        else:
            wait_for_file(clean_root / data_stream.LOCAL_META_NAME)
            meta = json.loads((clean_root / data_stream.LOCAL_META_NAME).read_text())
        classes = data_stream.use_dataset(cfg, meta)
        log.info('dataset %s (%s layout): %d classes', data_root, meta['layout'], len(classes))
        return
    root = Path(data_root)
    if check_videos:
        if is_main_process():
            report = dataset.validate_dataset(root, clean_root)
            if report['rejected_total']:
                log.warning(
                    '%d unreadable or mislabelled videos left out, see %s',
                    report['rejected_total'],
                    clean_root / 'report.json',
                )
        else:  # other ranks wait for rank 0's cleaned lists
            wait_for_file(clean_root / dataset.VAL_LIST)
        root = clean_root
    classes = data_stream.set_data_root(cfg, root)
    log.info('dataset %s: %d classes', root, len(classes))
