"""What atomic "never overwrite" costs: conditional uploads vs boto3's managed transfer.

"Never overwrite" used to be check-then-put: a HEAD, then boto3's managed
transfer (s3transfer: 8 MiB parts, 10 threads).  It is now one conditional
write (video_kd.storage.s3_conditional): one PutObject with ``If-None-Match: *`` up to
64 MiB, above that a multipart upload of 8 MiB parts on 10 threads (as s3transfer) whose
completion carries the condition.  This times both on the same files against
a local moto server (a subprocess on 127.0.0.1, objects in memory), per size,
interleaved, after one warm-up round; and the small-object claim (run.json):
HEAD + PutObject vs one conditional PutObject.  Each object is deleted after
it is timed.

moto's throughput is not MinIO's or AWS's: read the *ratio* of the two
columns, not the MB/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
import common
from s3_servers import MotoServer

_MIB = 1024 * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument(
        '--sizes-mib', nargs='+', type=int, default=[1, 32, 128, 384], help='file sizes'
    )
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds per size')
    parser.add_argument('--claims', type=int, default=50, help='timed run.json claims')
    return parser.parse_args(argv)


def old_never_overwrite(s3, path: Path, uri: str) -> None:
    """What upload_file(overwrite=False) did before: HEAD, then the managed transfer."""
    if s3.exists(uri):
        raise s3.ObjectExistsError(uri)
    bucket, key = s3.parse_s3_uri(uri)
    s3.s3_client().upload_file(str(path), bucket, key)


def time_uploads(s3, bucket: str, path: Path, repeats: int) -> dict[str, list[float]]:
    variants = {
        'check_then_managed_transfer': lambda uri: old_never_overwrite(s3, path, uri),
        'conditional': lambda uri: s3.upload_file(path, uri),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(repeats + 1):  # round 0 warms up connections and the probe
        for name, upload in variants.items():
            uri = f's3://{bucket}/bench/{uuid.uuid4().hex}'
            start = time.perf_counter()
            upload(uri)
            took = time.perf_counter() - start
            b, key = s3.parse_s3_uri(uri)
            s3.s3_client().delete_object(Bucket=b, Key=key)
            if round_index:
                seconds[name].append(took)
    return seconds


def time_claims(s3, bucket: str, count: int) -> dict[str, list[float]]:
    body = b'{"run_id": "x", "job_id": "y"}'

    def old_claim(uri: str) -> None:
        if s3.exists(uri):
            raise s3.ObjectExistsError(uri)
        b, key = s3.parse_s3_uri(uri)
        s3.s3_client().put_object(Bucket=b, Key=key, Body=body)

    variants = {
        'check_then_put': old_claim,
        'create_if_absent': lambda uri: s3.create_if_absent(uri, body),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(count):
        for name, claim in variants.items():
            uri = f's3://{bucket}/claims/{uuid.uuid4().hex}/run.json'
            start = time.perf_counter()
            claim(uri)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix='s3-upload-bench-') as tmp,
        MotoServer(Path(tmp) / 'moto') as server,
    ):
        os.environ.update(server.env())
        from video_kd.storage import s3

        bucket = server.create_bucket('bench')
        results = []
        for size in args.sizes_mib:
            path = Path(tmp) / f'{size}.bin'
            path.write_bytes(os.urandom(size * _MIB))
            seconds = time_uploads(s3, bucket, path, args.repeats)
            path.unlink()
            row = {'size_mib': size, 'variants': {}}
            for name, values in seconds.items():
                stats = common.summary(values)
                row['variants'][name] = {'seconds': stats, 'mib_per_s': size / stats['median']}
            old = row['variants']['check_then_managed_transfer']['seconds']['median']
            row['conditional_over_old'] = row['variants']['conditional']['seconds']['median'] / old
            results.append(row)
            print(
                f'{size} MiB: old {old:.3f} s, conditional '
                f'{row["variants"]["conditional"]["seconds"]["median"]:.3f} s '
                f'({row["conditional_over_old"]:.2f}x)'
            )
        claims = {
            name: common.summary([1000 * v for v in values])
            for name, values in time_claims(s3, bucket, args.claims).items()
        }
        print(f'claim ms: {claims}')
    common.write_result(
        's3_upload',
        {'server': 'moto 5.2.5 (local subprocess)', 'results': results, 'claims_ms': claims},
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
