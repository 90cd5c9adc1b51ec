"""Teacher-logit cache: what a miss, a hit and the stored cache cost, and the targets.

Measures, for each seed pair: the teacher forward that a cache miss costs per
clip (eval mode, as the cache fills), the size of one cached entry and of a
whole cache (Kinetics-400 scale extrapolated), and writing/loading a shard of
``--entries`` entries (local disk; and S3 too when S3_ENDPOINT_URL and
credentials are set).  It then checks the issue's targets from the other
results when present: cached KD step <= 1.05x student-only (results/
kd_step.json) and accuracy with the cache within noise of the uncached KD
(results/kd_gain.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch

TARGET = 1.05
K400_TRAIN_VIDEOS = 240_436


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--pairs', nargs='+', default=['tsm', 'tsn'], choices=list(common.PAIRS))
    parser.add_argument('--size', default='tiny', choices=['tiny', 'full'])
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--entries', type=int, default=2000)
    parser.add_argument('--num-views', type=int, default=4)
    parser.add_argument('--num-classes', type=int, default=400)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--out', default='logit_cache')
    return parser.parse_args(argv)


def miss_and_hit(pair: str, args) -> dict:
    from kd_step import build, make_batch

    cfg, algo = build(common.PAIRS[pair][args.size], args.num_classes, 'cpu')
    inputs, samples = make_batch(cfg, args.batch, args.num_classes, 'cpu')
    miss, hit = [], []
    for _ in range(args.repeats + 1):
        algo.logit_cache = type(algo.logit_cache)()  # empty: every sample misses
        start = time.perf_counter()
        algo.fill_teacher_recorders(inputs, samples)
        miss.append(time.perf_counter() - start)
        start = time.perf_counter()
        algo.fill_teacher_recorders(inputs, samples)  # now every sample hits
        hit.append(time.perf_counter() - start)
    entry = algo.logit_cache.get(samples[0].metainfo['kd_view_key'])
    entry_bytes = sum(t.numel() * t.element_size() for t in entry.values())
    return {
        'pair': common.PAIR_NAMES[pair],
        'size': args.size,
        'batch_clips': args.batch,
        'miss_s_per_clip': common.summary([m / args.batch for m in miss[1:]]),
        'hit_s_per_clip': common.summary([h / args.batch for h in hit[1:]]),
        'entry_shape': {k: list(t.shape) for k, t in entry.items()},
        'entry_bytes': entry_bytes,
        'k400_cache_gib': entry_bytes * K400_TRAIN_VIDEOS * args.num_views / 2**30,
    }


def storage(args) -> dict:
    from video_kd.distill import logit_cache

    cache = logit_cache.LogitCache()
    for i in range(args.entries):
        cache.put(
            f'{i:032x}',
            {'logits': torch.randn(8, args.num_classes)},
            {
                'video': f'c/{i}.mp4',
                'view': 0,
                'frame_inds': list(range(8)),
                'crop_bbox': [0, 0, 56, 56],
                'flip': False,
            },
        )
    with tempfile.TemporaryDirectory(prefix='logit_cache_') as local:
        targets = [('local', local)]
        if os.environ.get('S3_ENDPOINT_URL') and os.environ.get('S3_BENCH_BUCKET'):
            bucket = os.environ['S3_BENCH_BUCKET']
            targets.append(('s3', f's3://{bucket}/bench-{uuid.uuid4().hex[:8]}'))
        return {
            'entries': args.entries,
            **{name: time_flush_and_load(cache, name, location) for name, location in targets},
        }


def time_flush_and_load(cache, name: str, location: str) -> dict:
    from video_kd.distill import logit_cache

    cache.new_keys = list(cache.entries)
    start = time.perf_counter()
    where = cache.flush(location, 'bench')
    write = time.perf_counter() - start
    start = time.perf_counter()
    logit_cache.LogitCache().load(location)
    read = time.perf_counter() - start
    size = Path(where).stat().st_size if name == 'local' else None
    return {'write_s': write, 'load_s': read, 'shard_bytes': size}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [miss_and_hit(pair, args) for pair in args.pairs]
    store = storage(args)
    rows = [
        [
            r['pair'],
            r['size'],
            f'{r["miss_s_per_clip"]["median"] * 1000:.1f}',
            f'{r["hit_s_per_clip"]["median"] * 1000:.3f}',
            str(r['entry_shape']['logits']),
            f'{r["entry_bytes"]}',
            f'{r["k400_cache_gib"]:.1f}',
        ]
        for r in results
    ]
    common.print_table(
        [
            'pair',
            'size',
            'miss ms/clip',
            'hit ms/clip',
            'entry',
            'bytes',
            f'K400 x{args.num_views} views GiB',
        ],
        rows,
    )
    local = store['local']
    print(
        f'shard of {store["entries"]} entries: {local["shard_bytes"] / 2**20:.1f} MiB, '
        f'write {local["write_s"]:.2f} s, load {local["load_s"]:.2f} s (local disk)'
    )
    targets = {}
    kd_path, gain_path = common.RESULTS / 'kd_step.json', common.RESULTS / 'kd_gain.json'
    if kd_path.is_file():
        for r in json.loads(kd_path.read_text())['results']:
            v = r['variants'].get('kd_cached')
            if v:
                ratio = v['ratio_to_student']['median']
                targets[f'{r["pair"]} {r["size"]} cached/student'] = {
                    'ratio': ratio,
                    'target': TARGET,
                    'met': ratio <= TARGET,
                }
    if gain_path.is_file():
        gains = json.loads(gain_path.read_text()).get('gains', {})
        if 'kd_cached_minus_kd' in gains:
            g = gains['kd_cached_minus_kd']
            targets['cached minus uncached KD top-1'] = {
                'mean': g['mean'],
                'stdev': g['stdev'],
                'n': g['n'],
            }
    for name, t in targets.items():
        print(
            f'{name}: '
            + ', '.join(
                f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}' for k, v in t.items()
            )
        )
    common.write_result(
        args.out,
        {'threads': args.threads, 'results': results, 'storage': store, 'targets': targets},
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
