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
import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.artifacts import DatasetContents, ModelScores
from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.data.data_stream import use_test_data
from video_kd.distill.train_config import collect_over_process_group
from video_kd.openmmlab.cfg_options import checked_cfg_options
from video_kd.openmmlab.checkpoints import load_state_dict, state_dict_mismatch
from video_kd.openmmlab.config import load_config, student_model_cfg
from video_kd.openmmlab.runtime import (
    dist_backend,
    init_cpu_process_group,
    is_main_process,
    launcher_from_env,
    register_all_modules,
)

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
        '--launcher',
        choices=('none', 'pytorch'),
        default=None,
        help="pytorch: one of torchrun's processes, each testing its share of the val list "
        '(default: pytorch under torchrun, else none)',
    )
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
    launcher: str = 'none',
) -> tuple[Config, list[str]]:
    """The config's test loop on ``data``: a local dataset root, or a prepared dataset's
    metadata (the Dataset artifact), whose val split is streamed where it is.

    ``launcher='pytorch'`` (under torchrun): every rank tests its share of the val list
    (mmengine's ``DefaultSampler``, in order) and the metrics gather the ranks' results
    over the process group (``collect_over_process_group``)."""
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
    cfg.launcher = launcher
    cfg.default_hooks.pop('checkpoint', None)  # testing writes no checkpoints
    if launcher == 'pytorch':
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = dist_backend()
        if dist_backend() == 'gloo':  # mmengine's DDP wrapper pins device_ids: GPU only
            cfg.model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False
            )
        collect_over_process_group(cfg)
    return cfg, classes


def test_config_hash(cfg: Config, classes: list[str]) -> str:
    """sha256 of what decides a model's scores in a test config (the model, the test views,
    the test loop, the evaluator, the classes), not where the data or the checkpoint are:
    two runs on the same val list and checkpoint with the same hash score the same."""
    loader = cfg.get('test_dataloader', {})
    decisive = {
        'model': cfg.model,
        'pipeline': loader.get('dataset', {}).get('pipeline', []),
        'classes': classes,
        'test_cfg': cfg.get('test_cfg'),
        'test_evaluator': [  # where the ranks' results are gathered changes no score
            {k: v for k, v in metric.items() if k != 'collect_device'}
            for metric in cfg.get('test_evaluator', [])
        ],
    }
    text = json.dumps(decisive, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_hash_of(config: str, data: str | DatasetContents) -> str:
    """``test_config_hash`` of ``config``'s test loop on ``data``, without a checkpoint or a
    run: what the evaluate step keys its score cache with before it scores anything."""
    register_all_modules()
    with tempfile.TemporaryDirectory(prefix='video_kd_eval_') as tmp:
        cfg, classes = build_test_config(config, 'checkpoint.pth', data, tmp)
    return test_config_hash(cfg, classes)


SAMPLE_INDEX = 'sample_idx'  # mmengine's BaseDataset numbers each sample so


def track_sample_index(cfg: Config) -> None:
    """Carry each sample's index into its data sample (``PackActionInputs``' meta_keys),
    so that the predictions can be checked: every index once, none twice."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] in ('PackActionInputs', 'mmaction.PackActionInputs'):
            keys = tuple(step.get('meta_keys', ('img_shape', 'img_key', 'video_id', 'timestamp')))
            step['meta_keys'] = (*keys, SAMPLE_INDEX) if SAMPLE_INDEX not in keys else keys


@METRICS.register_module()
class PerSamplePredictions(BaseMetric):
    """Each val sample's prediction (top-5 labels and the top-1 score) and label, in sample
    order, written by rank 0 to ``out_file``.

    mmengine's ``collect_results`` interleaves the ranks' parts back into sample order and
    cuts the sampler's padding (the last batch of a distributed run repeats samples up to an
    even share); the indices are checked anyway, so a sample counted twice or dropped stops
    the evaluation instead of giving a wrong score.
    """

    default_prefix = 'predictions'

    def __init__(self, out_file: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_file = out_file

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            scores = sample['pred_score'].float().cpu()
            top5 = scores.topk(min(5, scores.numel())).indices.tolist()
            self.results.append(
                dict(
                    index=int(sample[SAMPLE_INDEX]),
                    label=int(sample['gt_label'].item()),
                    top5=top5,
                    score=round(float(scores[top5[0]]), 6),
                )
            )

    def compute_metrics(self, results: list) -> dict:
        ordered = sorted(results, key=lambda r: r['index'])
        indices = [r['index'] for r in ordered]
        if indices != list(range(len(indices))):
            seen = set(indices)
            raise RuntimeError(
                f'{len(indices)} predictions, {len(indices) - len(seen)} repeated, indices '
                f'{min(seen, default=0)}..{max(seen, default=0)}: not every sample exactly once'
            )
        Path(self.out_file).write_text(json.dumps(ordered))
        return {'count': len(ordered)}


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
    launcher: str = 'none',
) -> ModelScores:
    """Run the test loop on ``data`` (see ``build_test_config``); returns the metrics dict
    that main() writes as JSON, with each sample's prediction (``predictions``, in sample
    order).  Under torchrun (``launcher='pytorch'``) every rank runs it and every rank
    returns the same gathered scores."""
    from mmengine.runner import Runner

    if work_dir is None:  # the test loop's logs only: nothing to keep
        with tempfile.TemporaryDirectory(prefix='video_kd_eval_') as tmp:
            return evaluate(config, checkpoint, data, tmp, cfg_options, launcher)
    register_all_modules()
    cfg, classes = build_test_config(config, checkpoint, data, work_dir, cfg_options, launcher)
    described = describe_test_pipeline(cfg)
    config_hash = test_config_hash(cfg, classes)
    track_sample_index(cfg)
    predictions_file = Path(work_dir) / 'predictions.json'
    cfg.test_evaluator.append(dict(type='PerSamplePredictions', out_file=str(predictions_file)))
    if launcher == 'pytorch':
        collect_over_process_group(cfg)
    check_checkpoint_fits(cfg, checkpoint)
    init_cpu_process_group(launcher)
    results = Runner.from_cfg(cfg).test()  # the same on every rank (mmengine broadcasts them)
    matrix = results['confusion_matrix/result'].tolist()
    return dict(
        config=str(config),
        test_pipeline=described,
        config_hash=config_hash,
        checkpoint=str(checkpoint),
        num_samples=int(sum(map(sum, matrix))),
        top1_acc=float(results['acc/top1']),
        top5_acc=float(results['acc/top5']),
        mean_class_acc=float(results['acc/mean1']),
        classes=classes,
        confusion_matrix=matrix,
        predictions=_read_predictions(predictions_file),
    )


def _read_predictions(path: Path) -> list[dict]:
    """Rank 0's gathered predictions; the other ranks have none (the scores they return are
    the broadcast ones, and only rank 0 publishes)."""
    return json.loads(path.read_text()) if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    overrides = checked_cfg_options(args.config, args.cfg_options)  # before anything runs
    launcher = args.launcher or launcher_from_env()
    metrics = evaluate(
        args.config, args.checkpoint, args.data_root, args.work_dir, overrides, launcher
    )
    if not is_main_process():
        return 0  # rank 0 writes what every rank got
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
