"""Optional re-encoding (video_kd.data.reencode): real videos encoded with PyAV, decoded by decord."""

from __future__ import annotations

import io
import json
from pathlib import Path

import decord
import numpy as np
import pytest

from video_kd.core.errors import UserError
from video_kd.data import data_layout, dataset
from video_kd.data.reencode import (
    DONE_NAME,
    EncodeSettings,
    ReencodeError,
    encode_video_bytes,
    reencode_dataset,
    scaled_size,
)
from video_kd.steps import data_prep
from video_kd.storage import s3

SMALL = dict(num_classes=2, train_per_class=2, val_per_class=1, num_frames=12, size=64)


def _keyframes(data: bytes) -> list[bool]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [p.is_keyframe for p in container.demux(stream) if p.size]


def _lines(path: str | Path) -> list[str]:
    return data_layout.list_lines(Path(path).read_text())


def test_scaled_size_keeps_aspect_with_even_sides():
    assert scaled_size(320, 240, 256) == (342, 256)
    assert scaled_size(240, 320, 256) == (256, 342)
    assert scaled_size(64, 64, 96) == (96, 96)


def test_encode_one_video_short_side_frames_and_gop(tmp_path):
    frames = [np.full((48, 96, 3), 60, np.uint8) for _ in range(20)]
    for i, frame in enumerate(frames):  # a moving square: x264 keeps its P-frames
        frame[10:30, 3 * i : 3 * i + 20] = 220
    dataset.write_video(tmp_path / 'wide.mp4', frames)
    body, count = encode_video_bytes((tmp_path / 'wide.mp4').read_bytes(), EncodeSettings(64, 4))
    reader = decord.VideoReader(io.BytesIO(body))
    assert count == len(reader) == 20
    # height 64 = the short side, 2:1 kept (not 64x72: decord mis-shapes that size, any codec)
    assert reader[0].shape == (64, 128, 3)
    assert _keyframes(body) == [i % 4 == 0 for i in range(20)]


def test_local_dataset_is_reencoded_then_reused(tmp_path):
    root = dataset.generate_dataset(tmp_path / 'ds', **SMALL)
    source = data_layout.resolve(str(root))
    done = reencode_dataset(source, short_side=96, gop=1, processes=2)
    derived = Path(done['uri'])
    assert derived.parent == root / 'derived' and derived.name == done['hash']
    assert not done['reused'] and done['encoded'] == done['num_videos'] == 6
    assert (derived / 'classes.txt').read_text() == (root / 'classes.txt').read_text()
    for split in ('train', 'val'):  # same lines: the source's names end in .mp4 already
        assert _lines(derived / f'{split}_list.txt') == _lines(root / f'{split}_list.txt')
    for line in _lines(derived / 'train_list.txt'):
        path = derived / 'videos' / line.rsplit(' ', 1)[0]
        reader = decord.VideoReader(str(path))
        assert len(reader) == 12 and reader[11].shape == (96, 96, 3)
        assert all(_keyframes(path.read_bytes()))  # gop 1: every frame a keyframe
    assert json.loads((derived / DONE_NAME).read_text())['hash'] == done['hash']

    video = derived / 'videos' / _lines(derived / 'train_list.txt')[0].rsplit(' ', 1)[0]
    written = video.stat().st_mtime_ns
    again = reencode_dataset(source, short_side=96, gop=1)
    assert again['reused'] and again['uri'] == done['uri']
    assert video.stat().st_mtime_ns == written  # nothing encoded again

    other = reencode_dataset(source, short_side=64, gop=1)  # other settings: another address
    assert other['hash'] != done['hash'] and not other['reused']

    (derived / DONE_NAME).unlink()  # an interrupted run: the videos written are kept
    video.unlink()
    resumed = reencode_dataset(source, short_side=96, gop=1)
    assert resumed['encoded'] == 1 and resumed['uri'] == done['uri'] and video.is_file()


def test_mmaction2_layout_keeps_the_splits_apart(tmp_path):
    root = dataset.generate_dataset(tmp_path / 'k', layout='mmaction2', **SMALL)
    done = reencode_dataset(data_layout.resolve(str(root)), short_side=64)
    derived = data_layout.resolve(done['uri'])  # our layout, found as such
    assert derived.layout == 'video-kd' and derived.classes == ['move_up', 'move_down']
    assert all(line.startswith('val/') for line in derived.splits['val'].lines)
    assert len(list(Path(done['videos_uri']).rglob('*.mp4'))) == 6


def test_s3_source_is_reencoded_next_to_it(bucket, tmp_path):
    root = dataset.generate_dataset(tmp_path / 'ds', **SMALL)
    s3.upload_dir(root, f's3://{bucket}/ds')
    done = reencode_dataset(data_layout.resolve(f's3://{bucket}/ds'), short_side=80, gop=2)
    assert done['uri'] == f's3://{bucket}/ds/derived/{done["hash"]}'
    assert s3.exists(f'{done["uri"]}/{DONE_NAME}')
    line = data_layout.list_lines(s3.read_bytes(f'{done["uri"]}/val_list.txt').decode())[0]
    body = s3.read_bytes(f'{done["videos_uri"]}/{line.rsplit(" ", 1)[0]}')
    assert decord.VideoReader(io.BytesIO(body))[0].shape == (80, 80, 3)
    assert reencode_dataset(data_layout.resolve(f's3://{bucket}/ds'), short_side=80, gop=2)[
        'reused'
    ]


def test_a_concurrent_reencode_keeps_what_the_other_run_wrote(bucket, tmp_path, monkeypatch):
    """Two data preps re-encoding one dataset at once: both saw no done.json; the one that
    finishes second must not replace the first one's objects (it used to put them again,
    done.json too) and reports the copy the first one completed."""
    from video_kd.data import reencode

    root = dataset.generate_dataset(tmp_path / 'ds', **SMALL)
    s3.upload_dir(root, f's3://{bucket}/ds')
    encode_all = reencode._encode_all
    first: dict = {}
    started = []

    def the_other_run_finishes_first(pairs, settings, processes):
        if not started:  # this run has checked for done.json; the other one runs now
            started.append(True)
            source = data_layout.resolve(f's3://{bucket}/ds')
            first.update(reencode_dataset(source, short_side=64, processes=1))
        return encode_all(pairs, settings, processes)

    monkeypatch.setattr(reencode, '_encode_all', the_other_run_finishes_first)
    source = data_layout.resolve(f's3://{bucket}/ds')
    second = reencode_dataset(source, short_side=64, processes=1)

    assert first and not first['reused'] and first['encoded'] == 6
    assert second['reused'] and second['uri'] == first['uri']
    stored = s3.read_json(f'{first["uri"]}/{DONE_NAME}')
    assert stored == {k: v for k, v in first.items() if k != 'reused'}  # not replaced
    assert second == {**stored, 'reused': True}


def test_bad_output_and_bad_video_are_one_line(tmp_path, bucket):
    root = dataset.generate_dataset(tmp_path / 'ds', **SMALL)
    source = data_layout.resolve(str(root))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ReencodeError, match=r'cannot write .*file/derived'):
        reencode_dataset(source, out_uri=str(tmp_path / 'file' / 'derived'), short_side=64)
    with pytest.raises(ReencodeError, match='not s3:// nor a local path'):
        reencode_dataset(source, out_uri='gs://bucket/derived', short_side=64)
    with pytest.raises(UserError, match="bucket 'no-such-bucket-reencode' does not exist"):
        reencode_dataset(source, out_uri='s3://no-such-bucket-reencode/d', short_side=64)
    with pytest.raises(ReencodeError, match='short_side must be an even number'):
        reencode_dataset(source, short_side=95)
    with pytest.raises(ReencodeError, match=r'decord reads the re-encoded video as 12 frames'):
        reencode_dataset(source, short_side=48)  # 48x48: a size decord mis-shapes
    broken = root / 'videos' / 'move_up' / 'train_0001.mp4'
    broken.write_bytes(b'not a video at all')
    with pytest.raises(ReencodeError) as error:
        reencode_dataset(source, short_side=64)
    message = str(error.value)
    assert '\n' not in message and message.startswith('1 of 6 videos failed to re-encode')
    assert str(broken) in message
    assert not list((root / 'derived').rglob(DONE_NAME))  # never marked complete


def test_data_prep_with_reencode_points_the_dataset_at_the_copy(bucket, tmp_path):
    root = dataset.generate_dataset(tmp_path / 'ds', **SMALL)
    meta = data_prep.run(str(root), bucket, 'p', run_id='r1', workdir=tmp_path / 'w', reencode=True)
    derived = meta['reencoded']
    assert derived['uri'].startswith(f'{root}/derived/')
    assert derived['settings']['short_side'] == 256 and derived['settings']['gop'] == 1
    for split in ('train', 'val'):
        entry = meta['splits'][split]
        assert entry['videos_uri'] == derived['videos_uri']
        lines = data_layout.list_lines(s3.read_bytes(entry['list_uri']).decode())
        assert len(lines) == entry['num_videos'] == SMALL[f'{split}_per_class'] * 2
        reader = decord.VideoReader(f'{entry["videos_uri"]}/{lines[0].rsplit(" ", 1)[0]}')
        assert len(reader) == 12 and reader[0].shape == (256, 256, 3)
    report = json.loads(s3.read_bytes(meta['report_uri']))
    assert report['reencoded']['hash'] == derived['hash'] and report['root'] == str(root)

    again = data_prep.run(
        str(root), bucket, 'p', run_id='r2', workdir=tmp_path / 'w2', reencode=True
    )
    assert again['reencoded']['uri'] == derived['uri']  # the same copy, reused
    plain = data_prep.run(str(root), bucket, 'p', run_id='r3', workdir=tmp_path / 'w3')
    assert 'reencoded' not in plain and plain['splits']['train']['videos_uri'] == f'{root}/videos'
