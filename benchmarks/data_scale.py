"""Data at scale: data prep, time to the first training step, pod disk, GETs, streamed throughput.

For each dataset size N, on a local moto S3 server behind benchmarks/s3_proxy.py
(which adds ``--latency-ms`` to every request, standing in for a real object
store, and counts the requests):

1. a Kinetics-style dataset of N videos in MMAction2's layout (``videos_train/``,
   ``videos_val/``, the two ``kinetics400_*_list_videos.txt``, a label map) is put
   in the bucket; generation is cheap: a few distinct tiny clips stored under
   N keys (every key is checked and read as its own object);
2. data prep (``data_layout.resolve`` + ``data_check.validate_source`` + publishing
   the lists) runs twice: first (nothing cached) and again on the unchanged
   dataset (everything cached);
3. a bare student "pod" (a fresh Python process, as a PyTorchJob pod starts)
   trains the student config ``tsm_mobilenetv2_tiny`` alone with its data
   streamed from S3 (``data_stream.use_dataset``) for ``--iters`` steps: the
   time from the process start to the end of the first training step, its
   peak local disk (work dir + TMPDIR, sampled), the S3 GETs of the videos it
   read, and the step rate.  It is not ``video_kd.distill.train_pod.main``: no
   torchrun, no download of the run's config, teacher or resume checkpoint,
   no teacher; what those add to the time to the first step is not measured;
4. the same pod trains from a local-disk copy of the dataset (hard links), the
   baseline for the streamed step rate; streamed and local runs alternate
   ``--rounds`` times.

Targets (issue 11): time to first step <= 30 s and pod disk <= 1 GB at every N;
unchanged re-run <= 10% of the first; streamed step rate >= 95% of local disk
at 20 ms.  The largest N takes a while on 2 cores: run it once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = ('move_up', 'move_down', 'grow', 'shrink', 'circle')
DISTINCT_CLIPS = 4  # per class: encoded once, stored under many keys
ACCESS = {'AWS_ACCESS_KEY_ID': 'bench', 'AWS_SECRET_ACCESS_KEY': 'bench'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--sizes', nargs='+', type=int, default=[1000, 5000, 20000])
    parser.add_argument('--latency-ms', type=float, default=20.0, help='added per S3 request')
    parser.add_argument('--val-fraction', type=float, default=0.1, help='share of N in val')
    parser.add_argument('--iters', type=int, default=40, help='training steps per pod run')
    parser.add_argument(
        '--old-way-up-to',
        type=int,
        default=1000,
        help="also time main's download-everything-first at N up to this",
    )
    parser.add_argument('--rounds', type=int, default=3, help='streamed/local pod alternations')
    parser.add_argument('--workers', type=int, default=2, help='data loader workers per pod')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--processes', type=int, default=2, help='data prep check processes')
    parser.add_argument('--threads', type=int, default=8, help='data prep fetch threads each')
    parser.add_argument('--out', default='data_scale', help='results/<out>.json')
    parser.add_argument('--pod', help=argparse.SUPPRESS)  # internal: run as the pod
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- servers
def start_moto(tmp: Path) -> tuple[subprocess.Popen, str]:
    """A moto S3 server subprocess on a free port (as tests/conftest.py starts it)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    with open(tmp / 'moto.log', 'wb') as log:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f'http://127.0.0.1:{port}'
    _MOTO_PID[:] = [proc.pid]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + '/moto-api/', timeout=1).close()
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint  # any HTTP answer: it is up
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError('moto server did not start')


# --------------------------------------------------------------------------- dataset
def encode_clips(tmp: Path) -> dict[str, list[bytes]]:
    """A few real clips per class (the generator's renderer), encoded once."""
    import numpy as np

    from video_kd.data.dataset import _render_clip, write_video

    rng = np.random.default_rng(0)
    clips = {}
    for motion in CLASSES:
        clips[motion] = []
        for index in range(DISTINCT_CLIPS):
            path = tmp / 'clips' / f'{motion}_{index}.mp4'
            write_video(path, _render_clip(motion, 16, 64, rng))
            clips[motion].append(path.read_bytes())
    return clips


def k400_like_check(tmp: Path, side: int = 256, frames: int = 250) -> dict:
    """Data prep's decode check of one Kinetics-like clip (10 s at 25 fps): its CPU cost."""
    import numpy as np

    from video_kd.data.data_check import check_video_bytes
    from video_kd.data.dataset import _render_clip, write_video

    path = tmp / 'k400_like.mp4'
    write_video(path, _render_clip('circle', frames, side, np.random.default_rng(0)), fps=25)
    data = path.read_bytes()
    times = []
    for _ in range(3):
        start = time.process_time()
        assert check_video_bytes(data, 8) is None
        times.append(time.process_time() - start)
    return {'side': f'{side}x{side}', 'frames': frames, 'bytes': len(data), 'check_s': min(times)}


def k400_list_load(tmp: Path, n_train: int = 240_000) -> dict:
    """What a pod spends on a Kinetics-sized train list: read + parse + index 240k lines."""
    import common

    common.quiet_mmengine()
    from video_kd.data.data_stream import StreamingVideoDataset

    lines = ''.join(
        f'{CLASSES[i % 5]}/{i:011d}_000000_000010.mp4 {i % 5}\n' for i in range(n_train)
    )
    path = tmp / 'k400_train_list.txt'
    path.write_text(lines)
    start = time.perf_counter()
    dataset = StreamingVideoDataset(
        ann_file=str(path), pipeline=[], data_prefix={'video': 's3://b/v'}
    )
    seconds = time.perf_counter() - start
    assert len(dataset) == n_train
    return {'lines': n_train, 'bytes': len(lines), 'seconds': seconds}


def dataset_keys(n: int, val_fraction: float) -> dict[str, list[tuple[str, int]]]:
    """(path relative to the split's root, label) of every video."""
    n_val = max(len(CLASSES), int(n * val_fraction))
    splits = {'train': n - n_val, 'val': n_val}
    return {
        split: [
            (f'{CLASSES[i % len(CLASSES)]}/{split}_{i:07d}.mp4', i % len(CLASSES))
            for i in range(count)
        ]
        for split, count in splits.items()
    }


def put_dataset(client, bucket: str, keys, clips) -> None:
    """The MMAction2 layout in the bucket (straight to moto: setup is not measured)."""
    client.create_bucket(Bucket=bucket)

    def put(item):
        split, (rel, label), index = item
        body = clips[CLASSES[label]][index % DISTINCT_CLIPS]
        client.put_object(Bucket=bucket, Key=f'k400/videos_{split}/{rel}', Body=body)

    items = [(s, e, i) for s, entries in keys.items() for i, e in enumerate(entries)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, items))
    for split, entries in keys.items():
        body = ''.join(f'{rel} {label}\n' for rel, label in entries)
        client.put_object(
            Bucket=bucket, Key=f'k400/kinetics400_{split}_list_videos.txt', Body=body.encode()
        )
    client.put_object(
        Bucket=bucket, Key='k400/label_map_k400.txt', Body='\n'.join(CLASSES).encode() + b'\n'
    )


def local_copy(root: Path, keys, clips) -> Path:
    """The same dataset on local disk: one file per distinct clip, hard-linked under N names."""
    sources = {}
    for motion, bodies in clips.items():
        for index, body in enumerate(bodies):
            path = root / 'distinct' / f'{motion}_{index}.mp4'
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            sources[motion, index] = path
    for split, entries in keys.items():
        for i, (rel, label) in enumerate(entries):
            target = root / f'videos_{split}' / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(sources[CLASSES[label], i % DISTINCT_CLIPS], target)
    return root


# --------------------------------------------------------------------------- data prep
def data_prep(uri: str, out: Path, data_uri: str, args) -> tuple[float, dict]:
    from video_kd.data import data_check, data_layout
    from video_kd.data.data_check import dataset_meta
    from video_kd.storage import s3

    start = time.perf_counter()
    source = data_layout.resolve(uri)
    shutil.rmtree(out, ignore_errors=True)
    report = data_check.validate_source(
        source,
        out,
        cache_uri=f's3://{s3.parse_s3_uri(uri)[0]}/runs/cache/video-check',
        processes=args.processes,
        threads=args.threads,
    )
    for path in sorted(out.iterdir()):
        s3.upload_file(path, s3.join_uri(data_uri, path.name), overwrite=True)
    meta = dataset_meta(source, report, data_uri)
    return time.perf_counter() - start, {**meta, 'report': report}


# --------------------------------------------------------------------------- the pod
def run_pod(meta: dict, work: Path, args, env: dict) -> dict:
    """Train in a fresh process, as a pod would; returns what it measured."""
    work.mkdir(parents=True)
    (work / 'meta.json').write_text(json.dumps(meta))
    (work / 'tmp').mkdir()
    pod_args = {
        'meta': str(work / 'meta.json'),
        'work': str(work / 'job'),
        'iters': args.iters,
        'workers': args.workers,
        'batch': args.batch,
        'start': time.time(),
    }
    server_cpu = _server_cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, '--pod', json.dumps(pod_args)],
        env={**os.environ, **env, 'TMPDIR': str(work / 'tmp'), 'OMP_NUM_THREADS': '1'},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode:
        raise RuntimeError(f'pod failed:\n{result.stderr[-4000:]}')
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    wall = time.perf_counter() - wall
    # the S3 server (moto) and the latency proxy share this box's cores with the pod;
    # a real object store does not: say how much of the box they took
    measured['server_cpu_s'] = _server_cpu_seconds() - server_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured['pod_cpu_s'] = (after.ru_utime + after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    measured['server_cpu_share'] = measured['server_cpu_s'] / (wall * (os.cpu_count() or 1))
    return measured


_MOTO_PID: list[int] = []


def _server_cpu_seconds() -> float:
    """CPU seconds used so far by moto (a subprocess) and this process (the proxy)."""
    ticks = os.sysconf('SC_CLK_TCK')
    total = time.process_time()
    for pid in _MOTO_PID:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def largest_files(roots: list[Path], count: int = 3) -> list[tuple[str, int]]:
    """What takes a pod's disk (to say what the peak is made of)."""
    files = [(str(p), p.stat().st_size) for root in roots for p in root.rglob('*') if p.is_file()]
    return sorted(files, key=lambda item: -item[1])[:count]


def pod_main(pod_args: dict) -> int:
    """The pod: imports, config, streamed data, Runner, ``iters`` steps."""
    work = Path(pod_args['work'])
    scratch = [work, Path(os.environ['TMPDIR'])]
    peak = [0]
    stop = threading.Event()

    def sample_disk() -> None:
        while not stop.wait(0.25):
            peak[0] = max(peak[0], sum(dir_bytes(p) for p in scratch))

    threading.Thread(target=sample_disk, daemon=True).start()
    import common

    common.quiet_mmengine()
    from mmengine.hooks import Hook

    from video_kd.data.data_stream import use_dataset
    from video_kd.distill import train

    times: list[float] = []

    class StepClock(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            times.append(time.time())

    meta = json.loads(Path(pod_args['meta']).read_text())
    options = [
        f'train_dataloader.batch_size={pod_args["batch"]}',
        f'train_dataloader.num_workers={pod_args["workers"]}',
        'default_hooks.checkpoint.interval=100000',
        'default_hooks.logger.interval=100000',
    ]
    argv = ['tsm_mobilenetv2_tiny', '--work-dir', str(work), '--cfg-options', *options]
    cfg = train.build_config(train.parse_args(argv))
    use_dataset(cfg, meta, loaders=('train_dataloader',))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=pod_args['iters'], val_interval=10**9)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg[key] = None
    cfg.param_scheduler = []
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    runner.register_hook(StepClock(), priority='LOWEST')
    runner.train()
    stop.set()
    steady = [b - a for a, b in itertools.pairwise(times[5:])]  # after warm-up
    print(
        json.dumps(
            {
                'first_step_s': times[0] - pod_args['start'],
                'steps': len(times),
                'step_s_median': statistics.median(steady),
                'steps_per_s': (len(steady)) / (times[-1] - times[5]),
                'peak_disk_bytes': max(peak[0], sum(dir_bytes(p) for p in scratch)),
                'largest_files': largest_files(scratch),
            }
        )
    )
    return 0


# --------------------------------------------------------------------------- one size
def measure_size(n: int, args, endpoint: str, tmp: Path, clips) -> dict:
    import boto3
    from s3_proxy import S3Proxy

    client = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1', **_keys())
    bucket = f'scale-{n}'
    keys = dataset_keys(n, args.val_fraction)
    start = time.perf_counter()
    put_dataset(client, bucket, keys, clips)
    print(f'N={n}: dataset put in {time.perf_counter() - start:.0f} s', flush=True)
    proxy = S3Proxy(endpoint, latency=args.latency_ms / 1000).start()
    env = {'S3_ENDPOINT_URL': proxy.url}
    os.environ.update(env)
    try:
        uri, data_uri = f's3://{bucket}/k400', f's3://{bucket}/runs/run-1/data'
        first_s, meta = data_prep(uri, tmp / f'prep-{n}', data_uri, args)
        checked_first = meta['report']['checked']
        first_requests = dict(proxy.counts)
        proxy.reset_counts()
        rerun_s, meta = data_prep(uri, tmp / f'prep-{n}', data_uri, args)
        rerun_requests = dict(proxy.counts)
        print(f'N={n}: data prep {first_s:.1f} s, unchanged re-run {rerun_s:.1f} s', flush=True)
        old_download = None
        if n <= args.old_way_up_to:
            old_download = download_everything_s(f'{uri}/videos_train', tmp / 'old-way')
            print(f'N={n}: downloading every training video first took {old_download:.1f} s')
        local_root = local_copy(tmp / f'local-{n}', keys, clips)
        local_meta = json.loads(json.dumps(meta))
        for split in ('train', 'val'):
            local_meta['splits'][split]['videos_uri'] = str(local_root / f'videos_{split}')
        streamed, local = [], []
        for round_index in range(args.rounds):
            proxy.reset_counts()
            streamed.append(run_pod(meta, tmp / f'pod-{n}-s{round_index}', args, env))
            streamed[-1]['gets'] = _gets(proxy)
            local.append(run_pod(local_meta, tmp / f'pod-{n}-l{round_index}', args, env))
            print(f'N={n} round {round_index}: streamed {streamed[-1]}, local {local[-1]}')
    finally:
        proxy.stop()
        shutil.rmtree(tmp / f'local-{n}', ignore_errors=True)
        _delete_bucket(client, bucket)
    # extrapolated, not counted: a pod run reads iters x batch videos (part of an epoch);
    # every GET of a video was a distinct object (the sampler permutes; no retry, no
    # re-read), so an epoch would make one GET per training video, plus one for the list
    repeat = statistics.median(s['gets']['videos'] / s['gets']['distinct_videos'] for s in streamed)
    n_train = len(keys['train'])
    return {
        'n_videos': n,
        'n_train': n_train,
        'n_val': len(keys['val']),
        'data_prep_first_s': first_s,
        'data_prep_rerun_s': rerun_s,
        'rerun_ratio': rerun_s / first_s,
        'data_prep_requests': {'first': first_requests, 'rerun': rerun_requests},
        'checked_first': checked_first,
        'checked_rerun': meta['report']['checked'],
        'rejected': meta['rejected'],
        'pod_streamed': streamed,
        'pod_local': local,
        'first_step_s_max': max(p['first_step_s'] for p in streamed),
        'peak_disk_bytes_max': max(p['peak_disk_bytes'] for p in streamed),
        'gets_per_distinct_video': repeat,
        'gets_per_epoch': round(repeat * n_train) + 1,  # extrapolated (above); + the list
        'main_download_s': old_download,
        'streamed_vs_local': statistics.median(
            s['steps_per_s'] / loc['steps_per_s'] for s, loc in zip(streamed, local, strict=True)
        ),
    }


def _keys() -> dict:
    return {'aws_access_key_id': 'bench', 'aws_secret_access_key': 'bench'}


def _gets(proxy) -> dict:
    """GETs of one pod run: videos (and how many distinct), lists and the rest."""
    paths = [(p, n) for p, n in proxy.paths.items() if p.startswith('GET ')]
    return {
        'videos': sum(n for p, n in paths if p.endswith('.mp4')),
        'distinct_videos': sum(1 for p, _ in paths if p.endswith('.mp4')),
        'other': sum(n for p, n in paths if not p.endswith('.mp4')),
    }


def download_everything_s(uri: str, dest: Path) -> float:
    """What main's pods did before step 1: download every video (s3.download_dir)."""
    from video_kd.storage import s3

    start = time.perf_counter()
    s3.download_dir(uri, dest)
    seconds = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    return seconds


def _delete_bucket(client, bucket: str) -> None:
    paginator = client.get_paginator('list_objects_v2')
    for page in paginator.paginate(Bucket=bucket):
        objects = [{'Key': o['Key']} for o in page.get('Contents', [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={'Objects': objects})
    client.delete_bucket(Bucket=bucket)


def merged_with_earlier(name: str, results: list[dict]) -> list[dict]:
    """Earlier results of other sizes are kept: the largest N runs once, on its own."""
    import common

    path = common.RESULTS / f'{name}.json'
    measured = {r['n_videos'] for r in results}
    old = json.loads(path.read_text()) if path.is_file() else {'results': []}
    run = {
        'created': old.get('created'),
        'command': old.get('command'),
        'load_avg_start': old.get('environment', {}).get('load_avg_start', [0])[0],
    }
    kept = [dict(r, run=r.get('run', run)) for r in old['results'] if r['n_videos'] not in measured]
    return sorted(kept + results, key=lambda r: r['n_videos'])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pod:
        return pod_main(json.loads(args.pod))
    import common

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop moto on the way out
    os.environ.update({**ACCESS, 'AWS_DEFAULT_REGION': 'us-east-1'})
    with tempfile.TemporaryDirectory(prefix='data_scale_') as tmp_name:
        tmp = Path(tmp_name)
        proc, endpoint = start_moto(tmp)
        try:
            clips = encode_clips(tmp)
            probe = k400_like_check(tmp)
            list_probe = k400_list_load(tmp)
            results = [measure_size(n, args, endpoint, tmp, clips) for n in args.sizes]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    results = merged_with_earlier(args.out, results)
    payload = {
        'latency_ms': args.latency_ms,
        'pod': {'config': 'tsm_mobilenetv2_tiny', 'batch': args.batch, 'workers': args.workers},
        'clip': {'side': 64, 'frames': 16, 'distinct_per_class': DISTINCT_CLIPS},
        'results': results,
        'k400_like_check': probe,
        'k400_list_load': list_probe,
    }
    common.write_result(args.out, payload)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
