"""Evaluate a recognizer checkpoint with MMAction2's test loop; write metrics.json.

    python -m video_kd.distill.evaluate tsm_mobilenetv2_tiny work_dirs/kd/epoch_6_student.pth \\
        --data-root data/kd_demo --out eval/metrics.json

metrics.json holds top-1, top-5 and mean-class accuracy (MMAction2's
``AccMetric``), the confusion matrix (``ConfusionMatrix``) and class names.
Given a KD config, the student part of it is evaluated.  The checkpoint must
fit the model exactly (no missing or unexpected keys), which is what
"loadable by plain MMAction2" means.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from mmengine.config import Config

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.artifacts import DatasetContents, ModelScores
from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.data.data_stream import use_test_data
from video_kd.openmmlab.cfg_options import checked_cfg_options
from video_kd.openmmlab.checkpoints import load_state_dict, state_dict_mismatch
from video_kd.openmmlab.config import load_config, student_model_cfg
from video_kd.openmmlab.runtime import register_all_modules

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.distill.evaluate',
        description='Test a recognizer checkpoint on the validation list of a dataset with '
        "MMAction2's test loop; write top-1/top-5/mean-class accuracy and the "
        'confusion matrix to a JSON file.',
    )
    parser.add_argument(
        'config', help='recognizer config (name or path); for a KD config the student is evaluated'
    )
    parser.add_argument(
        'checkpoint', help='checkpoint that fits the config exactly, e.g. epoch_6_student.pth'
    )
    parser.add_argument(
        '--data-root',
        required=True,
        help='the dataset (its val split is used), in any layout the training takes: '
        "video-kd's, MMAction2's Kinetics tree, the annotation CSVs or the flat Kinetics copy; "
        'a directory or s3:// prefix (see python -m video_kd.distill.train --help)',
    )
    parser.add_argument('--out', default='metrics.json', help='where to write the metrics')
    parser.add_argument('--work-dir', help='for logs (default: a temporary directory)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        default=[],
        metavar='KEY=VALUE',
        help='override config keys, one KEY=VALUE per argument, checked as training checks '
        'them (a key the config lacks is refused with the nearest valid name)',
    )
    return parser.parse_args(argv)


def build_test_config(
    config: str,
    checkpoint: str,
    data: str | DatasetContents,
    work_dir: str,
    cfg_options: dict | None = None,
) -> tuple[Config, list[str]]:
    """The config's test loop on ``data``: a local dataset root, or a prepared dataset's
    metadata (the Dataset artifact), whose val split is streamed where it is."""
    cfg = load_config(config, cfg_options)
    cfg.model = student_model_cfg(cfg)
    cfg.default_scope = 'mmaction'
    classes = use_test_data(cfg, data)
    for key in (
        'train_dataloader',
        'train_cfg',
        'optim_wrapper',
        'param_scheduler',
        'val_dataloader',
        'val_cfg',
        'val_evaluator',
    ):
        cfg.pop(key, None)
    cfg.test_cfg = dict(type='TestLoop')
    cfg.test_evaluator = [
        dict(type='AccMetric'),
        dict(type='ConfusionMatrix', num_classes=len(classes)),
    ]
    cfg.load_from = str(checkpoint)
    cfg.resume = False
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    cfg.default_hooks.pop('checkpoint', None)  # testing writes no checkpoints
    return cfg, classes


def describe_test_pipeline(cfg: Config) -> list[str]:
    """The test pipeline ``cfg`` scores with, one ``Type(key=value, ...)`` per transform
    (``TenCrop(crop_size=224)``): what the evaluation records for each model."""
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', [])
    return [
        f'{step["type"]}({", ".join(f"{k}={v!r}" for k, v in step.items() if k != "type")})'
        for step in pipeline
    ]


def check_checkpoint_fits(cfg: Config, checkpoint: str) -> None:
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope('mmaction')
    model = MODELS.build(cfg.model)
    mismatch = state_dict_mismatch(model.state_dict(), load_state_dict(checkpoint))
    if mismatch:
        raise UserError(f'checkpoint {checkpoint} does not fit the model of the config: {mismatch}')


def evaluate(
    config: str,
    checkpoint: str,
    data: str | DatasetContents,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
) -> ModelScores:
    """Run the test loop on ``data`` (see ``build_test_config``); returns the metrics dict
    that main() writes as JSON."""
    from mmengine.runner import Runner

    if work_dir is None:  # the test loop's logs only: nothing to keep
        with tempfile.TemporaryDirectory(prefix='video_kd_eval_') as tmp:
            return evaluate(config, checkpoint, data, tmp, cfg_options)
    register_all_modules()
    cfg, classes = build_test_config(config, checkpoint, data, work_dir, cfg_options)
    check_checkpoint_fits(cfg, checkpoint)
    results = Runner.from_cfg(cfg).test()
    matrix = results['confusion_matrix/result'].tolist()
    return dict(
        config=str(config),
        test_pipeline=describe_test_pipeline(cfg),
        checkpoint=str(checkpoint),
        num_samples=int(sum(map(sum, matrix))),
        top1_acc=float(results['acc/top1']),
        top5_acc=float(results['acc/top5']),
        mean_class_acc=float(results['acc/mean1']),
        classes=classes,
        confusion_matrix=matrix,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    overrides = checked_cfg_options(args.config, args.cfg_options)  # before anything runs
    metrics = evaluate(args.config, args.checkpoint, args.data_root, args.work_dir, overrides)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    logger.info(
        'top-1 %.4f  top-5 %.4f  mean-class %.4f on %d videos -> %s',
        metrics['top1_acc'],
        metrics['top5_acc'],
        metrics['mean_class_acc'],
        metrics['num_samples'],
        out,
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
