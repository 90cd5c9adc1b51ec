"""Checkpoint bytes per run in S3: before and after retention and the teacher-free KD checkpoint.

Before (issue 21 point 9), ``S3CheckpointHook`` kept every ``epoch_N.pth`` it uploaded, each
with the frozen teacher's weights.  Now a run keeps the newest ``keep_checkpoints`` (default
3) and the best by the val metric (``best_*.pth``, saved by mmengine without the optimizer),
none with the teacher (``video_kd.distill.frozen_teacher``).  Files per run follow from the
resolved config's ``CheckpointHook`` (interval, the last epoch) over the epochs.

* the demo (the tiny TSM pair, 15 epochs, ``video-kd run-local``): one checkpoint
  **measured** — the real models built from the tiny KD config, one optimizer step so the
  optimizer holds its state, written with mmengine's ``save_checkpoint`` as the Runner
  writes it (with and without the teacher, and as a best file) — times the files per run;
* the seed's two pairs at 100 epochs (TSM-R50 -> TSM-MobileNetV2, TSN-Swin -> TSN-R50):
  **computed** from the parameter and buffer counts of the real models built from our K400
  configs (fp32, 4 bytes each) plus the optimizer state as saved (SGD momentum: one fp32
  copy of each trainable parameter; Adam/AdamW: two).  The demo row checks the formula
  against the measured file (``computed / measured``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch

FP32 = 4
DEMO_EPOCHS = 15  # video-kd run-local's default (--epochs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--epochs', type=int, default=100, help="the seed pairs' epochs")
    parser.add_argument('--keep', type=int, default=3, help='keep_checkpoints (default 3)')
    parser.add_argument('--num-classes', type=int, default=400)
    return parser.parse_args(argv)


def resolved(config: str, keep: int, epochs: int, num_classes: int):
    """The run's config as the train step resolves it (retention mapped onto CheckpointHook)."""
    from video_kd.distill import train_config

    common.quiet_mmengine()
    options = train_config.TrainOptions(max_epochs=epochs, keep_checkpoints=keep)
    return train_config.resolve(config, options, num_classes=num_classes)


def build(cfg):
    from mmrazor.registry import MODELS

    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def optimizer_slots(cfg) -> int:
    """fp32 copies of each trainable parameter the optimizer saves."""
    optimizer = cfg.optim_wrapper.optimizer
    if optimizer.type in ('Adam', 'AdamW'):
        return 2
    return 1 if optimizer.type == 'SGD' and optimizer.get('momentum', 0) else 0


def computed_parts(model, cfg) -> dict:
    """Bytes of one checkpoint's parts, from the counts (fp32)."""
    state = model.state_dict()
    teacher = sum(t.numel() for k, t in state.items() if k.startswith('teacher.'))
    rest = sum(t.numel() for k, t in state.items() if not k.startswith('teacher.'))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        'teacher_params_and_buffers': teacher,
        'student_params_and_buffers': rest,
        'trainable_params': trainable,
        'optimizer_slots': optimizer_slots(cfg),
        'teacher_bytes': teacher * FP32,
        'student_bytes': rest * FP32,
        'optimizer_bytes': trainable * FP32 * optimizer_slots(cfg),
    }


def files_per_run(cfg, epochs: int) -> dict:
    """Epoch checkpoints written (CheckpointHook's interval, the last epoch too) and kept."""
    hook = cfg.default_hooks.checkpoint
    interval = hook.get('interval', 1)
    written = epochs // interval + (1 if epochs % interval and hook.get('save_last', True) else 0)
    validates = cfg.get('val_cfg') is not None and cfg.train_cfg.get('val_interval', 1) <= epochs
    return {
        'interval': interval,
        'written': written,
        'kept': min(written, hook.max_keep_ckpts),
        'best': 1 if validates and hook.get('save_best') else 0,
    }


def run_bytes(parts: dict, files: dict) -> dict:
    full = parts['teacher_bytes'] + parts['student_bytes'] + parts['optimizer_bytes']
    lean = parts['student_bytes'] + parts['optimizer_bytes']
    before = files['written'] * full
    after = files['kept'] * lean + files['best'] * parts['student_bytes']
    return {'checkpoint_before': full, 'checkpoint_after': lean, 'before': before, 'after': after}


def measure_demo(cfg) -> dict:
    """One real checkpoint of the tiny pair, as the Runner writes it: whole, teacher-free, best."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    from video_kd.distill.frozen_teacher import FrozenTeacherCheckpointHook

    model = build(cfg)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loss = sum(p.float().square().sum() for p in model.parameters() if p.requires_grad)
    optim.update_params(loss)  # the optimizer's state exists after the first step
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, teacher, optimizer in (
            ('whole', True, True),
            ('no_teacher', False, True),
            ('best', False, False),
        ):
            checkpoint = {'meta': {'epoch': 1}, 'state_dict': weights_to_cpu(model.state_dict())}
            if optimizer:
                checkpoint['optimizer'] = optim.state_dict()
            if not teacher:
                runner = SimpleNamespace(model=model)
                FrozenTeacherCheckpointHook().before_save_checkpoint(runner, checkpoint)
            path = Path(tmp) / f'{name}.pth'
            save_checkpoint(checkpoint, str(path))
            sizes[name] = path.stat().st_size
    return sizes


def row(label: str, config: str, epochs: int, args, measure: bool) -> dict:
    cfg = resolved(config, args.keep, epochs, args.num_classes if not measure else 3)
    model = build(cfg)
    parts = computed_parts(model, cfg)
    del model
    files = files_per_run(cfg, epochs)
    result = {
        'pair': label,
        'config': config,
        'epochs': epochs,
        'parts': parts,
        'files': files,
        'computed': run_bytes(parts, files),
    }
    if measure:
        sizes = measure_demo(cfg)
        result['measured_checkpoint'] = sizes
        result['measured'] = {
            'before': files['written'] * sizes['whole'],
            'after': files['kept'] * sizes['no_teacher'] + files['best'] * sizes['best'],
        }
        result['computed_over_measured'] = result['computed']['checkpoint_before'] / sizes['whole']
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [
        row(f'demo: {common.PAIR_NAMES["tsm"]} (tiny)', common.PAIRS['tsm']['tiny'], DEMO_EPOCHS,
            args, measure=True),
        row(common.PAIR_NAMES['tsm'], common.PAIRS['tsm']['full'], args.epochs, args, False),
        row(common.PAIR_NAMES['tsn'], common.PAIRS['tsn']['full'], args.epochs, args, False),
    ]  # fmt: skip
    table = []
    for r in rows:
        size = r.get('measured') or r['computed']
        table.append(
            [r['pair'], r['epochs'], r['files']['written'], f'{size["before"] / 1e9:.2f} GB',
             r['files']['kept'] + r['files']['best'], f'{size["after"] / 1e9:.2f} GB']
        )  # fmt: skip
    common.print_table(['pair', 'epochs', 'files before', 'before', 'files after', 'after'], table)
    common.write_result('checkpoint_bytes', {'keep_checkpoints': args.keep, 'results': rows})
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
