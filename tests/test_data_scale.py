"""Data at Kinetics scale: layouts, parallel cached validation, streaming reads from S3.

Everything speaks real HTTP to a moto server (tests/conftest.py); the fault-injecting
proxy of benchmarks/s3_proxy.py sits in front of it where a test needs 503s or counts.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import boto3
import pytest

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.progress import Progress, format_duration
from video_kd.data import data_check, data_layout
from video_kd.data.dataset import generate_dataset
from video_kd.storage import s3, s3_fileio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
from s3_proxy import S3Proxy

SMALL = dict(num_classes=2, train_per_class=3, val_per_class=2, num_frames=12, size=64)


def _client(endpoint: str):
    return boto3.client(
        's3',
        endpoint_url=endpoint,
        region_name='us-east-1',
        aws_access_key_id='k',
        aws_secret_access_key='s',
    )


def upload_tree(root: Path, bucket: str, prefix: str, endpoint: str) -> str:
    client = _client(endpoint)
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        client.upload_file(str(path), bucket, f'{prefix}/{path.relative_to(root).as_posix()}')
    return f's3://{bucket}/{prefix}'


@pytest.fixture(scope='module')
def small_tree(tmp_path_factory):
    """The same tiny dataset in both layouts, on disk."""
    base = tmp_path_factory.mktemp('scale')
    return {
        layout: generate_dataset(base / layout, layout=layout, **SMALL)
        for layout in ('video-kd', 'mmaction2')
    }


# --------------------------------------------------------------------------- progress
def test_progress_logs_rate_and_eta_not_a_line_per_item(caplog):
    now = [0.0]
    progress = Progress(20000, 'validated', 'videos', every=5, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger='video_kd.core.progress'):
        for _ in range(1200):
            now[0] += 1 / 85  # 85 videos a second
            progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 3  # one line per 5 s, not 1200
    assert progress.line() == 'validated 1200/20000 videos, 85/s, ETA 3m41s'  # 18800 left at 85/s
    assert format_duration(3725) == '1h02m' and format_duration(7) == '7s'


def test_progress_last_line_says_done():
    now = [0.0]
    progress = Progress(2, 'checked', clock=lambda: now[0])
    now[0] = 4
    progress.advance(2)
    assert progress.line() == 'checked 2/2 items, 0/s, done in 4s'


# --------------------------------------------------------------------------- layouts
def test_own_layout_on_disk_is_found_as_before(small_tree):
    found = data_layout.resolve(str(small_tree['video-kd']))
    assert found.layout == 'video-kd'
    assert found.classes == ['move_up', 'move_down']
    assert found.splits['train'].videos_uri.endswith('/videos')
    assert found.splits['train'].lines[0] == 'move_up/train_0000.mp4 0'
    assert len(found.splits['val'].lines) == 4


def test_mmaction2_layout_on_s3_is_read_as_is(small_tree, bucket, s3_env):
    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    found = data_layout.resolve(uri)
    assert found.layout == 'mmaction2'
    assert found.classes_from == f'{uri}/label_map_k400.txt'
    assert found.splits['train'].videos_uri == f'{uri}/videos_train'
    assert found.splits['val'].videos_uri == f'{uri}/videos_val'
    assert found.splits['val'].list_uri == f'{uri}/kinetics400_val_list_videos.txt'


def test_official_csv_annotations_give_classes_and_lists(tmp_path):
    (tmp_path / 'annotations').mkdir()
    header = 'label,youtube_id,time_start,time_end,split\n'
    (tmp_path / 'annotations' / 'kinetics_train.csv').write_text(
        header + 'air drumming,abc,14,24,train\nabseiling,xyz,0,10,train\n'
    )
    (tmp_path / 'annotations' / 'kinetics_val.csv').write_text(
        header + 'abseiling,qqq,100,110,val\n'
    )
    found = data_layout.resolve(str(tmp_path))
    assert found.classes == ['abseiling', 'air drumming']  # sorted, as MMAction2 labels them
    assert found.classes_from == 'annotations CSV'
    assert found.splits['train'].lines == [
        'air_drumming/abc_000014_000024.mp4 1',
        'abseiling/xyz_000000_000010.mp4 0',
    ]
    assert found.splits['val'].lines == ['abseiling/qqq_000100_000110.mp4 0']
    assert found.splits['val'].videos_uri == str(tmp_path / 'videos_val')


def test_names_can_be_overridden_in_the_uri(small_tree, tmp_path):
    root = small_tree['mmaction2']
    uri = f'{root}?val_list=kinetics400_train_list_videos.txt&val_videos=videos_train'
    found = data_layout.resolve(uri)
    assert found.splits['val'].lines == found.splits['train'].lines
    with pytest.raises(data_layout.LayoutError, match=r'unknown dataset option.*bogus'):
        data_layout.resolve(f'{root}?bogus=1')


def test_class_names_fall_back_to_the_list_directories(small_tree, tmp_path):
    import shutil

    copy = shutil.copytree(small_tree['mmaction2'], tmp_path / 'k')
    (copy / 'label_map_k400.txt').unlink()
    found = data_layout.resolve(str(copy))
    assert found.classes == ['move_up', 'move_down']
    assert 'directories of' in found.classes_from


def test_a_directory_in_neither_layout_is_one_clear_error(tmp_path):
    with pytest.raises(
        data_layout.LayoutError, match=r'no layout matches: expected train_list\.txt'
    ):
        data_layout.resolve(str(tmp_path))
    with pytest.raises(data_layout.LayoutError, match='no such directory'):
        data_layout.resolve(str(tmp_path / 'nope'))


# --------------------------------------------------------------------------- CPUs, memory
def test_usable_cpus_is_the_smaller_of_affinity_and_the_cgroup_quota(tmp_path):
    import os

    affinity = len(os.sched_getaffinity(0))
    assert data_check.usable_cpus(tmp_path) == affinity  # no cgroup files: the affinity
    (tmp_path / 'cpu.max').write_text('max 100000\n')  # cgroup v2, no limit
    assert data_check.usable_cpus(tmp_path) == affinity
    (tmp_path / 'cpu.max').write_text('50000 100000\n')  # a 500m pod limit
    assert data_check.usable_cpus(tmp_path) == 1
    (tmp_path / 'cpu.max').write_text(f'{affinity * 100000 + 50000} 100000\n')
    assert data_check.usable_cpus(tmp_path) == affinity  # a quota above the affinity
    v1 = tmp_path / 'v1' / 'cpu,cpuacct'
    v1.mkdir(parents=True)
    (v1 / 'cpu.cfs_period_us').write_text('100000\n')
    (v1 / 'cpu.cfs_quota_us').write_text('-1\n')
    assert data_check.usable_cpus(tmp_path / 'v1') == affinity
    (v1 / 'cpu.cfs_quota_us').write_text('100000\n')
    assert data_check.usable_cpus(tmp_path / 'v1') == 1


def test_data_check_uses_the_cpus_of_the_pod_not_of_the_node(
    small_tree, tmp_path, monkeypatch, caplog
):
    (tmp_path / 'cgroup').mkdir()
    (tmp_path / 'cgroup' / 'cpu.max').write_text('100000 100000\n')  # limits: cpu: 1
    monkeypatch.setattr(data_check, 'CGROUP_ROOT', tmp_path / 'cgroup')
    source = data_layout.resolve(str(small_tree['video-kd']))
    with caplog.at_level(logging.INFO, logger='video_kd.data.data_check'):
        data_check.validate_source(source, tmp_path / 'out', threads=2)
    assert '10 to check in 1 processes' in caplog.text


def test_a_process_decodes_one_video_at_a_time_and_fetches_within_its_budget(
    small_tree, monkeypatch
):
    import threading
    import time

    objects = sorted(
        data_check.list_videos(str(small_tree['video-kd'] / 'videos')).values(), key=lambda o: o.uri
    )
    real_fetch, real_check = data_check._fetch, data_check.check_video_bytes
    lock = threading.Lock()
    state = {'fetched': 0, 'decoded': 0, 'decoding': 0, 'most_decoding': 0, 'most_ahead': 0}

    def fetch(uri):
        with lock:
            state['fetched'] += 1
        return real_fetch(uri)

    def check(data, min_frames):
        with lock:
            state['decoding'] += 1
            state['most_decoding'] = max(state['most_decoding'], state['decoding'])
        time.sleep(0.05)  # a decode long enough for the GETs to run ahead
        with lock:
            ahead = state['fetched'] - state['decoded']  # fetched or in flight, not decoded
            state['most_ahead'] = max(state['most_ahead'], ahead)
            state['decoding'] -= 1
            state['decoded'] += 1
        return real_check(data, min_frames)

    monkeypatch.setattr(data_check, '_fetch', fetch)
    monkeypatch.setattr(data_check, 'check_video_bytes', check)
    verdicts = data_check.check_videos(objects, 8, processes=1, threads=4)
    assert len(verdicts) == 10 and not any(verdicts.values())
    assert state['most_decoding'] == 1  # never two decodes at once in a process
    assert state['most_ahead'] == 4  # the 4 fetching threads ran ahead of the decoding
    state.update(fetched=0, decoded=0, most_ahead=0)
    data_check.check_videos(objects, 8, processes=1, threads=4, fetch_budget=1)
    assert state['most_ahead'] == 1  # every video exceeds a 1-byte budget: none fetched ahead


def test_a_video_that_does_not_decode_is_rejected_with_ffmpegs_reason(small_tree):
    """decord only says 'Error reading N bytes...'; the reason names FFmpeg's own cause."""
    video = next((small_tree['video-kd'] / 'videos').rglob('*.mp4')).read_bytes()
    assert data_check.check_video_bytes(video, 8) is None
    truncated = data_check.check_video_bytes(video[: len(video) // 2], 8)
    assert truncated.startswith('cannot decode: moov atom not found (Error reading '), truncated
    assert data_check.ffmpeg_error(video) == ''


# --------------------------------------------------------------------------- validation
def _break_dataset(uri: str, endpoint: str) -> None:
    """One undecodable video, one list line naming nothing, one bad label."""
    bucket, key = s3.parse_s3_uri(uri)
    client = _client(endpoint)
    client.put_object(
        Bucket=bucket, Key=f'{key}/videos_train/move_up/train_0001.mp4', Body=b'not a video'
    )
    client.delete_object(Bucket=bucket, Key=f'{key}/videos_train/move_up/train_0002.mp4')
    lines = s3.read_bytes(f'{uri}/kinetics400_train_list_videos.txt').decode()
    lines += 'move_up/train_0000.mp4 7\n'
    client.put_object(
        Bucket=bucket, Key=f'{key}/kinetics400_train_list_videos.txt', Body=lines.encode()
    )


def test_validation_rejects_bad_entries_and_caches_the_verdicts(
    small_tree, bucket, s3_env, tmp_path
):
    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    _break_dataset(uri, s3_env)
    cache = f's3://{bucket}/runs/cache/video-check'
    source = data_layout.resolve(uri)
    report = data_check.validate_source(source, tmp_path / 'a', cache, processes=2, threads=2)
    reasons = {r['path']: r['reason'] for r in report['splits'][0]['rejected']}
    assert reasons['move_up/train_0001.mp4'].startswith('cannot decode')
    assert reasons['move_up/train_0002.mp4'] == 'no such object under the video root'
    assert reasons['move_up/train_0000.mp4'].startswith('unknown label')
    assert report['checked'] == 9 and report['from_cache'] == 0  # 5 train + 4 val objects
    train = (tmp_path / 'a' / 'train_list.txt').read_text().splitlines()
    assert 'move_up/train_0000.mp4 0' in train and len(train) == 4
    assert (tmp_path / 'a' / 'classes.txt').read_text() == 'move_up\nmove_down\n'

    again = data_check.validate_source(source, tmp_path / 'b', cache, processes=2, threads=2)
    assert again['checked'] == 0 and again['from_cache'] == 9
    assert (tmp_path / 'b' / 'train_list.txt').read_text() == '\n'.join(train) + '\n'

    # a grown dataset checks only its new object; other settings check everything again
    client = _client(s3_env)
    body = (small_tree['mmaction2'] / 'videos_val' / 'move_up' / 'val_0000.mp4').read_bytes()
    client.put_object(Bucket=bucket, Key='k400/videos_val/move_up/val_0009.mp4', Body=body)
    source.splits['val'].lines.append('move_up/val_0009.mp4 0')
    grown = data_check.validate_source(source, tmp_path / 'c', cache, processes=1, threads=2)
    assert grown['checked'] == 1 and grown['from_cache'] == 9

    # a replaced object (same key, same size, broken bytes) is checked again: its ETag changed
    key = 'k400/videos_val/move_down/val_0001.mp4'
    size = client.head_object(Bucket=bucket, Key=key)['ContentLength']
    client.put_object(Bucket=bucket, Key=key, Body=bytes(size))
    replaced = data_check.validate_source(source, tmp_path / 'e', cache, processes=1, threads=2)
    assert replaced['checked'] == 1 and replaced['from_cache'] == 9
    val_rejected = {r['path']: r['reason'] for r in replaced['splits'][1]['rejected']}
    assert list(val_rejected) == ['move_down/val_0001.mp4'], val_rejected
    assert val_rejected['move_down/val_0001.mp4'].startswith('cannot decode')
    assert 'move_down/val_0001.mp4 1' not in (tmp_path / 'e' / 'val_list.txt').read_text()
    other = data_check.validate_source(
        source, tmp_path / 'd', cache, min_frames=10, processes=1, threads=2
    )
    assert other['checked'] == 10


def test_a_dataset_with_nothing_usable_names_the_list(small_tree, tmp_path):
    import shutil

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    for video in (copy / 'videos').rglob('val_*.mp4'):
        video.write_bytes(b'junk')
    source = data_layout.resolve(str(copy))
    with pytest.raises(data_check.DataCheckError, match=r'no usable video among the 4 entries'):
        data_check.validate_source(source, tmp_path / 'out', processes=1, threads=1)


def test_a_mostly_unusable_split_stops_data_prep_with_the_count(small_tree, tmp_path):
    import shutil

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    for video in sorted((copy / 'videos').rglob('train_*.mp4'))[:4]:
        video.write_bytes(b'junk')  # 4 of the 6 training videos
    source = data_layout.resolve(str(copy))
    with pytest.raises(data_check.DataCheckError) as caught:
        data_check.validate_source(source, tmp_path / 'out', processes=1, threads=1)
    message = str(caught.value)
    assert message.startswith(
        f'dataset {copy}: 4 of the 6 entries of {copy / "train_list.txt"} are unusable '
        '(more than 50%; first reason: cannot decode: '
    ), message
    assert message.endswith('; the log above names up to 20)') and '\n' not in message
    assert not (tmp_path / 'out' / 'train_list.txt').exists()  # nothing written
    report = data_check.validate_source(
        source, tmp_path / 'out', processes=1, threads=1, max_unusable=0.7
    )
    assert report['splits'][0]['valid'] == 2


CHECK_THEN_DIE = """
import os, signal, sys
from video_kd.data import data_check, data_layout

real, calls = data_check.check_video_bytes, []

def check_then_die(data, min_frames):  # the 5th check: killed, as by the OOM killer
    calls.append(1)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(data, min_frames)

data_check.check_video_bytes = check_then_die
source = data_layout.resolve(sys.argv[1])
data_check.validate_source(source, sys.argv[2], sys.argv[3], processes=1, threads=1, cache_every=2)
"""


def test_a_killed_check_keeps_its_verdicts_and_a_rerun_checks_only_the_rest(
    small_tree, bucket, s3_env, tmp_path
):
    import subprocess

    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    cache = f's3://{bucket}/cache/video-check'
    killed = subprocess.run(
        [sys.executable, '-c', CHECK_THEN_DIE, uri, str(tmp_path / 'a'), cache],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup of any kind ran
    batches = [u for u in s3.list_uris(cache + '/') if '/batch-' in u]
    assert len(batches) == 2  # 4 verdicts before the kill, written 2 by 2 as they came
    again = data_check.validate_source(
        data_layout.resolve(uri), tmp_path / 'b', cache, processes=1, threads=2
    )
    assert (again['checked'], again['from_cache']) == (6, 4)


def test_cache_batches_are_merged_without_the_objects_no_longer_listed(
    small_tree, bucket, s3_env, tmp_path, monkeypatch
):
    import json

    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    cache = f's3://{bucket}/cache/video-check'
    source = data_layout.resolve(uri)
    data_check.validate_source(source, tmp_path / 'a', cache, processes=1, cache_every=1)
    batches = [u for u in s3.list_uris(cache + '/') if '/batch-' in u]
    assert len(batches) == 10  # one per verdict, as they came; 16 or fewer are kept
    monkeypatch.setattr(data_check, '_COMPACT_AFTER', 1)
    client = _client(s3_env)
    gone = 'k400/videos_val/move_down/val_0000.mp4'
    body = client.get_object(Bucket=bucket, Key=gone)['Body'].read()
    client.delete_object(Bucket=bucket, Key=gone)
    client.put_object(Bucket=bucket, Key='k400/videos_val/move_down/val_0009.mp4', Body=body)
    lines = [line for line in source.splits['val'].lines if 'move_down/val_0000' not in line]
    source.splits['val'].lines[:] = [*lines, 'move_down/val_0009.mp4 1']
    grown = data_check.validate_source(source, tmp_path / 'b', cache, processes=1)
    assert (grown['checked'], grown['from_cache']) == (1, 9)
    batches = [u for u in s3.list_uris(cache + '/') if '/batch-' in u]
    assert len(batches) == 1  # two batches (> 1) merged into one
    entries = json.loads(s3.read_bytes(batches[0]))['entries']
    assert len(entries) == 10
    assert not any(gone in key for key in entries)  # the deleted object's verdict dropped
    assert any('val_0009' in key for key in entries)


def test_a_read_failure_stops_data_prep_is_not_cached_and_a_rerun_retries_it(
    small_tree, bucket, s3_env, tmp_path, monkeypatch
):
    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    cache = f's3://{bucket}/cache/video-check'
    key = 'k400/videos_train/move_up/train_0001.mp4'
    client = _client(s3_env)
    body = client.get_object(Bucket=bucket, Key=key)['Body'].read()
    real_check = data_check.check_videos

    def vanish_after_listing(*args, **kwargs):  # listed, then gone before its GET
        client.delete_object(Bucket=bucket, Key=key)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(data_check, 'check_videos', vanish_after_listing)
    source = data_layout.resolve(uri)
    with pytest.raises(data_check.DataCheckError) as caught:
        data_check.validate_source(source, tmp_path / 'a', cache, processes=2, threads=2)
    message = str(caught.value)
    assert message.startswith(f'dataset {uri}: 1 of 10 listed videos could not be read ')
    assert f'(first: cannot read s3://{bucket}/{key}: no such object' in message
    assert message.endswith(
        'read failures are not cached and would shrink the dataset: '
        're-run data prep (it checks only these again)'
    )
    assert '\n' not in message
    monkeypatch.setattr(data_check, 'check_videos', real_check)
    client.put_object(Bucket=bucket, Key=key, Body=body)  # the store is back
    again = data_check.validate_source(source, tmp_path / 'b', cache, processes=1, threads=2)
    assert (again['checked'], again['from_cache']) == (1, 9)  # only the failed one
    assert again['rejected_total'] == 0


# --------------------------------------------------------------------------- s3 backend
@pytest.fixture
def proxy(s3_env, monkeypatch):
    """An S3Proxy in front of the moto server; the code under test goes through it."""
    server = S3Proxy(s3_env).start()
    monkeypatch.setenv('S3_ENDPOINT_URL', server.url)
    yield server
    server.stop()


def test_mmengine_reads_s3_through_the_backend(small_tree, bucket, s3_env):
    from mmengine.fileio import FileClient, get, list_from_file

    uri = upload_tree(small_tree['video-kd'], bucket, 'd', s3_env)
    s3_fileio.register()
    lines = list_from_file(f'{uri}/train_list.txt')
    assert lines[0] == 'move_up/train_0000.mp4 0'
    video = (small_tree['video-kd'] / 'videos' / 'move_up' / 'train_0000.mp4').read_bytes()
    assert get(f'{uri}/videos/move_up/train_0000.mp4') == video
    client = FileClient(s3_fileio.BACKEND_NAME)  # what DecordInit(io_backend=...) builds
    assert client.get(f'{uri}/videos/move_up/train_0000.mp4') == video


def test_throttling_is_retried_then_one_line_names_the_object(
    small_tree, bucket, s3_env, proxy, monkeypatch
):
    uri = upload_tree(small_tree['video-kd'], bucket, 'd', s3_env)
    target = f'{uri}/videos/move_up/train_0000.mp4'
    proxy.fail_next(2, 'train_0000')
    assert len(s3_fileio.get_object_bytes(target)) > 1000  # 2 x 503, then served
    assert proxy.paths['GET /' + target[len('s3://') :]] == 3

    monkeypatch.setenv('VIDEO_KD_S3_MAX_ATTEMPTS', '3')  # the one S3 policy's setting
    proxy.fail_next(3, 'train_0000')
    with pytest.raises(s3.S3Error) as caught:
        s3_fileio.get_object_bytes(target)
    assert (
        str(caught.value)
        == f'cannot read {target}: SlowDown Please reduce your request rate. (after 3 attempts)'
    )

    with pytest.raises(s3.ObjectNotFoundError, match=r'no such object .*deleted or renamed'):
        s3_fileio.get_object_bytes(f'{uri}/videos/gone.mp4')


def test_a_forked_process_builds_its_own_client(s3_env):
    import multiprocessing

    parent = s3_fileio.stream_client()
    with multiprocessing.get_context('fork').Pool(1) as pool:
        child_id = pool.apply(_client_identity)
    assert child_id not in (id(parent), -1)


def _client_identity() -> int:
    client = s3_fileio.stream_client()
    import os

    mine = [c for key, c in s3_fileio._clients.items() if key[0] == os.getpid()]
    return id(client) if mine == [client] and len(s3_fileio._clients) == 1 else -1


# --------------------------------------------------------------------------- streaming
TRAIN_OPTIONS = [
    'train_dataloader.batch_size=2',
    'val_dataloader.batch_size=2',
    'train_dataloader.num_workers=1',  # a forked worker: its own S3 client
    'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.persistent_workers=False',
    'default_hooks.checkpoint.interval=100',
]


def prepare(uri: str, out: Path, data_uri: str | None = None) -> dict:
    """Data prep as the step does it: resolve, validate, publish the lists, the metadata."""
    from video_kd.data.data_check import dataset_meta

    source = data_layout.resolve(uri)
    report = data_check.validate_source(source, out, processes=1, threads=2)
    if data_uri:
        for path in out.iterdir():
            s3.upload_file(path, s3.join_uri(data_uri, path.name))
    return dataset_meta(source, report, data_uri or str(out))


def train_one_epoch(meta: dict, work_dir: Path):
    from video_kd.data.data_stream import use_dataset
    from video_kd.distill import train

    args = train.parse_args(
        [
            *('tsm_mobilenetv2_tiny', '--work-dir', str(work_dir), '--max-epochs', '1'),
            *('--cfg-options', *TRAIN_OPTIONS),
        ]
    )
    cfg = train.build_config(args)
    classes = use_dataset(cfg, meta)
    assert cfg.train_dataloader.dataset.type == 'StreamingVideoDataset'
    return classes, train.train(cfg)


@pytest.mark.slow
def test_training_streams_from_s3_and_skips_a_vanished_video(
    small_tree, bucket, s3_env, proxy, tmp_path, caplog
):
    uri = upload_tree(small_tree['mmaction2'], bucket, 'k400', s3_env)
    meta = prepare(uri, tmp_path / 'prep', f's3://{bucket}/run/data')
    assert meta['splits']['train']['list_uri'] == f's3://{bucket}/run/data/train_list.txt'
    assert meta['splits']['train']['videos_uri'] == f'{uri}/videos_train'
    client = _client(s3_env)
    client.delete_object(Bucket=bucket, Key='k400/videos_train/move_up/train_0001.mp4')
    client.delete_object(Bucket=bucket, Key='k400/videos_val/move_down/val_0000.mp4')
    proxy.reset_counts()
    with caplog.at_level(logging.WARNING, logger='video_kd.data.data_stream'):
        classes, runner = train_one_epoch(meta, tmp_path / 'work')
    assert classes == ['move_up', 'move_down']
    assert runner.train_loop.iter >= 3  # 6 videos, batch 2: the epoch went on
    assert runner.train_loop.epoch == 1  # ... and its validation did not stop training
    # the worker's own log goes to its stderr; the GETs and the per-epoch lines tell
    gets = {p: n for p, n in proxy.paths.items() if p.startswith('GET') and p.endswith('.mp4')}
    assert any('train_0001' in p for p in gets)  # tried, failed, skipped
    assert sum(n for p, n in gets.items() if 'videos_train' in p) >= 6
    # one val pass: 4 videos, the vanished one's GET (a 404, not retried), its replacement
    assert sum(n for p, n in gets.items() if 'videos_val' in p) == 5
    assert re.search(
        r'epoch 1: training skipped \d+ unreadable videos of the \d+ read', caplog.text
    )
    assert 'epoch 1: validation skipped 1 unreadable videos of the 5 read' in caplog.text
    assert not list((tmp_path / 'work').rglob('*.mp4'))  # nothing downloaded


@pytest.mark.slow
def test_training_stops_with_exit_status_75_when_s3_goes_out_mid_epoch(
    small_tree, bucket, s3_env, proxy, tmp_path, capsys
):
    """Issue 25: S3 out mid-epoch (here: 503 on every video GET after the first two) ended
    training with "the dataset is broken", exit 2. A real training, its forked loader worker
    included: one line, exit status 75 (the launcher retries it), within a read's budget."""
    import time

    from video_kd.core.errors import TEMPORARY_FAILURE, run_cli
    from video_kd.storage.s3_policy import S3Policy

    uri = upload_tree(small_tree['video-kd'], bucket, 'd', s3_env)
    meta = prepare(uri, tmp_path / 'prep', f's3://{bucket}/run/data')
    proxy.fail_all(after=2, path_contains='.mp4')
    start = time.monotonic()
    assert run_cli(lambda: train_one_epoch(meta, tmp_path / 'work')) == TEMPORARY_FAILURE
    took = time.monotonic() - start
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(
        rf'error: cannot read {uri}/videos/\S+\.mp4: SlowDown Please reduce your request rate\. '
        r'\(after 3 attempts\); the data loader stopped: S3 is unavailable, the videos are not '
        r'unreadable \(re-run the step once it is back\)$',
        line,
    ), line
    # building the runner takes a few seconds of it; the outage itself ends within a read
    assert took <= S3Policy.from_env().request_budget_s(), took


@pytest.mark.slow
def test_a_mounted_dataset_trains_from_its_path(small_tree, tmp_path):
    meta = prepare(str(small_tree['video-kd']), tmp_path / 'prep')
    assert meta['splits']['val']['videos_uri'] == str(small_tree['video-kd'] / 'videos')
    _, runner = train_one_epoch(meta, tmp_path / 'work')
    assert runner.train_loop.iter == 3


@pytest.mark.slow
def test_a_mostly_unreadable_dataset_stops_with_the_count(small_tree, tmp_path):
    import shutil

    from video_kd.data.data_stream import DatasetUnreadableError

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    meta = prepare(str(copy), tmp_path / 'prep')
    for video in list((copy / 'videos').rglob('train_*.mp4'))[1:]:
        video.write_bytes(b'gone bad after data prep')
    with pytest.raises(DatasetUnreadableError) as caught:
        train_one_epoch(meta, tmp_path / 'work')
    message = str(caught.value)
    assert re.match(r'\d+ of \d+ videos read', message), message
    train_list = tmp_path / 'prep' / 'train_list.txt'
    assert f'videos read by the data loader of {train_list} could not be read (more than 50%)' in (
        message
    )
    assert '\n' not in message


@pytest.mark.slow
def test_evaluation_reads_only_the_val_split(small_tree, bucket, s3_env, proxy, tmp_path):
    from mmengine.runner import Runner

    from video_kd.data.data_stream import use_dataset
    from video_kd.openmmlab.config import load_config
    from video_kd.openmmlab.runtime import register_all_modules

    uri = upload_tree(small_tree['video-kd'], bucket, 'd', s3_env)
    meta = prepare(uri, tmp_path / 'prep', f's3://{bucket}/run/data')
    register_all_modules()
    cfg = load_config('tsm_mobilenetv2_tiny')
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg.pop(key, None)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator'):
        cfg.pop(key, None)
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    use_dataset(cfg, meta, loaders=('test_dataloader',))
    cfg.work_dir = str(tmp_path / 'eval')
    cfg.launcher = 'none'
    proxy.reset_counts()
    metrics = Runner.from_cfg(cfg).test()
    assert 'acc/top1' in metrics
    gets = [p for p in proxy.paths if p.startswith('GET') and p.endswith('.mp4')]
    assert len(gets) == 4 and all('/val_' in p for p in gets)
    assert not any('train_list' in p for p in proxy.paths)


# --------------------------------------------------------------------------- command line
def test_data_check_command_checks_a_dataset_and_refuses_bad_input(small_tree, tmp_path):
    import subprocess

    def run(*args):
        return subprocess.run(
            [sys.executable, '-m', 'video_kd.data.data_check', *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = run(small_tree['mmaction2'], '--out', tmp_path / 'out', '--processes', '1')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'train 6/6 usable, val 4/4 usable; 10 checked, 0 from the cache'
    assert 'validated 10/10 videos' in done.stderr
    bad = run(tmp_path / 'missing', '--out', tmp_path / 'x')
    assert bad.returncode == 2
    assert bad.stderr.strip() == f'error: dataset {tmp_path / "missing"}: no such directory'
    assert run('--help').stdout.startswith('usage: python -m video_kd.data.data_check')


def _mounted_meta(train_videos: str, val_videos: str) -> dict:
    return {
        'classes': ['a', 'b'],
        'splits': {
            'train': {'list_uri': 's3://b/run/data/train_list.txt', 'videos_uri': train_videos},
            'val': {'list_uri': 's3://b/run/data/val_list.txt', 'videos_uri': val_videos},
        },
    }


def test_a_training_pod_without_the_pvc_stops_in_one_line(
    bucket, s3_env, tmp_path, monkeypatch, capsys
):
    """A mounted-path dataset missing in the pod: one line before anything is fetched,
    not every video skipped and "the dataset is broken" 20 reads later."""
    import hashlib

    from video_kd.core.errors import run_cli
    from video_kd.distill import train_pod
    from video_kd.runs import Manifest, RunLayout

    monkeypatch.delenv('VIDEO_KD_PVC_MOUNT', raising=False)
    missing = tmp_path / 'cache' / 'k400' / 'videos_train'
    meta_uri = f's3://{bucket}/run/data/dataset.json'
    body = json.dumps(_mounted_meta(str(missing), 's3://b/k/val')).encode()
    s3.put_bytes(meta_uri, body)  # as data prep leaves it: stored and in the run's manifest
    manifest = Manifest.load(RunLayout.from_root(f's3://{bucket}/run'))
    manifest.record_stored('data', meta_uri, hashlib.sha256(body).hexdigest(), len(body))
    argv = [
        *(f's3://{bucket}/run/train/config.py', '--run-root', f's3://{bucket}/run'),
        *('--data-meta', meta_uri, '--teacher', f's3://{bucket}/run/teacher/t.pth'),
        *('--work-dir', str(tmp_path / 'work')),
    ]
    assert run_cli(train_pod.main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'error: dataset path {missing} not found in this pod: is the PVC mounted at /cache? '
        "(the chart's persistence.enabled or persistence.existingClaim mounts it in every "
        'step pod and training pod)'
    )
    assert not (tmp_path / 'work').exists()  # before the config, teacher or checkpoint

    missing.mkdir(parents=True)  # mounted: the pod goes on (to the config, absent here)
    assert run_cli(train_pod.main, argv) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            f'error: refusing s3://{bucket}/run/train/config.py: it is not in the run manifest'
        )
    )


def test_evaluation_checks_only_the_val_split_is_mounted(tmp_path, monkeypatch):
    from video_kd.data.data_stream import DatasetNotMountedError, check_mounted
    from video_kd.steps import evaluate

    monkeypatch.setenv('VIDEO_KD_PVC_MOUNT', '/data/cache')
    here = tmp_path / 'videos_val'
    here.mkdir()
    check_mounted(_mounted_meta(str(tmp_path / 'gone'), str(here)), splits=('val',))
    with pytest.raises(DatasetNotMountedError, match='mounted at /data/cache'):
        check_mounted(_mounted_meta(str(tmp_path / 'gone'), str(here)))
    missing = str(tmp_path / 'gone' / 'videos_val')
    student = {'run_root': 's3://b/kd/run', 's3_uri': 's3://b/kd/run/train/s.pth'}
    with pytest.raises(DatasetNotMountedError) as caught:  # before any checkpoint is fetched
        evaluate.run(_mounted_meta('s3://b/k/train', missing), student, 'tsm_mobilenetv2_tiny')
    assert str(caught.value).startswith(f'dataset path {missing} not found in this pod: ')


def test_use_dataset_points_loaders_at_lists_and_video_roots():
    from video_kd.data.data_stream import use_dataset
    from video_kd.openmmlab.config import load_config

    meta = {
        'classes': ['a', 'b', 'c'],
        'splits': {
            'train': {'list_uri': 's3://b/run/data/train_list.txt', 'videos_uri': 's3://u/k/vt'},
            'val': {'list_uri': '/mnt/run/val_list.txt', 'videos_uri': '/mnt/k400/videos_val'},
        },
    }
    cfg = load_config('tsm_mobilenetv2_tiny')
    assert use_dataset(cfg, meta) == ['a', 'b', 'c']
    train, test = cfg.train_dataloader.dataset, cfg.test_dataloader.dataset
    assert (train.type, train.ann_file) == (
        'StreamingVideoDataset',
        's3://b/run/data/train_list.txt',
    )
    assert train.data_prefix == {'video': 's3://u/k/vt'}
    assert train.pipeline[0] == {'type': 'DecordInit', 'io_backend': s3_fileio.BACKEND_NAME}
    assert test.ann_file == '/mnt/run/val_list.txt'
    assert test.pipeline[0]['io_backend'] == 'disk'  # a mounted volume reads from disk
    assert cfg.model.cls_head.num_classes == 3
    # inside training both loaders skip (and the hook logs it); evaluation stops
    assert train.skip_unreadable and cfg.val_dataloader.dataset.skip_unreadable
    assert test.skip_unreadable is False
    assert cfg.custom_hooks.count({'type': 'UnreadableVideosHook'}) == 1
    use_dataset(cfg, meta)
    assert cfg.custom_hooks.count({'type': 'UnreadableVideosHook'}) == 1  # not twice

    only_val = load_config('tsm_mobilenetv2_tiny')
    before = only_val.train_dataloader.dataset.ann_file
    use_dataset(only_val, meta, loaders=('test_dataloader',))
    assert only_val.train_dataloader.dataset.ann_file == before  # untouched: never read
    assert not any(
        h.get('type') == 'UnreadableVideosHook' for h in only_val.get('custom_hooks') or []
    )


def _streaming_dataset(root: Path, test_mode: bool, **kwargs):
    from mmengine.registry import init_default_scope

    from video_kd.data.data_stream import StreamingVideoDataset
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')  # the transforms are MMAction2's
    sample = dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=4)
    pipeline = [
        dict(type='DecordInit', io_backend='disk'),
        dict(sample, test_mode=test_mode),
        dict(type='DecordDecode'),
    ]
    return StreamingVideoDataset(
        ann_file=str(root / 'train_list.txt'),
        pipeline=kwargs.pop('pipeline', pipeline),
        data_prefix={'video': str(root / 'videos')},
        test_mode=test_mode,
        **kwargs,
    )


def test_training_skips_an_unreadable_video_and_counts_it(small_tree, tmp_path):
    import shutil

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    (copy / 'videos' / 'move_up' / 'train_0000.mp4').write_bytes(b'broken since data prep')
    dataset = _streaming_dataset(copy, test_mode=False)
    sample = dataset[0]  # the broken one: another video comes back instead
    assert sample['filename'] != str(copy / 'videos' / 'move_up' / 'train_0000.mp4')
    # mmengine draws the replacement at random: it may hit the broken one again
    assert dataset.unreadable >= 1 and dataset.reads == dataset.unreadable + 1


def test_evaluation_stops_on_an_unreadable_video_naming_it(small_tree, tmp_path):
    import shutil

    from video_kd.data.data_stream import VideoReadError

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    broken = copy / 'videos' / 'move_up' / 'train_0000.mp4'
    broken.unlink()
    dataset = _streaming_dataset(copy, test_mode=True)
    with pytest.raises(VideoReadError, match=f'^cannot read {re.escape(str(broken))}: '):
        dataset[0]


def test_validation_inside_training_reads_the_next_video_and_counts_the_skip(small_tree, tmp_path):
    import shutil

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    (copy / 'videos' / 'move_up' / 'train_0000.mp4').unlink()  # vanished since data prep
    dataset = _streaming_dataset(copy, test_mode=True, skip_unreadable=True)
    sample = dataset[0]
    assert sample['filename'] == str(copy / 'videos' / 'move_up' / 'train_0001.mp4')
    assert (dataset.reads, dataset.unreadable) == (2, 1)
    assert dataset[1]['filename'] == sample['filename']  # the next one is itself


def test_a_pipeline_bug_is_not_an_unreadable_video(small_tree):
    broken = [  # no DecordInit: SampleFrames finds no total_frames, a config bug
        dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=4),
        dict(type='DecordDecode'),
    ]
    dataset = _streaming_dataset(small_tree['video-kd'], test_mode=False, pipeline=broken)
    with pytest.raises(KeyError, match='total_frames'):
        dataset[0]
    assert dataset.unreadable == 0


def test_skips_are_counted_across_loader_workers_and_logged_per_epoch(small_tree, tmp_path, caplog):
    import shutil

    from torch.utils.data import DataLoader

    from video_kd.data.data_stream import UnreadableVideosHook

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    for name in ('train_0000.mp4', 'train_0002.mp4'):
        (copy / 'videos' / 'move_down' / name).write_bytes(b'broken since data prep')
    dataset = _streaming_dataset(copy, test_mode=False)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=lambda batch: batch)
    assert len([sample for batch in loader for sample in batch]) == 6  # the epoch went on
    skipped, read = dataset.unreadable, dataset.reads  # what the 2 worker processes counted
    assert skipped >= 2 and read == skipped + 6
    hook = UnreadableVideosHook()
    with caplog.at_level(logging.WARNING, logger='video_kd.data.data_stream'):
        hook.report(dataset, 'epoch 1: training')
        hook.report(dataset, 'epoch 2: training')  # nothing skipped since: no line
    lines = [r.getMessage() for r in caplog.records if 'unreadable videos of the' in r.getMessage()]
    assert lines == [
        f'epoch 1: training skipped {skipped} unreadable videos of the {read} read '
        f'(all loader workers; {skipped} so far)'
    ]


def test_an_outage_is_not_an_unreadable_video():
    """Issue 25: ``S3UnavailableError`` (and 5xx past the retries) counted as unreadable."""
    from botocore.exceptions import ClientError
    from decord import DECORDError

    from video_kd.data.data_stream import is_outage, is_read_error

    def mapped(status: int, code: str) -> s3.S3Error:  # what s3.errors makes of an answer
        answer = {'Error': {'Code': code, 'Message': ''}, 'ResponseMetadata': {}}
        answer['ResponseMetadata']['HTTPStatusCode'] = status
        with pytest.raises(s3.S3Error) as caught, s3.errors('read', 's3://b/v.mp4'):
            raise ClientError(answer, 'GetObject')
        return caught.value

    outages = [
        s3.S3UnavailableError('cannot read s3://b/v.mp4: cannot connect to the S3 server'),
        mapped(503, 'SlowDown'),
        mapped(500, 'InternalError'),
        mapped(429, 'TooManyRequests'),
    ]
    for error in outages:
        assert isinstance(error, s3.S3UnavailableError) and error.exit_status == 75, error
        assert is_outage(error) and not is_read_error(error), error
    unreadable = [
        s3.ObjectNotFoundError('cannot read s3://b/v.mp4: no such object'),
        mapped(403, 'AccessDenied'),
        FileNotFoundError('/mnt/v.mp4'),
        DECORDError('cannot decode'),
    ]
    for error in unreadable:
        assert is_read_error(error) and not is_outage(error), error
    assert not is_read_error(KeyError('total_frames'))  # a pipeline bug


def test_the_unreadable_tally_judges_the_last_reads():
    """A late-epoch failure is judged on recent reads, not on every read since the start."""
    from video_kd.data.data_stream import MIN_READS_BEFORE_STOP, _Tally, too_many_unreadable

    tally = _Tally(window=100)
    for _ in range(10_000):  # a long good epoch
        tally.record(unreadable=False)
    for bad in range(1, 52):  # then everything goes bad
        recent = tally.record(unreadable=True)
        assert too_many_unreadable(*recent, 0.5) is (bad == 51), (bad, recent)
    assert recent == (100, 51)  # 51 of the last 100: stopped after 51 reads, not ~10,000
    assert tally.totals() == (10_051, 51)  # the per-epoch log's counts: all of them

    early = _Tally(window=100)  # before the window is full: all reads so far, and a minimum
    for _ in range(MIN_READS_BEFORE_STOP - 1):
        assert not too_many_unreadable(*early.record(unreadable=True), 0.5)
    assert too_many_unreadable(*early.record(unreadable=True), 0.5)

    steady = _Tally(window=100)  # 30% unreadable, spread out: never "most of them"
    for read in range(1000):
        assert not too_many_unreadable(*steady.record(unreadable=read % 10 < 3), 0.5)
    assert steady.recent() == (100, 30)
