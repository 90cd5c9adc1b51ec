"""The components alone: their entry points, the PyTorchJob the train step builds, clear
errors, and a torchrun worker killed mid-training (the step resumes from S3)."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crd_schema import PYTORCHJOB_CRD, problems

from components import STEPS
from video_kd import backends, runs
from video_kd.backends import pytorchjob
from video_kd.core.errors import UserError
from video_kd.distill import train_config
from video_kd.distill.s3_hook import checkpoint_sort_key, list_checkpoints
from video_kd.distill.train_config import TrainOptions
from video_kd.openmmlab.config import UnknownConfigError
from video_kd.runs import Manifest, RunLayout
from video_kd.steps import common, data_prep
from video_kd.steps import teacher as teacher_step
from video_kd.steps import train as train_step
from video_kd.storage import s3

TINY = (
    'train_dataloader.batch_size=4 val_dataloader.batch_size=4 '
    'train_dataloader.num_workers=0 val_dataloader.num_workers=0 '
    'train_dataloader.persistent_workers=False val_dataloader.persistent_workers=False'
)
GEN = 'generate://?num_classes=3&train_per_class=4&val_per_class=2&num_frames=12'


def run_module(module, *args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, '-m', module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize('step', STEPS)
def test_every_step_runs_alone_with_help(step):
    result = run_module(f'components.{step}', '--help')
    assert result.returncode == 0, result.stderr
    assert f'python -m components.{step}' in result.stdout
    if step == 'check_inputs':  # reads no S3: says so, and names no credentials
        assert (
            'no S3' in ' '.join(result.stdout.split()) and 'AWS_ACCESS_KEY_ID' not in result.stdout
        )
    else:
        assert 'AWS_ACCESS_KEY_ID' in result.stdout  # says where credentials come from


def test_missing_credentials_fail_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'components.data_prep',
            '--dataset-uri',
            'generate://',
            '--s3-bucket',
            'video-kd',
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            'error: S3 credentials are missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY'
        )
    )
    assert 'Traceback' not in result.stderr


def test_scratch_is_removed_on_success_and_kept_on_failure(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(common.tempfile, 'tempdir', str(tmp_path))
    with common.scratch_dir(None, 'convert') as work:
        (work / 'big.pth').write_bytes(b'x' * 1024)
    assert not work.exists()
    with pytest.raises(UserError), common.scratch_dir(None, 'eval') as failed:
        (failed / 'w_student').mkdir()
        raise UserError('boom')
    assert (failed / 'w_student').is_dir()
    assert f'eval failed; its scratch directory {failed} is kept' in caplog.text
    with pytest.raises(UserError), common.scratch_dir(None, 'teacher') as empty:
        raise UserError('nothing written yet')
    assert not empty.exists()
    given = tmp_path / 'mine'
    with common.scratch_dir(given, 'data') as work:
        assert work == given
    assert given.is_dir()  # the caller's directory is the caller's
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine', failed.name]


def mobilenet_v2_weights(path: Path) -> bytes:
    """Real (random) MobileNetV2 backbone weights at ``path``, as a classifier checkpoint holds
    them: the train step checks the student's pretrained weights fit before it publishes."""
    import torch
    from mmaction.models.backbones import MobileNetV2

    weights = {f'backbone.{k}': v for k, v in MobileNetV2().state_dict().items()}
    torch.save({'state_dict': weights}, path)
    return path.read_bytes()


@pytest.fixture
def prepared_run(bucket, tmp_path):
    """A run with data prep done (tiny generated data) and a teacher stub published."""
    meta = data_prep.run(GEN, bucket, 'kd', workdir=tmp_path / 'prep')
    return meta


def test_data_prep_writes_the_manifest_once_not_once_per_file(bucket, tmp_path, monkeypatch):
    saves = []
    save = Manifest.save

    def counted(self):
        saves.append(len(self.entries))
        save(self)

    monkeypatch.setattr(Manifest, 'save', counted)
    meta = data_prep.run(GEN, bucket, 'kd', workdir=tmp_path / 'prep')
    stored = s3.read_json(RunLayout.from_root(meta['run_root']).manifest_uri)['entries']
    assert len(stored) > 20  # 18 generated videos + their lists, the cleaned lists, the meta
    assert saves == [len(stored)], saves  # one write at the end (Manifest.batch), not one per file


def test_wrong_teacher_checksum_fails_clearly(prepared_run, tmp_path, http_server):
    (http_server.root / 'teacher.pth').write_bytes(b'not really a checkpoint')
    result = run_module(
        'components.teacher_download',
        '--run-root',
        prepared_run['run_root'],
        '--url',
        http_server.url('teacher.pth'),
        '--sha256',
        '0' * 64,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: SHA-256 mismatch for http://') and 'expected 0000' in last
    assert not s3.list_uris(prepared_run['run_root'] + '/teacher/')


def test_unknown_config_fails_before_any_pod(prepared_run):
    teacher = {'s3_uri': 's3://x/y.pth', 'sha256': '0' * 64}
    with pytest.raises(UnknownConfigError, match='unknown config'):
        train_step.run(prepared_run, teacher, 'kd_no_such_config', training_backend='local')
    with pytest.raises(UserError, match="training_backend 'k8s': use one of pytorchjob"):
        train_step.run(
            prepared_run,
            teacher,
            'kd_logits_tsm-res50_tsm-mobilenetv2_tiny',
            training_backend='k8s',
        )
    with pytest.raises(UserError, match='num_workers must be >= 1, got 0'):
        train_step.run(
            prepared_run, teacher, 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny', num_workers=0
        )
    assert not s3.list_uris(prepared_run['run_root'] + '/train/'), 'nothing may be written'


def test_train_step_pytorchjob_manifest(prepared_run, monkeypatch):
    monkeypatch.setenv('S3_CREDENTIALS_SECRET', 'my-s3-secret')
    monkeypatch.setenv('VIDEO_KD_SERVICE_ACCOUNT', 'video-kd')
    monkeypatch.setenv('VIDEO_KD_NAMESPACE', 'team-a')
    monkeypatch.setenv(
        'VIDEO_KD_WORKER_POD_OVERRIDES',
        json.dumps(
            {
                'resources': {'requests': {'cpu': '8', 'memory': '32Gi'}},
                'nodeSelector': {'nvidia.com/gpu.present': 'true'},
                'tolerations': [
                    {'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}
                ],
            }
        ),
    )
    teacher = {'s3_uri': prepared_run['run_root'] + '/teacher/t.pth', 'sha256': 'a' * 64}
    layout = RunLayout.from_root(prepared_run['run_root'])
    kd_config = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'
    options = TrainOptions(max_epochs=5, teacher_precision='bf16', teacher_logit_cache=True)
    config_uri = train_step.publish_config(layout, prepared_run, teacher, kd_config, options)
    assert config_uri == layout.uri('train', 'config.py')
    spec = train_step.job_spec(
        layout,
        config_uri,
        prepared_run,
        teacher,
        'reg/video-kd:0.1.0-cuda',
        num_workers=3,
        gpus_per_worker=2,
        nproc_per_node=2,
    )
    manifest = backends.manifest('pytorchjob', spec)
    assert problems(manifest, PYTORCHJOB_CRD, 'v1') == []  # the operator's real CRD schema
    job = pytorchjob.build(spec)  # the SDK's typed model
    assert manifest['apiVersion'] == 'kubeflow.org/v1' and manifest['kind'] == 'PyTorchJob'
    assert manifest['metadata']['namespace'] == 'team-a'
    assert manifest['metadata']['name'] == backends.job_name(prepared_run['run_id'])
    assert job.spec.pytorch_replica_specs['Master'].replicas == 1
    assert job.spec.pytorch_replica_specs['Worker'].replicas == 2
    assert manifest['spec']['nprocPerNode'] == '2'
    for rtype in ('Master', 'Worker'):
        replica = manifest['spec']['pytorchReplicaSpecs'][rtype]
        assert replica['restartPolicy'] == 'ExitCode'  # bad input (exit 2) is not retried
        pod = replica['template']['spec']
        (c,) = pod['containers']
        assert c['image'] == 'reg/video-kd:0.1.0-cuda'
        assert c['command'] == ['python', '-m', 'video_kd.backends.torchrun']
        assert c['args'][:3] == ['-m', 'video_kd.distill.train_pod', config_uri]
        args = dict(zip(c['args'][3::2], c['args'][4::2], strict=True))
        assert args['--run-root'] == prepared_run['run_root']
        assert args['--data-meta'] == prepared_run['dataset_meta_uri']
        assert args['--teacher'] == teacher['s3_uri'] and args['--teacher-sha256'] == 'a' * 64
        env = {e['name']: e for e in c['env']}
        assert env['S3_ENDPOINT_URL']['value'] == os.environ['S3_ENDPOINT_URL']
        assert env['VIDEO_KD_RUN_ID']['value'] == prepared_run['run_id']
        assert env['AWS_SECRET_ACCESS_KEY']['valueFrom']['secretKeyRef']['name'] == 'my-s3-secret'
        assert 'value' not in env['AWS_ACCESS_KEY_ID']
        assert c['resources']['limits']['nvidia.com/gpu'] == '2'
        assert c['resources']['requests'] == {'cpu': '8', 'memory': '32Gi'}
        assert pod['serviceAccountName'] == 'video-kd'
        assert pod['nodeSelector'] == {'nvidia.com/gpu.present': 'true'}
    # the training options reached the one resolved config the pods load, not their argv
    resolved = s3.read_bytes(config_uri).decode()
    assert 'max_epochs=5' in resolved and "teacher_precision='bf16'" in resolved
    assert "type='CachedLogitsSingleTeacherDistill'" in resolved
    assert prepared_run['videos_uri'].rsplit('/', 1)[0] + '/teacher_logits' in resolved
    # the module the pods run exists and explains itself
    result = run_module('video_kd.distill.train_pod', '--help')
    assert result.returncode == 0 and '--run-root' in result.stdout
    with pytest.raises(UserError, match="teacher_precision 'int8'"):
        TrainOptions(teacher_precision='int8')
    # a re-run with other settings is refused: the run's checkpoints were trained with these
    with pytest.raises(UserError, match='holds another training config'):
        train_step.publish_config(layout, prepared_run, teacher, kd_config, TrainOptions())
    assert (
        train_step.publish_config(layout, prepared_run, teacher, kd_config, options) == config_uri
    )  # the same settings: the same file, the step continues


def test_print_manifest_writes_nothing(prepared_run, tmp_path):
    """Regression: --print-manifest failed with KeyError 'dataset_meta_uri'."""
    layout = RunLayout.from_root(prepared_run['run_root'])
    teacher = tmp_path / 'teacher.pth'
    teacher.write_bytes(b'weights')
    runs.publish(layout, 'teacher', teacher, 'teacher.pth')
    result = run_module(
        'components.train', '--run-root', layout.root, '--kd-config',
        'kd_logits_tsm-res50_tsm-mobilenetv2_tiny', '--training-backend', 'pytorchjob', '--print-manifest',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads(result.stdout)
    assert manifest['kind'] == 'PyTorchJob'
    assert manifest['spec']['pytorchReplicaSpecs']['Master']['template']['spec']['containers'][0][
        'args'
    ][2] == layout.uri('train', 'config.py')
    assert not s3.list_uris(layout.root + '/train/')


@pytest.mark.parametrize(
    ('query', 'line'),
    [
        ('num_classes=99', 'generator option num_classes must be <= 5, got 99'),
        ('num_frames=0', 'generator option num_frames must be >= 2, got 0'),
        ('size=many', "generator option size must be a whole number, got 'many'"),
        ('classes=2', "unknown generator option 'classes'"),
    ],
)
def test_bad_generator_options_fail_in_one_line_before_the_run_is_claimed(bucket, query, line):
    """Regression: num_classes=99 was a ValueError traceback, num_frames=0 an IndexError."""
    result = run_module(
        'components.data_prep', '--dataset-uri', f'generate://?{query}',
        '--s3-bucket', bucket, '--s3-prefix', 'kd', '--run-id', 'bad-gen',
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: {line}')
    assert 'Traceback' not in result.stderr
    assert not s3.list_uris(f's3://{bucket}/kd/')


def test_standalone_steps_before_data_prep_fail_in_one_line(bucket):
    missing = f's3://{bucket}/kd/never-prepared'
    for step, extra in (
        ('train', ['--kd-config', 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny']),
        ('evaluate', ['--kd-config', 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny']),
    ):
        result = run_module(f'components.{step}', '--run-root', missing, *extra)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f'error: {missing}/data/dataset.json does not exist: run data prep for this run first'
        )
        assert 'Traceback' not in result.stderr


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _worker_pids(step_pid: int) -> list[int]:
    """The training processes torchrun started (they run video_kd.distill.train_pod; the launcher,
    video_kd.backends.torchrun, has it among its arguments)."""
    pids = []
    for pid in _descendants(step_pid):
        try:
            cmd = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
        except OSError:
            continue
        launcher = b'torch.distributed.run' in cmd or b'video_kd.backends.torchrun' in cmd
        if not launcher and b'video_kd.distill.train_pod' in cmd:
            pids.append(pid)
    return pids


@pytest.mark.slow
def test_killed_worker_resumes_from_s3(prepared_run, tiny_teacher, tmp_path):
    layout = RunLayout.from_root(prepared_run['run_root'])
    # the session's tiny teacher (conftest): trained once, on a dataset generated with the same
    # options as this run's
    meta = teacher_step.run(layout.root, str(tiny_teacher), s3.sha256_file(tiny_teacher))
    assert meta['s3_uri'].startswith(layout.root + '/teacher/')
    args = [
        'components.train',
        '--run-root',
        layout.root,
        '--kd-config',
        'kd_logits_tsm-res50_tsm-mobilenetv2_tiny',
        '--training-backend',
        'local',
        '--num-workers',
        2,
        '--max-epochs',
        4,
        '--keep-checkpoints',  # every checkpoint kept (retries included): what resume
        10,  # rewrote or lost would show
        '--cfg-options',
        *TINY.split(),
    ]

    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    env = {**os.environ, 'TMPDIR': str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, '-m', *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while not list_checkpoints(layout):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, 'no checkpoint reached S3'
        time.sleep(0.2)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)  # rank 1 dies mid-training
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    error = stderr.strip().splitlines()[-1]
    assert error.startswith('error: local training (torchrun, 2 processes) failed')
    assert 're-run the step to resume' in error
    before = {
        e.uri: e.sha256
        for e in Manifest.load(layout).entries
        if e.step == 'train' and checkpoint_sort_key(e.uri)
    }
    assert before and len(before) < 4, f'the kill came too late: {sorted(before)}'
    (failed,) = scratch.glob('video_kd_train_*')  # kept for inspection, with the worker logs
    assert f'its scratch directory {failed} is kept' in stderr
    assert list(failed.glob('attempt-*/torchrun.log'))
    # the logs are kept for inspection, the weights are not (they are in S3): a failed attempt
    # left ~450 MB behind before
    assert list(failed.rglob('*.log')) and not list(failed.rglob('*.pth'))

    again = run_module(*args, env={'TMPDIR': str(scratch)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(scratch.glob('video_kd_*')) == [failed]  # the successful attempt's is gone
    last_before = max(before, key=checkpoint_sort_key).rsplit('/', 1)[1]
    assert f'resuming from {last_before}' in again.stderr
    out = json.loads(again.stdout)
    assert out['s3_uri'].endswith('/train/checkpoints/epoch_4.pth')
    after = {e.uri: e.sha256 for e in Manifest.load(layout).entries if e.step == 'train'}
    assert all(after[uri] == sha for uri, sha in before.items()), 'nothing lost or rewritten'
    epochs = sorted(checkpoint_sort_key(u)[0] for u in list_checkpoints(layout))
    # every epoch there, the last 4 (an epoch may be there twice, epoch_N.1.pth: a retry's
    # own save of the epoch it resumed in; what was there before is unchanged, above)
    assert sorted(set(epochs)) == [1, 2, 3, 4]
    assert all(s3.exists(u) for u in after)
    # the finished step recorded what it did and with which parameters (the model card's)
    record = s3.read_json(common.output_uri(layout, 'train'))
    assert record['s3_uri'] == out['s3_uri'] and record['parameters'] == out['parameters']
    assert record['parameters']['max_epochs'] == 4
    assert record['parameters']['training_backend'] == 'local'
    assert record['parameters']['num_workers'] == 2
    assert record['parameters']['cfg_options'] == TINY.split()
    assert record['parameters']['teacher_logit_cache'] is False
    assert common.run_step_output(layout.root, 'teacher')['source_url'] == str(tiny_teacher)


def test_teacher_step_reports_the_cache_it_used(prepared_run, http_server, bucket):
    """Regression: cache_hit was recomputed with a dummy file name instead of taken from the
    download that used (or filled) the cache."""
    content = b'teacher weights'
    (http_server.root / 'teacher.pth').write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    first = teacher_step.run(prepared_run['run_root'], http_server.url('teacher.pth'), sha)
    other_run = RunLayout(bucket, 'kd', 'another-run')
    runs.claim_run(other_run)
    second = teacher_step.run(other_run.root, http_server.url('teacher.pth'), sha)
    assert (first['cache_hit'], second['cache_hit']) == (False, True)
    assert http_server.requests['teacher.pth'] == 1
    assert second['sha256'] == first['sha256'] == sha


def test_student_pretrained_weights_are_cached_once_and_named_in_the_run_config(
    prepared_run, http_server, tmp_path
):
    """The train step fetches the ImageNet weights once into the run's S3 cache (by checksum)
    and the resolved config sends every training process there, not to the internet."""
    content = mobilenet_v2_weights(http_server.root / 'mobilenet_v2.pth')
    sha = hashlib.sha256(content).hexdigest()
    layout = RunLayout.from_root(prepared_run['run_root'])
    teacher = {'s3_uri': layout.root + '/teacher/t.pth', 'sha256': 'a' * 64}
    options = TrainOptions(
        student_pretrained_url=http_server.url('mobilenet_v2.pth'), student_pretrained_sha256=sha
    )
    config_uri = train_step.publish_config(
        layout, prepared_run, teacher, 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny', options
    )
    cached = layout.cache_uri('pretrained', sha, 'mobilenet_v2.pth')
    assert s3.read_bytes(cached) == content
    resolved = train_config.load_resolved(s3.download_file(config_uri, tmp_path / 'config.py'))
    assert resolved.student_pretrained == {
        'url': http_server.url('mobilenet_v2.pth'),
        'sha256': sha,
        'fetch_from': cached,
    }
    assert http_server.requests['mobilenet_v2.pth'] == 1


def test_a_cfg_options_typo_fetches_and_writes_nothing(prepared_run, http_server):
    """Regression: the train step fetched (and cached) the pretrained weights before it
    checked --cfg-options, so a typo still cost a download and left objects behind."""
    (http_server.root / 'mobilenet_v2.pth').write_bytes(b'imagenet weights')
    layout = RunLayout.from_root(prepared_run['run_root'])
    teacher = {'s3_uri': layout.root + '/teacher/t.pth', 'sha256': 'a' * 64}
    options = TrainOptions(
        cfg_options=['optim_wrapper.optimizer.lrr=0.1'],
        student_pretrained_url=http_server.url('mobilenet_v2.pth'),
        student_pretrained_sha256=hashlib.sha256(b'imagenet weights').hexdigest(),
    )
    with pytest.raises(UserError, match=r"did you mean 'optim_wrapper\.optimizer\.lr'"):
        train_step.publish_config(
            layout, prepared_run, teacher, 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny', options
        )
    assert http_server.requests.get('mobilenet_v2.pth', 0) == 0
    assert not s3.list_uris(layout.shared_uri('pretrained') + '/')
    assert not s3.list_uris(layout.root + '/train/')


def test_a_teacher_step_into_an_unclaimed_directory_writes_nothing(bucket, http_server):
    (http_server.root / 'teacher.pth').write_bytes(b'weights')
    root = f's3://{bucket}/kd/never-claimed'
    with pytest.raises(UserError, match='was never claimed: run data prep for this run first'):
        teacher_step.run(
            root, http_server.url('teacher.pth'), hashlib.sha256(b'weights').hexdigest()
        )
    assert http_server.requests['teacher.pth'] == 0
    assert not s3.list_uris(root + '/')


def test_a_step_run_alone_sees_the_teachers_source_url(prepared_run, http_server):
    """The teacher step records its output (source URL included) in the run: a later step
    run alone, and the model card, name the URL, not the run's S3 copy."""
    from video_kd.steps import export as export_step

    content = b'teacher weights'
    (http_server.root / 'teacher.pth').write_bytes(content)
    url = http_server.url('teacher.pth')
    meta = teacher_step.run(prepared_run['run_root'], url, hashlib.sha256(content).hexdigest())
    alone = common.run_step_output(prepared_run['run_root'], 'teacher')
    assert alone['source_url'] == url and alone['s3_uri'] == meta['s3_uri']
    layout = RunLayout.from_root(prepared_run['run_root'])
    bare = {'s3_uri': meta['s3_uri'], 'sha256': meta['sha256']}  # what the manifest alone gives
    assert export_step.teacher_source(layout, bare) == url
    # a re-run of the finished step keeps the first record (it is what the step did)
    teacher_step.run(prepared_run['run_root'], url, meta['sha256'])
    assert s3.read_json(common.output_uri(layout, 'teacher'))['cache_hit'] is False


# --------------------------------------------------------------------------- export step


def test_export_settings_out_of_range_are_one_line_and_write_nothing(bucket):
    """Regression: a negative --speed-repeats was a KeyError traceback after minutes of work."""
    from video_kd.steps import export as export_step

    root = f's3://{bucket}/kd/some-run'
    for flag, value, match in (
        ('--tolerance', '-1', 'export_tolerance (--tolerance) must be >= 0, got -1'),
        ('--speed-repeats', '-1', 'speed_repeats (0 skips the speed check) must be >= 0, got -1'),
    ):
        result = run_module(
            'components.export', '--run-root', root, '--kd-config', 'x', flag, value
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == f'error: {match}'
        assert 'Traceback' not in result.stderr
    assert not s3.list_uris(root + '/')
    for kwargs, match in (
        ({'tolerance': float('nan')}, r'must be a finite number, got nan'),
        ({'speed_repeats': 5000}, r'must be <= 1000, got 5000'),
        ({'speed_repeats': 1.5}, r'must be a whole number, got 1\.5'),
        ({'parity_clips': 0}, r'parity_clips \(val clips of the ONNX parity check\) must be >= 1'),
        ({'speed_batch_size': 0}, r'speed_batch_size \(clips per throughput call\) must be >= 1'),
    ):
        with pytest.raises(UserError, match=match):
            export_step.export_settings('x', **kwargs)


def test_the_student_alone_logs_are_found_beside_its_checkpoint(bucket, tmp_path):
    """The export draws the baseline's curves from its mmengine work dir in S3 (as run-local
    uploads it); a baseline stored alone or outside S3 has none, and that is no error."""
    from video_kd.steps import export as export_step

    work_dir = f's3://{bucket}/models/baseline-2e'
    s3.put_bytes(f'{work_dir}/epoch_2.pth', b'x')
    line = b'{"acc/top1": 0.5, "step": 1}\n'
    s3.put_bytes(f'{work_dir}/20260101_000000/vis_data/scalars.json', line)
    s3.put_bytes(f'{work_dir}/20260101_000000/vis_data/config.py', b'{}')
    found = export_step.baseline_logs(f'{work_dir}/epoch_2.pth', tmp_path / 'logs')
    assert found == tmp_path / 'logs'
    assert [p.relative_to(found).as_posix() for p in found.rglob('*') if p.is_file()] == [
        '20260101_000000/vis_data/scalars.json'
    ]
    # a checkpoint stored alone: another training's logs deeper down are not its own
    assert export_step.baseline_logs(f's3://{bucket}/models/alone.pth', tmp_path / 'a') is None
    assert export_step.baseline_logs('https://zoo.example/alone.pth', tmp_path / 'b') is None
    assert export_step.baseline_logs('', tmp_path / 'c') is None


def _files(tmp_path: Path, contents: dict[str, str]) -> dict[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in contents}


def test_an_export_re_run_replaces_an_unfinished_attempt_only(bucket, tmp_path):
    """Regression: speed.json, the PNGs, the HTML and the card differ between attempts, so
    a re-run after a partial publish was refused ('refusing to overwrite') for good."""
    from video_kd.steps import export as export_step

    layout = RunLayout(bucket, 'kd', 'export-rerun')
    earlier = _files(tmp_path / 'eval', {'metrics.json': '{"top1": 0.5}'})
    runs.publish(layout, 'eval', earlier['metrics.json'], 'metrics.json')
    before = {e.uri: e.sha256 for e in Manifest.load(layout).entries}
    # an attempt that died while publishing: two of its files are in S3, one is recorded
    # with content the next attempt does not reproduce, one is not recorded at all
    first = _files(tmp_path / 'a1', {'student.onnx': 'model', 'speed.json': '{"ms": 10}'})
    runs.publish(layout, 'export', first['student.onnx'], 'student.onnx')
    runs.publish(layout, 'export', first['speed.json'], 'speed.json')
    s3.upload_file(_files(tmp_path / 'a1', {'orphan.png': 'png'})['orphan.png'],
                   layout.uri('export', 'orphan.png'))  # fmt: skip
    second = _files(
        tmp_path / 'a2',
        {'student.onnx': 'model', 'speed.json': '{"ms": 11}', 'report.html': '<html>'},
    )
    published = export_step.publish_export(layout, second)
    assert set(published) == set(second)
    stored = sorted(s3.list_uris(layout.uri('export') + '/'))
    assert stored == sorted(layout.uri('export', name) for name in second)
    for name, path in second.items():
        assert s3.read_bytes(layout.uri('export', name)) == path.read_bytes()
    entries = Manifest.load(layout).entries
    exported = {e.uri: e.sha256 for e in entries if e.step == 'export'}
    assert exported == {m['s3_uri']: m['sha256'] for m in published.values()}
    assert len([e for e in entries if e.step == 'export']) == len(second)  # one entry each
    # earlier steps' objects are untouched
    assert before == {e.uri: e.sha256 for e in entries if e.step != 'export'}
    assert s3.read_bytes(layout.uri('eval', 'metrics.json')) == b'{"top1": 0.5}'


def test_a_finished_export_is_returned_again_and_never_replaced(bucket, tmp_path):
    from video_kd.steps import export as export_step

    layout = RunLayout(bucket, 'kd', 'export-done')
    files = _files(
        tmp_path / 'out',
        {'report.html': '<html>report</html>', 'model_card.md': '# card', 'student.onnx': 'm'},
    )
    settings = {'kd_config': 'k', 'export_tolerance': 0.001, 'speed_repeats': 3}
    published = export_step.publish_export(layout, files)
    assert export_step.completed_export(layout, settings) is None  # not finished yet
    output = {'run_id': layout.run_id, 'files': published, 'settings': settings}
    export_step.finish_export(layout, output, tmp_path)
    again = export_step.completed_export(layout, settings)
    assert again['files'] == published and again['settings'] == settings
    assert again['html'] == '<html>report</html>' and again['model_card'] == '# card'
    with pytest.raises(UserError, match='finished export made with other settings'):
        export_step.completed_export(layout, {**settings, 'speed_repeats': 0})
    with pytest.raises(UserError, match='holds a finished export'):
        export_step.publish_export(layout, files)


def test_model_card_lineage_is_what_the_run_recorded(prepared_run, http_server, tmp_path):
    """Regression: the card read the pretrained weights from the named KD config ('random
    init' although the run used ImageNet weights) and listed 4 of the parameters."""
    from video_kd.deploy import model_card
    from video_kd.steps import export as export_step

    content = mobilenet_v2_weights(http_server.root / 'mobilenet_v2.pth')
    sha = hashlib.sha256(content).hexdigest()
    layout = RunLayout.from_root(prepared_run['run_root'])
    teacher = {'s3_uri': layout.root + '/teacher/t.pth', 'sha256': 'a' * 64}
    kd_config = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
    options = TrainOptions(
        max_epochs=4,
        cfg_options=['train_cfg.val_interval=2'],
        student_pretrained_url=http_server.url('mobilenet_v2.pth'),
        student_pretrained_sha256=sha,
    )
    train_step.publish_config(layout, prepared_run, teacher, kd_config, options)
    training = {'parameters': {'kd_config': kd_config, 'training_backend': 'local',
                               'num_workers': 2, **dataclasses.asdict(options)}}  # fmt: skip
    settings = {'kd_config': kd_config, 'student_config': 's', 'image': 'img:1',
                'export_tolerance': 0.001, 'speed_repeats': 3, 'torchscript': True}  # fmt: skip
    lineage = export_step.run_lineage(
        layout, prepared_run, {**teacher, 'source_url': 'https://t/x.pth'}, training, settings,
        tmp_path,
    )  # fmt: skip
    weights = lineage['pretrained_weights']
    assert weights['model.architecture.backbone.pretrained'] == (
        f'{http_server.url("mobilenet_v2.pth")} (sha256 {sha})'
    )
    assert weights['model.teacher.backbone.pretrained'] is None  # the teacher's: its checkpoint
    parameters = lineage['pipeline_parameters']
    for key in ('max_epochs', 'cfg_options', 'teacher_precision', 'teacher_logit_cache',
                'student_pretrained_url', 'student_pretrained_sha256', 'training_backend',
                'num_workers', 'export_tolerance', 'speed_repeats', 'reencode'):  # fmt: skip
        assert key in parameters, key
    assert parameters['cfg_options'] == ['train_cfg.val_interval=2']
    assert parameters['training_config'] == layout.uri('train', 'config.py')
    assert lineage['teacher']['url'] == 'https://t/x.pth' and lineage['image'] == 'img:1'
    assert lineage['dataset']['uri'] == prepared_run['source']
    assert lineage['code_version'] == model_card.code_version()


def test_code_version_names_the_commit_or_says_unknown(monkeypatch):
    from video_kd import __version__
    from video_kd.deploy import model_card

    monkeypatch.setenv(model_card.GIT_COMMIT_ENV, 'abc123')
    assert model_card.code_version() == f'kubeflow-video-kd {__version__}, git commit abc123'
    monkeypatch.setenv(model_card.GIT_COMMIT_ENV, '')
    monkeypatch.setattr(model_card, '_installed_commit', lambda: '')
    monkeypatch.setattr(model_card, '_checkout_commit', lambda: '')
    assert model_card.code_version() == f'kubeflow-video-kd {__version__}, git commit unknown'


# --------------------------------------------------------------------------- the records


def _fits(record, value):
    """``value`` has every required key of the TypedDict ``record`` and no key it lacks."""
    keys = set(value)
    assert record.__required_keys__ <= keys, sorted(record.__required_keys__ - keys)
    assert keys <= set(record.__annotations__), sorted(keys - set(record.__annotations__))


def test_the_records_name_every_key_the_steps_write(prepared_run, http_server):
    """video_kd.core.artifacts: the keys data prep, the teacher step, the evaluation summary
    and the export settings write are their records' (no key missing, none unnamed)."""
    from video_kd.core import artifacts
    from video_kd.distill import evaluate as mmaction_test
    from video_kd.steps import export as export_step
    from video_kd.steps.report import summarise_metrics

    stored = s3.read_json(prepared_run['dataset_meta_uri'])
    for dataset in (prepared_run, stored, common.run_data_meta(prepared_run['run_root'])):
        _fits(artifacts.Dataset, dataset)
        assert set(dataset['splits']) == {'train', 'val'}
        for split, record in dataset['splits'].items():
            _fits(artifacts.DatasetSplit, record)
            assert artifacts.dataset_split(dataset, split) is record
            assert artifacts.split_videos_uri(dataset, split) == record['videos_uri']
            assert artifacts.split_list_uri(dataset, split) == record['list_uri']
        for entry in dataset['files'].values():
            _fits(artifacts.StoredObject, entry)

    content = b'teacher weights'
    (http_server.root / 'teacher.pth').write_bytes(content)
    url = http_server.url('teacher.pth')
    teacher = teacher_step.run(prepared_run['run_root'], url, hashlib.sha256(content).hexdigest())
    _fits(artifacts.Teacher, teacher)
    _fits(artifacts.Teacher, common.run_step_output(prepared_run['run_root'], 'teacher'))

    # ModelScores: what distill.evaluate.evaluate returns (its test loop needs a model: read
    # the keys of the dict it builds), and the one key the step adds
    tree = ast.parse(inspect.getsource(mmaction_test.evaluate))
    (built,) = [
        node.value.keywords
        for node in ast.walk(tree)
        if isinstance(node, ast.Return) and getattr(node.value, 'keywords', None)
    ]
    assert {k.arg for k in built} == artifacts.ModelScores.__required_keys__
    assert artifacts.ModelScores.__optional_keys__ == {'scored_with'}
    score = {
        'top1_acc': 0.5, 'top5_acc': 1.0, 'mean_class_acc': 0.5, 'config': 'c.py',
        'test_pipeline': ['DecordInit()'], 'checkpoint': 'x.pth', 'num_samples': 2,
        'classes': ['a', 'b'], 'confusion_matrix': [[1, 0], [0, 1]], 'scored_with': 'c.py',
        'config_hash': 'f' * 64, 'predictions': [{'index': 0, 'label': 0, 'top5': [0, 1]}],
    }  # fmt: skip
    _fits(artifacts.ModelScores, score)
    scores = {name: dict(score) for name in ('student', 'teacher', 'baseline', 'current')}
    summary = summarise_metrics('run-1', scores)
    summary['current_student'] = {'model_name': 'm', 'uri': 's3://b/models/m/current.json',
                                  'etag': '"e"', 'run_id': 'r', 'problem': ''}  # fmt: skip
    _fits(artifacts.MetricsSummary, summary)
    _fits(artifacts.CurrentScored, summary['current_student'])
    assert set(summary) == set(artifacts.MetricsSummary.__annotations__)  # all four models
    _fits(artifacts.ExportSettings, export_step.export_settings('kd.py'))


def test_publishing_the_same_resolved_config_again_is_a_no_op(bucket, tmp_path):
    """A re-run with the same settings continues, also after an attempt that stored
    train/config.py and died before the manifest recorded it; other settings are refused
    naming the first difference, and nothing is overwritten."""
    layout = RunLayout(bucket, 'kd', 'run-config')
    runs.claim_run(layout)
    data_meta = {'run_root': layout.root, 'num_classes': 3, 'videos_uri': f's3://{bucket}/d/videos'}
    teacher = {'sha256': 'a' * 64}
    kd_config = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
    options = TrainOptions(max_epochs=2, cfg_options=TINY.split())
    uri = layout.uri('train', 'config.py')
    resolved = train_step.resolve_config(data_meta, teacher, kd_config, options)
    body = train_config.save(resolved, tmp_path / 'config.py').read_bytes()
    s3.put_bytes(uri, body)  # stored by a dead attempt, never recorded
    assert Manifest.load(layout).find(uri) is None
    assert train_step.publish_config(layout, data_meta, teacher, kd_config, options) == uri
    entry = Manifest.load(layout).find(uri)
    assert entry and entry.sha256 == hashlib.sha256(body).hexdigest()
    assert train_step.publish_config(layout, data_meta, teacher, kd_config, options) == uri
    other = dataclasses.replace(options, max_epochs=3)
    with pytest.raises(UserError, match=r'holds another training config \(first difference: '):
        train_step.publish_config(layout, data_meta, teacher, kd_config, other)
    assert s3.read_bytes(uri) == body
