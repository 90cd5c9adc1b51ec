"""Data at Kinetics scale: layouts, parallel cached validation, streaming reads from S3.

Everything speaks real HTTP to a moto server (tests/conftest.py); the fault-injecting
proxy of benchmarks/s3_proxy.py sits in front of it where a test needs 503s or counts.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import boto3
import pytest

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd import data_check, data_layout, s3, s3_fileio
from video_kd.dataset import generate_dataset
from video_kd.progress import Progress, format_duration

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
    with caplog.at_level(logging.INFO, logger='video_kd.progress'):
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
    with pytest.raises(data_layout.LayoutError, match=r'found neither train_list\.txt'):
        data_layout.resolve(str(tmp_path))
    with pytest.raises(data_layout.LayoutError, match='no such directory'):
        data_layout.resolve(str(tmp_path / 'nope'))


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
    from video_kd.data_stream import dataset_meta

    source = data_layout.resolve(uri)
    report = data_check.validate_source(source, out, processes=1, threads=2)
    if data_uri:
        for path in out.iterdir():
            s3.upload_file(path, s3.join_uri(data_uri, path.name))
    return dataset_meta(source, report, data_uri or str(out))


def train_one_epoch(meta: dict, work_dir: Path):
    from video_kd import train
    from video_kd.data_stream import use_dataset

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
    _client(s3_env).delete_object(Bucket=bucket, Key='k400/videos_train/move_up/train_0001.mp4')
    proxy.reset_counts()
    with caplog.at_level(logging.WARNING, logger='video_kd.data_stream'):
        classes, runner = train_one_epoch(meta, tmp_path / 'work')
    assert classes == ['move_up', 'move_down']
    assert runner.train_loop.iter >= 3  # 6 videos, batch 2: the epoch went on
    # the worker's log goes to its own stderr; the GETs tell what it did
    gets = {p: n for p, n in proxy.paths.items() if p.startswith('GET') and p.endswith('.mp4')}
    assert any('train_0001' in p for p in gets)  # tried, failed, skipped
    assert sum(n for p, n in gets.items() if 'videos_train' in p) >= 6
    assert sum(n for p, n in gets.items() if 'videos_val' in p) == 4  # one val pass
    assert not list((tmp_path / 'work').rglob('*.mp4'))  # nothing downloaded


@pytest.mark.slow
def test_a_mounted_dataset_trains_from_its_path(small_tree, tmp_path):
    meta = prepare(str(small_tree['video-kd']), tmp_path / 'prep')
    assert meta['splits']['val']['videos_uri'] == str(small_tree['video-kd'] / 'videos')
    _, runner = train_one_epoch(meta, tmp_path / 'work')
    assert runner.train_loop.iter == 3


@pytest.mark.slow
def test_a_mostly_unreadable_dataset_stops_with_the_count(small_tree, tmp_path):
    import shutil

    from video_kd.data_stream import DatasetUnreadableError

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    meta = prepare(str(copy), tmp_path / 'prep')
    for video in list((copy / 'videos').rglob('train_*.mp4'))[1:]:
        video.write_bytes(b'gone bad after data prep')
    with pytest.raises(DatasetUnreadableError) as caught:
        train_one_epoch(meta, tmp_path / 'work')
    message = str(caught.value)
    assert re.match(r'\d+ of \d+ videos read', message), message
    assert 'videos read by a data loader process could not be read (more than 50%)' in message
    assert '\n' not in message


@pytest.mark.slow
def test_evaluation_reads_only_the_val_split(small_tree, bucket, s3_env, proxy, tmp_path):
    from mmengine.runner import Runner

    from video_kd.config import load_config
    from video_kd.data_stream import use_dataset
    from video_kd.runtime import register_all_modules

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
            [sys.executable, '-m', 'video_kd.data_check', *map(str, args)],
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
    assert run('--help').stdout.startswith('usage: python -m video_kd.data_check')


def test_use_dataset_points_loaders_at_lists_and_video_roots():
    from video_kd.config import load_config
    from video_kd.data_stream import use_dataset

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

    only_val = load_config('tsm_mobilenetv2_tiny')
    before = only_val.train_dataloader.dataset.ann_file
    use_dataset(only_val, meta, loaders=('test_dataloader',))
    assert only_val.train_dataloader.dataset.ann_file == before  # untouched: never read


def _streaming_dataset(root: Path, test_mode: bool):
    from mmengine.registry import init_default_scope

    from video_kd.data_stream import StreamingVideoDataset
    from video_kd.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')  # the transforms are MMAction2's
    pipeline = [
        dict(type='DecordInit', io_backend='disk'),
        dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=4, test_mode=test_mode),
        dict(type='DecordDecode'),
    ]
    return StreamingVideoDataset(
        ann_file=str(root / 'train_list.txt'),
        pipeline=pipeline,
        data_prefix={'video': str(root / 'videos')},
        test_mode=test_mode,
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

    from video_kd.data_stream import VideoReadError

    copy = shutil.copytree(small_tree['video-kd'], tmp_path / 'd')
    broken = copy / 'videos' / 'move_up' / 'train_0000.mp4'
    broken.unlink()
    dataset = _streaming_dataset(copy, test_mode=True)
    with pytest.raises(VideoReadError, match=f'^cannot read {re.escape(str(broken))}: '):
        dataset[0]
