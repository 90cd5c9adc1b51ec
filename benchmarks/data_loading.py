"""Decode throughput of the video pipeline vs the KD step: is a step bound by loading or compute?

Runs each config's *train* pipeline (decord decode, sampling, multi-scale crop,
resize, flip, format) on generated MP4 clips in one process (= one dataloader
worker) and reports clips/s.  With results/kd_step.json present, it also puts
the per-clip step time next to it and says how many dataloader workers keep
up with the KD step (and with the cached KD step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'full'], choices=['tiny', 'full'])
    parser.add_argument('--clips', type=int, default=60, help='clips decoded per size')
    parser.add_argument(
        '--video-size',
        type=int,
        default=0,
        help='side of the generated clips (default: 64 tiny, 320 full)',
    )
    parser.add_argument(
        '--num-frames',
        type=int,
        default=64,
        help='frames per generated clip (Kinetics clips: ~250)',
    )
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default='data_loading')
    return parser.parse_args(argv)


def measure(size: str, args, work: Path) -> dict:
    from mmaction.registry import DATASETS
    from mmengine.registry import init_default_scope

    from video_kd.data.data_stream import set_data_root
    from video_kd.data.dataset import generate_dataset

    side = args.video_size or (64 if size == 'tiny' else 320)
    root = generate_dataset(
        work / f'data_{size}',
        num_classes=5,
        train_per_class=max(1, math.ceil(args.clips / 5)),
        val_per_class=1,
        num_frames=args.num_frames,
        size=side,
    )
    config = common.PAIRS['tsm'][size]
    cfg = common.load_kd_config(config, 5)
    set_data_root(cfg, root)
    init_default_scope('mmaction')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    dataset[0]  # warm-up (imports, decoder)
    times = []
    for index in range(min(args.clips, len(dataset))):
        start = time.perf_counter()
        sample = dataset[index]
        times.append(time.perf_counter() - start)
    stats = common.summary(times)
    return {
        'size': size,
        'config': config,
        'video_side': side,
        'frames_per_video': args.num_frames,
        'clip_shape': list(sample['inputs'].shape),
        'seconds_per_clip': stats,
        'clips_per_s_one_worker': 1 / stats['median'],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    common.quiet_mmengine()
    with tempfile.TemporaryDirectory(prefix='data_loading_') as tmp:
        results = [measure(size, args, Path(tmp)) for size in args.sizes]
    kd_path = common.RESULTS / 'kd_step.json'
    kd = json.loads(kd_path.read_text()) if kd_path.is_file() else None
    rows = []
    for r in results:
        row = [
            r['size'],
            f'{r["video_side"]}px x {r["frames_per_video"]}f',
            'x'.join(map(str, r['clip_shape'])),
            f'{r["clips_per_s_one_worker"]:.1f}',
        ]
        r['vs_kd_step'] = {}
        for step in (kd or {}).get('results', []):
            if step['size'] != r['size']:
                continue
            for variant in ('student', 'kd_mmrazor', 'kd_cached'):
                v = step['variants'].get(variant)
                if not v:
                    continue
                per_clip = v['seconds']['median'] / step['batch_clips']
                load = r['seconds_per_clip']['median']
                r['vs_kd_step'][f'{step["pair"]} {variant}'] = {
                    'step_s_per_clip': per_clip,
                    'load_s_per_clip': load,
                    'bound': 'loading' if load > per_clip else 'compute',
                    'workers_to_keep_up': math.ceil(load / per_clip),
                }
        summary = (
            '; '.join(
                f'{k}: {v["step_s_per_clip"]:.3f} s/clip, {v["bound"]}-bound'
                for k, v in r['vs_kd_step'].items()
                if 'kd_mmrazor' in k
            )
            or 'run kd_step.py first'
        )
        rows.append([*row, f'{r["seconds_per_clip"]["median"]:.3f}', summary])
    common.print_table(
        ['size', 'videos', 'clip tensor', 'clips/s (1 worker)', 's/clip', 'vs step time'], rows
    )
    common.write_result(args.out, {'threads': args.threads, 'results': results})
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
