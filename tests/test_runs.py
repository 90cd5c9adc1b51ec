"""video_kd.runs: run layout, manifest and claims, against a real S3 server (moto)."""

from __future__ import annotations

import hashlib
import json

import pytest

from video_kd import runs
from video_kd.core.errors import UserError
from video_kd.distill import s3_hook
from video_kd.runs import Manifest, RunLayout
from video_kd.storage import s3


def test_upload_download_round_trip_and_manifest(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-1')
    local = tmp_path / 'ckpt.pth'
    local.write_bytes(b'weights' * 1000)

    entry = Manifest.load(layout).record('teacher', local, layout.uri('teacher', 'ckpt.pth'))

    assert entry.uri == f's3://{bucket}/kd/run-1/teacher/ckpt.pth'
    assert entry.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert entry.size_bytes == 7000
    back = s3.download_file(entry.uri, tmp_path / 'back' / 'ckpt.pth')
    assert back.read_bytes() == local.read_bytes()
    assert s3.sha256_file(back) == entry.sha256
    reloaded = Manifest.load(layout)
    assert reloaded.entries == [entry]
    stored = json.loads(s3.download_file(layout.manifest_uri, tmp_path / 'm.json').read_text())
    assert stored['entries'][0] == {
        'step': 'teacher',
        'uri': entry.uri,
        'sha256': entry.sha256,
        'size_bytes': 7000,
    }


def test_manifest_accumulates_across_loads(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-2')
    for step in ('data', 'student'):
        path = tmp_path / f'{step}.bin'
        path.write_bytes(step.encode())
        Manifest.load(layout).record(step, path, layout.uri(step, path.name))
    assert [e.step for e in Manifest.load(layout).entries] == ['data', 'student']


def test_record_rejects_uri_outside_step_dir(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-3')
    (tmp_path / 'f').write_bytes(b'x')
    with pytest.raises(ValueError, match="not inside the 'eval' step"):
        Manifest(layout).record('eval', tmp_path / 'f', layout.uri('train', 'f'))


def test_run_layout():
    layout = RunLayout('bkt', 'video-kd', 'run-42')
    assert layout.uri('student', 'best.pth') == 's3://bkt/video-kd/run-42/student/best.pth'
    assert layout.manifest_uri == 's3://bkt/video-kd/run-42/manifest.json'
    sha = 'a' * 64
    assert (
        layout.cache_uri('teacher', sha, 't.pth') == f's3://bkt/video-kd/cache/teacher/{sha}/t.pth'
    )
    with pytest.raises(ValueError, match="unknown step 'deploy'"):
        layout.uri('deploy')
    with pytest.raises(ValueError, match='SHA-256'):
        layout.cache_uri('teacher', 'abc', 't.pth')
    for bad in ('a/b', '..', 'cache', ''):
        with pytest.raises(UserError, match='run id'):
            RunLayout('bkt', 'p', bad)


def test_manifest_batch_writes_once_at_the_end(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-batch')
    with Manifest.load(layout).batch() as manifest:
        for i in range(5):
            path = tmp_path / f'v{i}.mp4'
            path.write_bytes(b'v' * (i + 1))
            manifest.record('data', path, layout.uri('data', 'videos', path.name))
            assert not s3.exists(layout.manifest_uri), 'a batch must not rewrite per entry'
    assert len(Manifest.load(layout).entries) == 5


def test_publish_is_idempotent_and_never_overwrites(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-pub')
    path = tmp_path / 'report.json'
    path.write_text('{"a": 1}')
    first = runs.publish(layout, 'eval', path, 'report.json')
    assert runs.publish(layout, 'eval', path, 'report.json') == first
    assert len(Manifest.load(layout).entries) == 1
    path.write_text('{"a": 2}')
    with pytest.raises(s3.ObjectExistsError, match='other content'):
        runs.publish(layout, 'eval', path, 'report.json')


def test_finding_entries_in_a_big_manifest_is_not_a_scan_per_lookup():
    """Publishing n files looks each up first: n scans of the list were O(n^2)."""
    import time

    layout = RunLayout('bkt', 'kd', 'run-big')
    entries = [
        runs.ManifestEntry('data', layout.uri('data', 'source', f'v{i}.mp4'), f'{i:064x}', 1)
        for i in range(20000)
    ]
    manifest = Manifest(layout, list(entries))
    start = time.perf_counter()
    assert all(manifest.find(e.uri, e.sha256) is e for e in entries)
    assert time.perf_counter() - start < 1.0  # a scan per lookup: 2e8 steps, tens of seconds
    assert manifest.find(entries[5].uri, '0' * 64) is None  # other content: not found
    late = runs.ManifestEntry('data', layout.uri('data', 'late'), 'f' * 64, 1)
    manifest.entries.insert(0, late)  # what a merge with the stored manifest does
    assert manifest.find(late.uri) is late


def test_publishing_many_files_logs_progress_not_a_line_per_file(bucket, tmp_path, caplog):
    import logging

    layout = RunLayout(bucket, 'kd', 'run-many')
    files = []
    for i in range(30):
        files.append(tmp_path / f'v{i}.mp4')
        files[-1].write_bytes(b'v' * (i + 1))
    pairs = [(path, layout.uri('data', 'source', path.name)) for path in files]
    with caplog.at_level(logging.INFO), Manifest.load(layout).batch() as manifest:
        assert len(manifest.publish_all('data', pairs)) == 30
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if m.startswith('uploaded ')]
    assert [m for m in messages if m.startswith('published 30/30 files')]
    assert logging.getLogger('video_kd.storage.s3').level == logging.NOTSET  # restored
    assert len(Manifest.load(layout).entries) == 30
    again = Manifest.load(layout).publish_all('data', pairs)  # a retried step: nothing new
    assert [e.uri for e in again] == [uri for _, uri in pairs]


def test_checkpoint_is_hashed_once(bucket, tmp_path, monkeypatch):
    """Regression: upload_checkpoint hashed a checkpoint, then Manifest.record hashed it again."""
    layout = RunLayout(bucket, 'kd', 'run-hash')
    ckpt = tmp_path / 'epoch_1.pth'
    ckpt.write_bytes(b'w' * 4096)
    calls = []
    real = s3.sha256_file
    monkeypatch.setattr(s3, 'sha256_file', lambda p: calls.append(p) or real(p))
    s3_hook.upload_checkpoint(layout, ckpt)
    assert len(calls) == 1


def test_claim_refuses_another_run_and_allows_a_retry_of_the_same(bucket):
    layout = RunLayout(bucket, 'kd', 'run-claim')
    assert runs.claim_run(layout, job_id='job-1') is True
    assert s3.read_json(layout.claim_uri)['job_id'] == 'job-1'
    assert runs.claim_run(layout, job_id='job-1') is False  # the same KFP run retries
    with pytest.raises(UserError, match='already used by another run'):
        runs.claim_run(layout, job_id='job-2')
    with pytest.raises(UserError, match='already used by another run'):
        runs.claim_run(layout)


def test_release_claim_only_when_nothing_else_was_written(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-release')
    runs.claim_run(layout)
    assert runs.release_claim(layout)
    assert not s3.exists(layout.claim_uri)
    runs.claim_run(layout)  # the run id is free again
    path = tmp_path / 'x'
    path.write_text('x')
    runs.publish(layout, 'data', path, 'x')
    runs.release_claim(layout)
    assert s3.exists(layout.claim_uri), 'a run that published something keeps its claim'


def test_new_run_id_is_a_lowercase_dns_label_and_names_the_kfp_run():
    uuid = '8F1C2B7A-3D4E-4F60-9A1B-2C3D4E5F6071'
    run_id = runs.new_run_id(uuid)
    assert run_id.endswith('-' + uuid.lower())
    assert run_id == run_id.lower() and set(run_id) <= set('abcdefghijklmnopqrstuvwxyz0123456789-')
    assert len({runs.new_run_id('{{$.pipeline_job_uuid}}') for _ in range(20)}) == 20


@pytest.mark.parametrize('inside', ['{run}', '{run}/train/checkpoints', '{run}/data'])
def test_a_prefix_inside_another_runs_directory_is_refused_writing_nothing(bucket, inside):
    """Runs under <prefix>/<run>/train/checkpoints would be found by that run's checkpoint
    listing (and resumed from): the claim refuses such a prefix before it writes."""
    first = RunLayout(bucket, 'kd', 'run-1')
    runs.claim_run(first)
    before = s3.list_uris(f's3://{bucket}/')
    layout = RunLayout(bucket, 'kd/' + inside.format(run='run-1'), 'run-2')
    with pytest.raises(UserError, match=rf'inside the run directory s3://{bucket}/kd/run-1/ '):
        runs.claim_run(layout)
    assert s3.list_uris(f's3://{bucket}/') == before
    runs.claim_run(RunLayout(bucket, 'kd/run-1-other', 'run-2'))  # a sibling prefix is fine


def test_an_empty_prefix_keeps_runs_at_the_bucket_root(bucket):
    layout = RunLayout(bucket, '', 'run-1')
    runs.claim_run(layout)
    assert s3.list_uris(f's3://{bucket}/') == [f's3://{bucket}/run-1/run.json']
    assert layout.shared_uri('x') == f's3://{bucket}/cache/x'


def test_a_second_local_train_step_is_refused_while_the_first_holds_the_training(
    bucket, tmp_path, caplog
):
    """Issue 25 point 7: two train steps on one run interleaved their lineages (epoch_4.pth
    and epoch_4.1.pth) and the step's output could name the other's checkpoint.  The second
    is refused in one line while the first holds the run's training; a hold whose process
    is gone (killed) is taken over; a released hold leaves nothing."""
    import socket
    import subprocess
    import sys

    from video_kd.core.errors import one_line
    from video_kd.steps import train as train_step

    layout = runs.RunLayout(bucket, 'kd', 'held-run')
    hold_uri = layout.uri('train', runs.TRAINING_HOLD_NAME)
    with runs.training_hold(layout):
        with pytest.raises(runs.TrainingHeldError) as info, runs.training_hold(layout):
            pass
        assert str(info.value) == one_line(info.value)
        assert 'is being trained by another train step' in str(info.value)
        # the step itself: refused before torchrun starts
        data_meta = {'dataset_meta_uri': layout.dataset_meta_uri}
        teacher = {'s3_uri': layout.uri('teacher', 't.pth'), 'sha256': 'a' * 64}
        with pytest.raises(runs.TrainingHeldError):
            train_step._train_locally(layout, layout.uri('train', 'config.py'), data_meta,
                                      teacher, 1, 0, 0, tmp_path / 'second')  # fmt: skip
        assert not (tmp_path / 'second').exists() or not list((tmp_path / 'second').rglob('*.log'))
    assert not s3.exists(hold_uri)  # released

    # a hold left by a killed step of this host is taken over
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = {'token': 'x', 'host': socket.gethostname(), 'pid': int(gone.stdout), 'since': '-'}
    assert s3.create_if_absent(hold_uri, json.dumps(stale))
    with caplog.at_level('WARNING', logger='video_kd.runs'), runs.training_hold(layout):
        assert s3.read_json(hold_uri)['token'] != 'x'
    assert 'taking over the training hold' in caplog.text
    assert not s3.exists(hold_uri)
