"""`video-kd runs list` at 1,000 runs: parallel small GETs vs one at a time.

Generates run directories (tests/run_records.py: the records `video-kd runs` reads: a
finished run's decision holds its row, one GET; the others' evaluation and export) in a local moto S3 server (a subprocess on 127.0.0.1, objects in
memory), then times, interleaved round by round: the listing with parallel GETs on one
shared client (``storage.s3.read_many``, 32 threads, what the command does) and with one
GET at a time, against moto directly and through benchmarks/s3_proxy.py adding 20 ms per
request (a real object store's latency); and once each, the whole command as a user runs
it (a new Python process: imports, listing, GETs, printing).  Target: under 10 s at 1,000
runs.

moto is not AWS or MinIO (no network latency, one Python process serving): read the
ratio and the order of magnitude, not the milliseconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
import common
import run_records
from s3_proxy import S3Proxy
from s3_servers import MotoServer

TARGET_S = 10.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--runs', type=int, default=1000, help='run directories (default 1000)')
    parser.add_argument('--repeats', type=int, default=3, help='rounds of each variant')
    parser.add_argument('--workers', type=int, default=32, help='parallel GETs (default 32)')
    parser.add_argument(
        '--latency-ms', type=float, default=20.0,
        help='latency a proxy adds per request, as a real object store has (default 20)',
    )  # fmt: skip
    return parser.parse_args(argv)


def _time_list(run_index, s3, bucket: str, variants: dict, repeats: int) -> dict:
    """Seconds per variant (name -> (endpoint, workers)), interleaved round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (endpoint, workers) in variants.items():
            os.environ['S3_ENDPOINT_URL'] = endpoint  # the client is cached per endpoint
            s3.READ_MANY_WORKERS = workers
            start = time.perf_counter()
            lines = len(run_index.list_runs(bucket, 'kd').splitlines())
            seconds[name].append(time.perf_counter() - start)
    return seconds, lines


def _cli_wall(bucket: str, endpoint: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, '-m', 'video_kd.cli', 'runs', '--s3-bucket', bucket,
         '--s3-prefix', 'kd', 'list'],
        check=True, stdout=subprocess.DEVNULL, env={**os.environ, 'S3_ENDPOINT_URL': endpoint},
    )  # fmt: skip
    return time.perf_counter() - start


def _cli_startup() -> float:
    """A new process's cost before any request: Python, the imports, the parser
    (`video-kd runs --help`)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, '-m', 'video_kd.cli', 'runs', '--help'],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix='runs-list-bench-') as tmp,
        MotoServer(Path(tmp) / 'moto') as server,
    ):
        os.environ.update(server.env())
        proxy = S3Proxy(server.endpoint, latency=args.latency_ms / 1000).start()
        from video_kd.deploy import run_index
        from video_kd.storage import s3

        bucket = server.create_bucket('bench')
        started = time.perf_counter()
        run_records.generate(bucket, 'kd', args.runs)
        generate_s = time.perf_counter() - started
        slow = f'+{args.latency_ms:g} ms'
        variants = {
            'parallel': (server.endpoint, args.workers),
            'serial': (server.endpoint, 1),
            f'parallel {slow}': (proxy.url, args.workers),
            f'serial {slow}': (proxy.url, 1),
        }
        proxy.reset_counts()
        seconds, lines = _time_list(run_index, s3, bucket, variants, args.repeats)
        assert lines == args.runs + 1, lines  # every run, and the header
        gets = proxy.counts['GET'] // (2 * args.repeats)  # per listing (2 variants via proxy)
        os.environ['S3_ENDPOINT_URL'] = server.endpoint
        cli = {'direct': _cli_wall(bucket, server.endpoint), slow: _cli_wall(bucket, proxy.url)}
        startup = _cli_startup()
        proxy.stop()
    stats = {name: common.summary(values) for name, values in seconds.items()}
    result = {
        'server': 'moto 5.2.5 (local subprocess)',
        'runs': args.runs,
        'gets': gets,
        'workers': args.workers,
        'latency_ms': args.latency_ms,
        'generate_s': generate_s,
        'seconds': stats,
        'cli_wall_s': cli,
        'cli_startup_s': startup,
        'target_s': TARGET_S,
        'met': max(cli.values()) < TARGET_S,
    }
    for name, stat in stats.items():
        print(f'{args.runs} runs, {name}: {stat["median"]:.2f} s')
    print(f'`video-kd runs list` (a new process): {cli} (target < {TARGET_S:g} s), {gets} GETs')
    print(f'`video-kd runs --help` (a new process: imports, parser): {startup:.2f} s')
    common.write_result('runs_list', result)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
