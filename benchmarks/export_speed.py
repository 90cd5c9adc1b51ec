"""Teacher vs student inference speed on the CPU: PyTorch eager and ONNX Runtime, one run.

For each KD pair, the teacher and the student are wrapped and exported as the export
step exports the student (video_kd.deploy.export.RecognizerScores -> ONNX), then timed
interleaved (video_kd.deploy.speed): latency at batch 1, throughput at batch 8, at the seed's
input size (8 segments x 224x224, 400 classes: the full configs) and at the tiny
configs' own (8 x 56x56, the size of the tests and the demo). Params and FLOPs from
mmengine's counter (fvcore convention). Target: the TSM student >= 5x faster than the
TSM-R50 teacher in ONNX Runtime at the seed's size. Writes
benchmarks/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGET_SPEEDUP = 5.0
SIZES = {
    'seed': ('full', (8, 3, 224, 224), 400),
    'tiny': ('tiny', (8, 3, 56, 56), 5),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1]
    )
    parser.add_argument('--pairs', nargs='+', default=['tsm'], choices=sorted(common.PAIRS))
    parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (after 1 warm-up)')
    parser.add_argument('--batch', type=int, default=8, help='batch size of the throughput runs')
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch and ONNX Runtime threads (default 1: on a shared 2-core machine a '
        "neighbour's load stalls 2-thread OpenMP regions in PyTorch by seconds)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    common.quiet_mmengine()
    from video_kd.deploy.speed import build_pair, measure_pair

    results = []
    for pair in args.pairs:
        for label in args.sizes:
            size, shape, classes = SIZES[label]
            models = build_pair(common.PAIRS[pair][size], classes)
            result = measure_pair(models, shape, args.batch, args.repeats, args.threads)
            ort = result['speedup']['onnxruntime']['latency']['median']
            result.update(
                pair=common.PAIR_NAMES[pair],
                size=label,
                kd_config=common.PAIRS[pair][size],
                num_classes=classes,
                target=(
                    {'onnxruntime_latency_speedup': TARGET_SPEEDUP, 'met': ort >= TARGET_SPEEDUP}
                    if pair == 'tsm' and label == 'seed'
                    else None
                ),
            )
            results.append(result)
            print_result(result)
    common.write_result('export_speed', {'results': results, 'target_speedup': TARGET_SPEEDUP})
    return 0


def print_result(result: dict) -> None:
    rows = []
    for name, entry in result['models'].items():
        for engine in ('pytorch', 'onnxruntime'):
            rows.append(
                [
                    name,
                    engine,
                    f'{entry[engine]["latency_ms"]["median"]:.1f}',
                    f'{entry[engine]["throughput_clips_per_s"]["median"]:.2f}',
                    f'{entry["flops"] / 1e9:.2f}',
                    f'{entry["params"] / 1e6:.2f}',
                ]
            )
    print(f'\n{result["pair"]}, {result["size"]} ({"x".join(map(str, result["clip_shape"]))})')
    common.print_table(['model', 'engine', 'ms (b1)', 'clips/s (b8)', 'GFLOPs', 'M params'], rows)
    for engine, ratio in result['speedup'].items():
        print(
            f'speedup {engine}: latency {ratio["latency"]["median"]:.2f}x, '
            f'throughput {ratio["throughput"]["median"]:.2f}x (FLOP ratio {result["flop_ratio"]:.1f}x)'
        )


if __name__ == '__main__':
    raise SystemExit(main())
