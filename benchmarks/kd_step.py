"""What a knowledge-distillation training step costs next to a student-only step.

For each seed pair (TSM-R50 -> TSM-MobileNetV2, TSN-Swin -> TSN-R50), tiny
and/or full-size, the same batches go through these steps, interleaved
(A, B, C, ... A, B, C ...) after warm-up so that a noisy machine slows all of
them alike:

  student         student forward + loss + backward + optimizer step
  kd_mmrazor      SingleTeacherDistill.loss as MMRazor runs it (teacher under
                  no_grad in train mode, norm layers in eval) + backward + step
  kd_eval_infer   teacher in eval mode under torch.inference_mode
                  (video_kd.distill.fast_teacher.InferenceTeacherDistill, the training
                  path of `video_kd.distill.train --teacher-precision fp32`)
  kd_eval_bf16    + bf16 autocast for the teacher (--teacher-precision bf16;
                  CPUs with avx512_bf16/AMX, GPUs)
  kd_eval_cl      + channels_last teacher (may be unsupported: reported as such)
  kd_cached       CachedLogitsSingleTeacherDistill with every view cached
                  (video_kd.distill.logit_cache): no teacher forward at all

A step starts from preprocessed inputs (the data preprocessor and loading are
measured by data_loading.py).  Reported: median, quartiles and range of each
step time, and the KD/student ratio (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch

VARIANTS = ('student', 'kd_mmrazor', 'kd_eval_infer', 'kd_eval_bf16', 'kd_eval_cl', 'kd_cached')
TARGET = 1.25
CACHED_TARGET = 1.05


def target_of(variant: str) -> float:
    return CACHED_TARGET if variant == 'kd_cached' else TARGET


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--pairs', nargs='+', default=['tsm', 'tsn'], choices=list(common.PAIRS))
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'full'], choices=['tiny', 'full'])
    parser.add_argument('--tiny-batch', type=int, default=8)
    parser.add_argument('--full-batch', type=int, default=2)
    parser.add_argument('--tiny-repeats', type=int, default=30)
    parser.add_argument('--full-repeats', type=int, default=6)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--num-classes', type=int, default=400)
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', default='kd_step', help='results/<out>.json')
    return parser.parse_args(argv)


def bf16_supported(device: str) -> bool:
    if device.startswith('cuda'):
        return torch.cuda.is_bf16_supported()
    flags = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def build(kd_config: str, num_classes: int, device: str):
    from mmrazor.registry import MODELS

    from video_kd.distill import logit_cache  # noqa: F401  (registers the cached algorithm)

    cfg = common.load_kd_config(kd_config, num_classes)
    cfg.model.type = 'CachedLogitsSingleTeacherDistill'  # = SingleTeacherDistill + a cache path
    torch.manual_seed(0)
    algo = MODELS.build(cfg.model).to(device)
    algo.init_weights()
    algo.train()
    return cfg, algo


def make_batch(cfg, batch: int, num_classes: int, device: str):
    from mmaction.structures import ActionDataSample

    segments, size = common.clip_shape(cfg)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, segments, 3, size, size, generator=gen).to(device)
    samples = []
    for i in range(batch):
        sample = ActionDataSample().set_gt_label(torch.tensor([i % num_classes]))
        sample.set_metainfo({'kd_view_key': f'bench-{i}'})
        samples.append(sample.to(device))
    return inputs, samples


def total_loss(losses: dict) -> torch.Tensor:
    return sum(v for k, v in losses.items() if 'loss' in k)


@contextlib.contextmanager
def uncached(algo, precision: str):
    """The cached algorithm as plain InferenceTeacherDistill: every step runs the teacher.

    That is the training path of ``video_kd.distill.train --teacher-precision <precision>``.
    """
    from video_kd.distill.fast_teacher import autocast_dtype

    dtype = algo.teacher_dtype
    algo.teacher_records = algo.run_teacher  # instead of the cache lookup
    algo.teacher_dtype = autocast_dtype(precision)
    try:
        yield
    finally:
        del algo.teacher_records
        algo.teacher_dtype = dtype


def inference_teacher_loss(algo, inputs, samples, precision: str = 'fp32'):
    from video_kd.distill.fast_teacher import InferenceTeacherDistill

    with uncached(algo, precision):
        return InferenceTeacherDistill.loss(algo, inputs, samples)


def step_fns(algo, inputs, samples, optimizer, variants):
    from mmrazor.models import SingleTeacherDistill

    def step(loss_fn):
        def run():
            optimizer.zero_grad(set_to_none=True)
            total_loss(loss_fn()).backward()
            optimizer.step()

        return run

    fns = {
        'student': step(lambda: algo.student(inputs, samples, mode='loss')),
        'kd_mmrazor': step(lambda: SingleTeacherDistill.loss(algo, inputs, samples)),
        'kd_eval_infer': step(lambda: inference_teacher_loss(algo, inputs, samples)),
        'kd_eval_bf16': step(lambda: inference_teacher_loss(algo, inputs, samples, 'bf16')),
        'kd_eval_cl': step(lambda: inference_teacher_loss(algo, inputs, samples)),
        'kd_cached': step(lambda: algo.loss(inputs, samples)),
    }
    return {name: fns[name] for name in variants}


def sync(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def bench_one(pair: str, size: str, args) -> dict:
    kd_config = common.PAIRS[pair][size]
    batch = args.tiny_batch if size == 'tiny' else args.full_batch
    repeats = args.tiny_repeats if size == 'tiny' else args.full_repeats
    cfg, algo = build(kd_config, args.num_classes, args.device)
    inputs, samples = make_batch(cfg, batch, args.num_classes, args.device)
    optimizer = torch.optim.SGD(
        [p for p in algo.student.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
    )
    variants = list(args.variants)
    skipped = {}
    if 'kd_eval_bf16' in variants and not bf16_supported(args.device):
        variants.remove('kd_eval_bf16')
        skipped['kd_eval_bf16'] = 'no bf16 support on this device'
    if 'kd_cached' in variants:  # fill the cache once: every timed step is a hit
        algo.fill_teacher_recorders(inputs, samples)
    fns = step_fns(algo, inputs, samples, optimizer, variants)
    if 'kd_eval_cl' in variants:
        algo.teacher.to(memory_format=torch.channels_last)
        try:
            fns['kd_eval_cl']()
        except Exception as error:
            variants.remove('kd_eval_cl')
            skipped['kd_eval_cl'] = f'{type(error).__name__}: {str(error).splitlines()[0][:160]}'
            del fns['kd_eval_cl']
        finally:
            algo.teacher.to(memory_format=torch.contiguous_format)
    times = {name: [] for name in fns}
    for round_index in range(args.warmup + repeats):
        for name, fn in fns.items():
            if name == 'kd_eval_cl':
                algo.teacher.to(memory_format=torch.channels_last)
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            elapsed = time.perf_counter() - start
            if name == 'kd_eval_cl':
                algo.teacher.to(memory_format=torch.contiguous_format)
            if round_index >= args.warmup:
                times[name].append(elapsed)
    result = {
        'kd_config': kd_config,
        'pair': common.PAIR_NAMES[pair],
        'size': size,
        'batch_clips': batch,
        'segments_x_crop': list(common.clip_shape(cfg)),
        'num_classes': args.num_classes,
        'repeats': repeats,
        'warmup': args.warmup,
        'skipped': skipped,
        'variants': {},
    }
    for name, values in times.items():
        ratios = [v / s for v, s in zip(values, times['student'], strict=False)]
        result['variants'][name] = {
            'seconds': common.summary(values),
            'ratio_to_student': common.summary(ratios),
            'clips_per_s': batch / statistics.median(values),
        }
    del algo
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for size in args.sizes:
        for pair in args.pairs:
            print(f'... {pair} {size}', flush=True)
            results.append(bench_one(pair, size, args))
    rows = []
    for r in results:
        for name, v in r['variants'].items():
            ratio = v['ratio_to_student']
            rows.append(
                [
                    r['pair'],
                    r['size'],
                    r['batch_clips'],
                    name,
                    f'{v["seconds"]["median"]:.3f}',
                    f'[{v["seconds"]["min"]:.3f}, {v["seconds"]["max"]:.3f}]',
                    f'{ratio["median"]:.2f}x',
                    ''
                    if name == 'student'
                    else ('yes' if ratio['median'] <= target_of(name) else 'no')
                    + f' (<= {target_of(name)}x)',
                ]
            )
        for name, why in r['skipped'].items():
            rows.append([r['pair'], r['size'], r['batch_clips'], name, '-', '-', '-', why])
    common.print_table(
        ['pair', 'size', 'batch', 'step', 'median s', 'range s', 'KD/student', 'target met'], rows
    )
    common.write_result(
        args.out,
        {
            'target_ratio': TARGET,
            'cached_target_ratio': CACHED_TARGET,
            'threads': args.threads,
            'device': args.device,
            'results': results,
        },
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
