"""Nothing read from storage runs: every checkpoint loads weights-only with the allow-list of
``video_kd.openmmlab.checkpoints``, and every object read back from a run is checked against
the run manifest first (issue 25, point 1).

Each test plants a payload (a pickled object whose ``__reduce__`` writes a marker file) where
an attacker with write access to a bucket or a mirror could put it, and asserts that it is
refused in one line and that the marker is never written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from video_kd.core.errors import UserError, one_line
from video_kd.openmmlab.checkpoints import UnsafeCheckpointError, load_checkpoint_file
from video_kd.runs import Manifest, RunLayout, claim_run

KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'


class Payload:
    """Unpickled in full, writes ``marker`` (through ``exec``: no module torch blocks)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("ran")',))


def plant(path: Path, marker: Path) -> Path:
    """A checkpoint that looks like an mmengine one, with the payload in its meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'x': Payload(marker)}}, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / 'payload-ran'
    yield path
    assert not path.exists(), 'the payload ran'


def refused_in_one_line(info: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(info.value)
    assert message == one_line(info.value), message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------- the loader


def test_an_mmengine_checkpoint_loads_weights_only(tmp_path):
    """What the Runner's checkpoints hold (message_hub: HistoryBuffer with numpy arrays and
    scalars, its statistics pickled as getattr): on the allow-list, loads and works."""
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader

    buffer = HistoryBuffer(np.array([1.0, 3.0]), np.array([1, 1]))
    path = tmp_path / 'epoch_1.pth'
    torch.save(
        {
            'meta': {'epoch': 1, 'seed': np.int64(7), 'dataset_meta': {'classes': ['a']}},
            'state_dict': {'w': torch.ones(1)},
            'message_hub': {'log_scalars': {'loss': buffer}, 'runtime_info': {'f': np.float32(2)}},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1, 'params': [0]}]},
        },
        path,
    )
    for loaded in (
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu'),  # resume, load_from
        torch.load(path, weights_only=True),  # the allow-list is torch's, process-wide
    ):
        assert loaded['message_hub']['log_scalars']['loss'].mean() == 2.0
    state, meta = load_checkpoint_file(path)
    assert state['w'].item() == 1.0 and meta['seed'] == 7


def test_a_checkpoint_with_a_payload_is_refused_naming_the_type(tmp_path, marker):
    path = plant(tmp_path / 'teacher.pth', marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    refused_in_one_line(info, f'refusing checkpoint {path}: it holds exec', 'nothing in it was run')


def test_mmengines_own_loading_refuses_a_payload(tmp_path, marker):
    """Resume, load_from and MMRazor's teacher_ckpt go through mmengine's CheckpointLoader."""
    from mmengine.runner.checkpoint import CheckpointLoader

    path = plant(tmp_path / 'epoch_99.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match='it holds exec'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path, marker):
    from mmengine.logging.history_buffer import HistoryBuffer

    class Reach:
        def __reduce__(self):
            return (getattr, (HistoryBuffer, 'update'))

    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': Reach()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    refused_in_one_line(info, "getattr(HistoryBuffer, 'update') is not allowed")


def test_a_kd_checkpoint_given_to_convert_is_refused(tmp_path, marker, capsys):
    from video_kd.core.errors import run_cli
    from video_kd.distill import convert

    path = plant(tmp_path / 'epoch_2.pth', marker)
    assert run_cli(convert.main, [str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'it holds exec' in err and 'Traceback' not in err, err
    assert not convert.student_checkpoint_path(path).exists()


def test_a_baseline_with_a_payload_is_refused_by_evaluation(tmp_path, marker):
    """The evaluation's checkpoint check (before mmengine's loading, which refuses it too)."""
    from video_kd.distill.evaluate import check_checkpoint_fits
    from video_kd.openmmlab.config import load_config

    path = plant(tmp_path / 'baseline.pth', marker)
    with pytest.raises(UnsafeCheckpointError, match='it holds exec'):
        check_checkpoint_fits(load_config('tsm_mobilenetv2_tiny'), str(path))


# --------------------------------------------------------------------------- the steps


def test_a_pinned_teacher_with_a_payload_is_refused_and_not_published(bucket, tmp_path, marker):
    """The threat: a shared bucket or a compromised mirror; the sha256 pins the bad file."""
    from video_kd.steps import teacher as teacher_step
    from video_kd.storage import s3

    layout = RunLayout(bucket, 'kd', 'payload-teacher')
    claim_run(layout)
    path = plant(tmp_path / 'src' / 'teacher.pth', marker)
    with pytest.raises(UserError) as info:
        teacher_step.run(layout.root, str(path), sha256(path), kd_config=KD_CONFIG, num_classes=3)
    refused_in_one_line(info, 'teacher checkpoint: refusing checkpoint', 'it holds exec')
    assert not s3.list_uris(layout.uri('teacher') + '/')
    assert not s3.list_uris(layout.shared_uri('teacher') + '/')  # nor cached for other runs


def test_a_wrong_teacher_with_its_sha256_is_refused_before_the_shared_cache(bucket, tmp_path):
    """Issue 25 point 7: a "teacher" that does not fit the KD config, given with its right
    sha256, was stored in the teacher cache every run shares before it was refused."""
    from video_kd.steps import teacher as teacher_step
    from video_kd.storage import s3

    layout = RunLayout(bucket, 'kd', 'wrong-teacher')
    claim_run(layout)
    path = tmp_path / 'src' / 'teacher.pth'
    path.parent.mkdir()
    torch.save({'state_dict': {'backbone.w': torch.ones(2)}}, path)
    with pytest.raises(UserError) as info:
        teacher_step.run(layout.root, str(path), sha256(path), kd_config=KD_CONFIG, num_classes=3)
    refused_in_one_line(info, "does not fit the config's teacher")
    assert not s3.list_uris(layout.shared_uri('teacher') + '/')
    assert not s3.list_uris(layout.uri('teacher') + '/')


@pytest.mark.parametrize(
    ('params', 'match'),
    [
        ({'teacher_sha256': ''}, 'teacher_sha256 is required'),
        ({'baseline_url': 'https://zoo.example/b.pth'}, 'baseline_sha256 is required'),
        ({'teacher_url': 'http://zoo.example/t.pth'}, 'plain http:// is refused for weights'),
        (
            {'baseline_url': 'http://zoo.example/b.pth', 'baseline_sha256': 'ab' * 32},
            "baseline_url 'http://zoo.example/b.pth': plain http:// is refused",
        ),
        (
            {
                'student_pretrained_url': 'http://zoo.example/mobilenet_v2.pth',
                'student_pretrained_sha256': 'ab' * 32,
                'kd_config': KD_CONFIG,
            },
            'plain http:// is refused for weights',
        ),
    ],
)
def test_weights_need_a_sha256_and_no_plain_http(params, match):
    from video_kd.steps import check_inputs

    good = {
        'teacher_url': 'https://zoo.example/teacher.pth',
        'teacher_sha256': 'ab' * 32,
        'student_config': 'tsm_mobilenetv2_tiny',
    }
    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params({**good, **params})
    refused_in_one_line(info, match)


def test_plain_http_is_refused_by_the_download_itself(tmp_path):
    from video_kd.storage import download

    with pytest.raises(UserError, match='plain http:// is refused for weights'):
        download.fetch('http://zoo.example/t.pth', tmp_path, sha256='ab' * 32)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- read back from a run


@pytest.fixture
def training_run(bucket, tmp_path) -> tuple[RunLayout, argparse.Namespace]:
    """A run as the train step leaves it for its pods: config, teacher, dataset.json and one
    checkpoint, each recorded in the manifest; and a pod's arguments."""
    from video_kd.distill import s3_hook

    layout = RunLayout(bucket, 'kd', f'payload-{uuid.uuid4().hex[:8]}')
    claim_run(layout)
    files = tmp_path / 'published'
    files.mkdir()
    (files / 'config.py').write_text('x = 1\n')
    torch.save({'state_dict': {'w': torch.ones(1)}}, files / 'teacher.pth')
    (files / 'dataset.json').write_text(json.dumps({'classes': ['a']}))
    manifest = Manifest.load(layout)
    config = manifest.publish('train', files / 'config.py', layout.uri('train', 'config.py'))
    teacher = manifest.publish('teacher', files / 'teacher.pth', layout.uri('teacher', 't.pth'))
    manifest.publish('data', files / 'dataset.json', layout.dataset_meta_uri)
    (files / 'ckpt').mkdir()
    torch.save({'state_dict': {'w': torch.ones(1)}}, files / 'ckpt' / 'epoch_1.pth')
    s3_hook.upload_checkpoint(layout, files / 'ckpt' / 'epoch_1.pth')
    args = argparse.Namespace(
        config=config.uri, teacher=teacher.uri, teacher_sha256=teacher.sha256, run_root=layout.root
    )
    return layout, args


def pod_inputs(layout: RunLayout, args: argparse.Namespace, work: Path) -> str:
    from video_kd.distill.train_pod import fetch_inputs

    return fetch_inputs(args, layout, work / 'inputs', work / 'mmengine')


@pytest.mark.parametrize('where', ['old/epoch_99.pth', 'epoch_99.pth'])
def test_a_planted_checkpoint_is_never_resumed_from(training_run, tmp_path, marker, where):
    """A key of its own under the run's checkpoints ("never overwrite" does not apply): in a
    sub-directory (the listing was recursive), or beside the run's own but not recorded."""
    from video_kd.distill import s3_hook
    from video_kd.storage import s3

    layout, args = training_run
    planted = plant(tmp_path / 'planted.pth', marker)
    s3.upload_file(planted, s3.join_uri(s3_hook.checkpoint_prefix(layout), where))
    assert s3_hook.list_checkpoints(layout) == [
        s3.join_uri(s3_hook.checkpoint_prefix(layout), 'epoch_1.pth')
    ]
    assert pod_inputs(layout, args, tmp_path / 'pod').endswith('/train/checkpoints/epoch_1.pth')
    assert not (tmp_path / 'pod' / 'mmengine' / Path(where).name).exists()


def test_a_replaced_checkpoint_is_refused_before_it_is_loaded(
    training_run, tmp_path, marker, caplog
):
    """Refused on its sha256, never loaded: skipped with a warning naming it (issue 25 point
    3: the pod falls back to the checkpoint before; here there is none, so it starts over)."""
    from video_kd.distill import s3_hook
    from video_kd.storage import s3

    layout, args = training_run
    uri = s3_hook.latest_checkpoint_uri(layout)
    s3.upload_file(plant(tmp_path / 'planted.pth', marker), uri, overwrite=True)
    with caplog.at_level('WARNING', logger=s3_hook.__name__):
        assert pod_inputs(layout, args, tmp_path / 'pod') == ''
    skipped = [r.getMessage() for r in caplog.records if 'skipping checkpoint' in r.getMessage()]
    assert len(skipped) == 1 and f'{uri} changed since it was recorded' in skipped[0], skipped
    assert not (tmp_path / 'pod' / 'mmengine' / 'epoch_1.pth').exists()
    assert not (tmp_path / 'pod' / 'mmengine' / 'last_checkpoint').exists()


def test_a_tampered_resolved_config_is_never_executed(training_run, tmp_path, marker):
    """config.py is Python (Config.fromfile executes it): checked against the manifest first."""
    from video_kd.storage import s3

    layout, args = training_run
    payload = tmp_path / 'config.py'
    payload.write_text(f'open({str(marker)!r}, "w").write("ran")\n')
    s3.upload_file(payload, args.config, overwrite=True)
    with pytest.raises(UserError) as info:
        pod_inputs(layout, args, tmp_path / 'pod')
    refused_in_one_line(info, f'{args.config} changed since it was recorded')
    assert not (tmp_path / 'pod' / 'inputs' / 'config.py').exists()


def test_objects_the_run_did_not_record_are_refused(training_run, tmp_path):
    from video_kd.runs import UnrecordedObjectError, read_recorded_json
    from video_kd.storage import s3

    layout, args = training_run
    other = layout.uri('train', 'other.py')
    s3.upload_file(tmp_path / 'published' / 'config.py', other)
    with pytest.raises(UnrecordedObjectError) as info:
        pod_inputs(layout, argparse.Namespace(**{**vars(args), 'config': other}), tmp_path / 'p')
    refused_in_one_line(info, f'refusing {other}: it is not in the run manifest')
    with pytest.raises(UserError, match='sha256 ' + '0' * 64 + ' was asked for'):
        pod_inputs(layout, argparse.Namespace(**{**vars(args), 'teacher_sha256': '0' * 64}),
                   tmp_path / 'q')  # fmt: skip
    # the dataset metadata a pod reads first
    s3.upload_file(tmp_path / 'published' / 'config.py', layout.dataset_meta_uri, overwrite=True)
    with pytest.raises(UserError, match=r'dataset\.json changed since it was recorded'):
        read_recorded_json(Manifest.load(layout), layout.dataset_meta_uri)


def test_the_dataset_lists_are_checked_against_the_manifest_before_training_reads_them(
    training_run, tmp_path
):
    """Issue 25 point 1's leftover: the cleaned train/val lists (which videos training reads)
    were read by the data loaders straight from S3, unchecked.  The pod downloads them, checks
    each against its manifest sha256 and points the loaders at the checked copies."""
    from video_kd.distill import train_pod
    from video_kd.storage import s3

    layout, _ = training_run
    manifest = Manifest.load(layout)
    splits = {}
    for split in ('train', 'val'):
        path = tmp_path / 'published' / f'{split}_list.txt'
        path.write_text(f'a/{split}.mp4 0\n')
        uri = manifest.publish('data', path, layout.uri('data', path.name)).uri
        splits[split] = {'list_uri': uri, 'videos_uri': 's3://b/v', 'num_videos': 1, 'rejected': 0}
    meta = {'classes': ['a'], 'splits': splits}
    inputs = tmp_path / 'pod' / 'inputs'
    train_pod.fetch_lists(manifest, meta, inputs)
    checked = train_pod.use_checked_lists(meta, inputs)
    for split in ('train', 'val'):
        local = Path(checked['splits'][split]['list_uri'])
        assert local.read_text() == f'a/{split}.mp4 0\n' and local.is_relative_to(inputs)
        assert checked['splits'][split]['videos_uri'] == 's3://b/v'

    # a list changed since data prep (another video set slipped in): refused, not read
    (tmp_path / 'swapped.txt').write_text('../../elsewhere.mp4 0\n')
    s3.upload_file(tmp_path / 'swapped.txt', splits['val']['list_uri'], overwrite=True)
    with pytest.raises(UserError) as info:
        train_pod.fetch_lists(Manifest.load(layout), meta, tmp_path / 'pod2')
    refused_in_one_line(info, f'{splits["val"]["list_uri"]} changed since it was recorded')
    # a list the run did not record
    other = layout.uri('data', 'other_list.txt')
    s3.upload_file(tmp_path / 'swapped.txt', other)
    unrecorded = {**meta, 'splits': {'train': {**splits['train'], 'list_uri': other}}}
    with pytest.raises(UserError, match='it is not in the run manifest'):
        train_pod.fetch_lists(Manifest.load(layout), unrecorded, tmp_path / 'pod3')
