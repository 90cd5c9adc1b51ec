"""The KFP pipeline: compiled IR (seven typed steps in order, committed YAML up to date) and
real end-to-end runs with KFP's local runner against a real S3 server (moto over HTTP)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import PIPELINE_RUN, PIPELINE_TIMEOUT

from pipelines import kd_pipeline as kp
from video_kd.core.errors import UserError
from video_kd.deploy import promotion
from video_kd.runs import RUN_STEPS, Manifest, RunLayout, new_run_id
from video_kd.steps import data_prep
from video_kd.storage import s3

ORDER = ['check-inputs', 'data-prep', 'teacher-download', 'train', 'convert', 'evaluate', 'export',
         'promote']  # fmt: skip


def _spec(path=kp.PIPELINE_FILE):
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_committed_yaml_is_up_to_date(tmp_path):
    fresh = kp.compile_pipeline(tmp_path / 'fresh.yaml')
    assert fresh.read_text() == kp.PIPELINE_FILE.read_text(), (
        'pipelines/kd_pipeline.yaml is stale: run `video-kd compile` and commit it'
    )


def test_seven_tasks_chained_in_order_with_typed_artifacts():
    spec, _ = _spec()
    tasks = spec['root']['dag']['tasks']
    assert sorted(tasks) == sorted(ORDER)
    for before, after in itertools.pairwise(ORDER):
        assert before in tasks[after].get('dependentTasks', []), f'{after} must follow {before}'
    assert 'dependentTasks' not in tasks['check-inputs']
    assert tasks['data-prep']['dependentTasks'] == ['check-inputs']

    def io(task, side):
        comp = spec['components'][tasks[task]['componentRef']['name']]
        arts = comp.get(f'{side}Definitions', {}).get('artifacts', {})
        return {name: a['artifactType']['schemaTitle'] for name, a in arts.items()}

    assert io('check-inputs', 'input') == io('check-inputs', 'output') == {}
    assert io('data-prep', 'output') == {'dataset': 'system.Dataset'}
    assert io('teacher-download', 'input') == {'dataset': 'system.Dataset'}
    assert io('teacher-download', 'output') == {'teacher': 'system.Model'}
    assert io('train', 'input') == {'dataset': 'system.Dataset', 'teacher': 'system.Model'}
    assert io('train', 'output') == {'kd_model': 'system.Model'}
    assert io('convert', 'input') == {'kd_model': 'system.Model'}
    assert io('convert', 'output') == {'student': 'system.Model'}
    assert io('evaluate', 'output') == {
        'metrics': 'system.Metrics',
        'confusion_matrix': 'system.ClassificationMetrics',
        'report': 'system.Markdown',
    }
    assert io('export', 'input') == {
        'dataset': 'system.Dataset',
        'teacher': 'system.Model',
        'student': 'system.Model',
    }
    assert io('export', 'output') == {
        'onnx_model': 'system.Model',
        'metrics': 'system.Metrics',
        'report': 'system.HTML',
        'model_card': 'system.Markdown',
    }
    assert io('promote', 'input') == {'student': 'system.Model'}
    assert io('promote', 'output') == {'metrics': 'system.Metrics', 'decision': 'system.Markdown'}
    # data flows through artifacts: each consumer reads its producer's output
    producer = {
        name: art['taskOutputArtifact']['producerTask']
        for name, art in tasks['evaluate']['inputs']['artifacts'].items()
    }
    assert producer == {'dataset': 'data-prep', 'teacher': 'teacher-download', 'student': 'convert'}
    assert all(t['cachingOptions'] == {} for t in tasks.values()), 'caching must be off'


def test_typed_parameters_and_no_credentials():
    spec, _ = _spec()
    params = spec['root']['inputDefinitions']['parameters']
    types = {name: p['parameterType'] for name, p in params.items()}
    for name in (
        'dataset_uri',
        'teacher_url',
        'teacher_sha256',
        'kd_config',
        'student_config',
        's3_bucket',
        's3_prefix',
        'image',
        'training_backend',
        'run_id',
        'teacher_precision',
        'model_name',
    ):
        assert types[name] == 'STRING', name
    assert types['promote'] == types['force_promote'] == 'BOOLEAN'
    assert types['promote_min_gain'] == 'NUMBER_DOUBLE'
    for name in (
        'num_workers',
        'gpus_per_worker',
        'nproc_per_node',
        'max_epochs',
        'backoff_limit_per_node',
    ):
        assert types[name] == 'NUMBER_INTEGER', name
    assert params['image']['defaultValue'] == 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'
    assert spec['pipelineInfo']['name'] == 'video-kd-distillation'
    assert not [n for n in params if 'key' in n or 'secret' in n or 'password' in n]
    # the Kubernetes objects the pods read are named by parameters; they hold no credentials
    assert params['s3_credentials']['defaultValue'] == 'video-kd-s3-credentials'
    assert params['s3_config_map']['defaultValue'] == 'video-kd-s3'
    assert params['training_config_map']['defaultValue'] == 'video-kd-training'
    assert types['cfg_options'] == 'LIST' and params['cfg_options']['defaultValue'] == []
    # the chart's scheduled run sets exactly these, so they must exist
    assert {
        'image',
        's3_bucket',
        's3_prefix',
        'num_workers',
        'gpus_per_worker',
        'dataset_uri',
        'teacher_url',
        'teacher_sha256',
        'kd_config',
        'student_config',
    } <= set(params)


def test_steps_run_in_the_image_with_s3_from_secret_and_configmap():
    spec, platform = _spec()
    executors = spec['deploymentSpec']['executors']
    assert len(executors) == 8
    pods = platform['platforms']['kubernetes']['deploymentSpec']['executors']
    # it reads no S3: no credentials in its pod, only the chart's image allow-list
    assert 'secretAsEnv' not in pods['exec-check-inputs'], 'no credentials in its pod'
    assert set(pods['exec-check-inputs']) == {'configMapAsEnv'}
    for name, executor in executors.items():
        container = executor['container']
        assert container['image'] == "{{$.inputs.parameters['pipelinechannel--image']}}"
        assert 'pip install' not in json.dumps(container), 'the image has everything'
        if name == 'exec-check-inputs':
            continue
        k8s = platform['platforms']['kubernetes']['deploymentSpec']['executors'][name]
        (secret,) = k8s['secretAsEnv']
        assert secret['secretNameParameter'] == {'componentInputParameter': 's3_credentials'}
        assert {e['envVar'] for e in secret['keyToEnv']} == {
            'AWS_ACCESS_KEY_ID',
            'AWS_SECRET_ACCESS_KEY',
        }
        maps = {}
        for m in k8s['configMapAsEnv']:
            param = m['configMapNameParameter']['componentInputParameter']
            maps.setdefault(param, []).extend(e['envVar'] for e in m['keyToEnv'])
        assert 'S3_ENDPOINT_URL' in maps['s3_config_map']
        assert ('training_config_map' in maps) == (name in ('exec-train', 'exec-evaluate'))
    job_id = spec['root']['dag']['tasks']['data-prep']['inputs']['parameters']['job_id']
    assert job_id['runtimeValue']['constant'] == '{{$.pipeline_job_uuid}}'


def test_check_inputs_takes_every_checked_parameter_from_the_pipeline():
    """The first step gets the run's parameters as they are (no re-spelling), and every
    one that the checks read."""
    from components.check_inputs.component import check_inputs

    spec, _ = _spec()
    task = spec['root']['dag']['tasks']['check-inputs']['inputs']['parameters']
    inputs = set(check_inputs.component_spec.inputs)
    assert {n: p['componentInputParameter'] for n, p in task.items() if n in inputs} == {
        name: name for name in inputs
    }
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import check_inputs as checks  # the step's module, not the component

    read = {*checks.SHA256_PARAMETERS, *checks.LAUNCH_PARAMETERS, *checks.EVAL_LAUNCH_PARAMETERS}
    read |= {f.name for f in dataclasses.fields(TrainOptions)}
    read |= set(checks.STEP_RESOURCE_PARAMETERS)
    read |= {'run_id', 's3_bucket', 's3_prefix', 'dataset_uri', 'teacher_url', 'baseline_url', 'kd_config',
             'student_config', 'training_backend', 'export_tolerance', 'speed_repeats',
             'speed_batch_size', 'parity_clips', 'image', 'model_name', 'promote_min_gain'}  # fmt: skip
    assert read == inputs


@pytest.mark.parametrize(
    'bad',
    [
        {'export_tolerance': -1.0},
        {'cfg_options': ['optim_wrapper.optimizer.lrr=0.1']},
        {'teacher_sha256': 'g' * 64},
        {'num_workers': 0},
        {'model_name': 'Not/A-Model'},
        {'promote_min_gain': float('nan')},
    ],
)
def test_the_check_inputs_component_exits_2_in_one_line(capsys, bad):
    """What the step's pod runs (the component's function, as KFP's executor calls it)."""
    from components.check_inputs.component import check_inputs

    arguments = {
        **cli_defaults(),
        'teacher_url': 'https://zoo.example/t.pth',
        'teacher_sha256': 'ab' * 32,
        **bad,
    }
    params = {name: arguments[name] for name in check_inputs.component_spec.inputs}
    with pytest.raises(SystemExit) as info:
        check_inputs.python_func(**params)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err


def test_the_check_inputs_component_refuses_an_image_outside_the_charts_list(capsys, monkeypatch):
    """Issue 25, point 8: `image` is a run parameter; the chart's allow-list (its training
    ConfigMap's VIDEO_KD_ALLOWED_IMAGE_PREFIXES, which the compiled pipeline maps into the
    check-inputs pod) refuses another one in one line, exit status 2."""
    from components.check_inputs.component import check_inputs
    from video_kd.steps.check_inputs import ALLOWED_IMAGES_ENV

    arguments = {
        **cli_defaults(),
        'teacher_url': 'https://zoo.example/t.pth',
        'teacher_sha256': 'ab' * 32,
    }
    params = {name: arguments[name] for name in check_inputs.component_spec.inputs}
    monkeypatch.setenv(ALLOWED_IMAGES_ENV, '["ghcr.io/kubeflow-video-kd/video-kd:"]')
    for image in ('evil:latest', 'ghcr.io/kubeflow-video-kd/video-kd-evil:1'):
        with pytest.raises(SystemExit) as info:
            check_inputs.python_func(**{**params, 'image': image})
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: image '{image}' is not allowed: the chart allows ")
        assert err.count('\n') == 1, err
    check_inputs.python_func(**{**params, 'image': 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'})
    # the compiled pipeline gives the check-inputs pod that key, and no S3 credentials
    ir = yaml.safe_load(Path(kp.__file__).with_suffix('.yaml').read_text().split('\n---\n')[-1])
    config = ir['platforms']['kubernetes']['deploymentSpec']['executors']['exec-check-inputs']
    assert [m['keyToEnv'] for m in config['configMapAsEnv']] == [
        [{'configMapKey': ALLOWED_IMAGES_ENV, 'envVar': ALLOWED_IMAGES_ENV}]
    ]
    assert 'secretAsEnv' not in config


def cli_defaults():
    from video_kd import cli

    return cli.pipeline_arguments({})


def test_a_bad_parameter_stops_the_pipeline_before_data_prep(bucket, tmp_path):
    """A run started as the UI starts it (the compiled pipeline, KFP's local runner): a
    bad export_tolerance fails the first step; nothing is claimed or written in S3."""
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / 'kfp-root'),
        raise_on_error=True,
    )
    with pytest.raises(RuntimeError, match='check-inputs'):
        kp.kd_pipeline(
            teacher_url='https://zoo.example/t.pth',
            teacher_sha256='ab' * 32,
            s3_bucket=bucket,
            s3_prefix='p',
            run_id='bad-tolerance',
            export_tolerance=-1.0,
        )
    assert not s3.list_uris(f's3://{bucket}/')


def test_run_ids_are_unique_and_a_used_run_dir_is_refused(bucket, tmp_path):
    ids = {new_run_id('{{$.pipeline_job_uuid}}') for _ in range(20)}
    assert len(ids) == 20 and all('{' not in i for i in ids)
    assert new_run_id('8f1c-uuid').endswith('-8f1c-uuid')
    opts = 'generate://?num_classes=2&train_per_class=2&val_per_class=1&num_frames=10'
    meta = data_prep.run(opts, bucket, 'p', run_id='r1', job_id='job-a', workdir=tmp_path / 'a')
    assert meta['run_root'] == f's3://{bucket}/p/r1' and meta['num_classes'] == 2
    # the generated dataset went into the run's data/source/, each file recorded in the manifest
    video = f's3://{bucket}/p/r1/data/source/videos/move_up/train_0000.mp4'
    assert s3.exists(video)
    recorded = {e.uri for e in Manifest.load(RunLayout(bucket, 'p', 'r1')).entries}
    assert video in recorded and meta['dataset_meta_uri'] in recorded
    assert len([u for u in recorded if u.endswith('.mp4')]) == 2 * (2 + 1)
    # a retry of the same KFP run continues; any other run is refused
    data_prep.run(opts, bucket, 'p', run_id='r1', job_id='job-a', workdir=tmp_path / 'b')
    with pytest.raises(UserError, match='already used by another run'):
        data_prep.run(opts, bucket, 'p', run_id='r1', job_id='job-b', workdir=tmp_path / 'c')
    with pytest.raises(UserError, match='unknown generator option'):
        data_prep.run('generate://?classes=2', bucket, 'p', run_id='r2')


def _check_retention(pipeline_run: dict, manifest: Manifest, names: set[str], tmp_path) -> None:
    """Issue 21 point 9, keep_checkpoints=1 with validation every epoch: epoch 1 was recorded,
    then removed from the manifest and deleted; the newest and the best stay, recorded and
    stored (``_verify_run``: every entry is in S3), and neither holds the frozen teacher."""
    import torch

    run_id = pipeline_run['run_id']
    removed = {uri.rsplit(run_id + '/', 1)[1] for uri, _ in manifest.removed}
    assert 'train/checkpoints/epoch_1.pth' in removed
    kept = {n for n in names if n.startswith('train/checkpoints/')}
    (best,) = kept - {'train/checkpoints/epoch_2.pth'}
    assert re.fullmatch(r'train/checkpoints/best_acc_top1_epoch_[12]\.pth', best), kept
    prefix = RunLayout.from_root(pipeline_run['run_root']).uri('train', 'checkpoints') + '/'
    assert {uri.rsplit(run_id + '/', 1)[1] for uri in s3.list_uris(prefix)} == kept
    for name in kept:
        local = s3.download_file(f'{pipeline_run["run_root"]}/{name}', tmp_path / 'kept.pth')
        state = torch.load(local, map_location='cpu', weights_only=False)['state_dict']
        assert not any(key.startswith('teacher.') for key in state), name
        local.unlink()


def _verify_run(run_root: str, tmp_path) -> Manifest:
    """Every manifest entry is in S3 with the recorded checksum; every step wrote something."""
    manifest = Manifest.load(RunLayout.from_root(run_root))
    for i, entry in enumerate(manifest.entries):
        local = s3.download_file(entry.uri, tmp_path / f'obj{i}')
        assert s3.sha256_file(local) == entry.sha256, entry.uri
        assert local.stat().st_size == entry.size_bytes
    assert {e.step for e in manifest.entries} == set(RUN_STEPS)
    return manifest


# The session's one whole-pipeline run with KFP's local subprocess runner (conftest's
# pipeline_run: teacher and baseline trained first, KD 2 epochs with the bf16 fast teacher set
# as a pipeline parameter, baseline on); the tests below check its artifacts. A second run in
# the same bucket leaving this one's objects untouched is checked by the containerised run
# (tests/test_image.py), which compares its metrics with this run's.
# Its time counts toward the first test that asks for it: 555-841 s was measured on CI's 2
# shared cores for two runs, too close to the global --timeout=900 (pyproject.toml).


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_end_to_end_local_runner_writes_every_step_and_checksums(pipeline_run, s3_env, tmp_path):
    manifest = _verify_run(pipeline_run['run_root'], tmp_path / 'v1')
    names = {e.uri.rsplit(pipeline_run['run_id'] + '/', 1)[1] for e in manifest.entries}
    assert {
        'data/train_list.txt',
        'data/val_list.txt',
        'data/classes.txt',
        'data/report.json',
        'train/checkpoints/epoch_2.pth',
        'student/epoch_2_student.pth',
        'eval/metrics.json',
        'eval/report.md',
    } <= names
    assert any(n.startswith('teacher/') for n in names)
    _check_retention(pipeline_run, manifest, names, tmp_path)
    logs = [n for n in names if n.startswith('train/logs/')]
    assert any(n.endswith('.log') for n in logs) and any(n.endswith('/scalars.json') for n in logs)
    assert pipeline_run['run_root'].startswith(f's3://{pipeline_run["bucket"]}/kd/')
    assert not list(pipeline_run['scratch'].glob('video_kd_*')), 'a step left its scratch'
    # the teacher went through the checksum cache
    assert s3.list_uris(f's3://{pipeline_run["bucket"]}/kd/cache/teacher/')
    print(f'\npipeline: subprocess run {pipeline_run["seconds"]:.0f}s')


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_end_to_end_curves_in_s3_and_the_first_run_promotes(pipeline_run, s3_env, tmp_path):
    """The training's curves went to the run while it trained (scalars and TensorBoard event
    files, readable by TensorBoard), and the run, the first of its model, was promoted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    layout = RunLayout.from_root(pipeline_run['run_root'])
    (events,) = s3.list_uris(layout.uri('train', 'tensorboard') + '/')
    local = s3.download_file(events, tmp_path / events.rsplit('/', 1)[1])
    curves = EventAccumulator(str(local)).Reload()
    assert len(curves.Scalars('acc/top1')) == PIPELINE_RUN['kd_epochs']
    assert len(curves.Scalars('teacher.acc/top1')) == PIPELINE_RUN['kd_epochs']
    assert 'distill.loss_dist' in curves.Tags()['scalars']
    (scalars,) = s3.list_uris(layout.uri('train', 'scalars') + '/')
    lines = [json.loads(line) for line in s3.read_bytes(scalars).decode().splitlines()]
    assert sum('teacher.acc/top1' in line for line in lines) == PIPELINE_RUN['kd_epochs']

    found = pipeline_run['metrics']['current_student']
    assert found['etag'] is None and not found['problem']  # no current student before it
    decision = s3.read_json(layout.uri('promote', 'decision.json'))
    assert decision['decision']['promoted'], decision['decision']['reasons']
    place = promotion.ModelPlace(layout.bucket, layout.prefix, 'tsm-mobilenetv2_tiny')
    current = s3.read_json(place.current_uri)
    assert current['run_id'] == layout.run_id
    assert current['metrics'] == pipeline_run['metrics']['student']
    assert len(promotion.history(place)) == 1


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_end_to_end_local_runner_metrics(pipeline_run):
    metrics = pipeline_run['metrics']
    for model in ('student', 'teacher', 'baseline'):
        for key in ('top1_acc', 'top5_acc', 'mean_class_acc'):
            assert 0.0 <= metrics[model][key] <= 1.0
    assert metrics['kd_gain']['top1_acc'] == pytest.approx(
        metrics['student']['top1_acc'] - metrics['baseline']['top1_acc']
    )
    assert metrics['num_val'] == 6 and len(metrics['confusion_matrix']) == 3


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_end_to_end_local_runner_fast_teacher_from_the_pipeline_parameter(
    pipeline_run, s3_env, tmp_path
):
    """teacher_precision: pipeline parameter -> PyTorchJob pod -> train."""
    manifest = pipeline_run['manifest']
    (config,) = [e.uri for e in manifest.entries if e.uri.endswith('vis_data/config.py')]
    resolved = s3.download_file(config, tmp_path / 'config.py').read_text()
    assert "type='InferenceTeacherDistill'" in resolved and "teacher_precision='bf16'" in resolved
    # the one resolved config the train step wrote, which every training process loaded
    run_config = RunLayout.from_root(pipeline_run['run_root']).uri('train', 'config.py')
    written = s3.download_file(run_config, tmp_path / 'run_config.py').read_text()
    epochs = PIPELINE_RUN['kd_epochs']
    assert "type='InferenceTeacherDistill'" in written and f'max_epochs={epochs}' in written
    assert 'custom_imports = dict(' in written and "'video_kd.distill.plugins'" in written


def test_a_failed_data_prep_gives_its_run_id_back(bucket, tmp_path):
    """Regression: a failed data prep left run.json behind, so the fixed re-run was refused."""
    with pytest.raises(UserError, match='unknown generator option'):
        data_prep.run('generate://?classes=2', bucket, 'p', run_id='r3')
    assert not s3.list_uris(f's3://{bucket}/p/r3/')
    opts = 'generate://?num_classes=2&train_per_class=2&val_per_class=1&num_frames=10'
    meta = data_prep.run(opts, bucket, 'p', run_id='r3', workdir=tmp_path / 'w')
    assert meta['run_id'] == 'r3'


def test_every_step_pod_requests_resources_and_the_train_task_is_retried():
    """Not BestEffort (the first pod evicted): every step's container requests the run's
    step_cpu_request / step_memory_request (the chart's values, as upload's --param
    defaults).  The train task alone is retried by KFP, within a window (Argo counts it from
    the first attempt) that spans the longest deadline and the step's wait."""
    from video_kd.steps import train

    spec, _ = _spec()
    parameters = spec['root']['inputDefinitions']['parameters']
    assert parameters['step_cpu_request']['defaultValue'] == '1'
    assert parameters['step_memory_request']['defaultValue'] == '4Gi'
    assert parameters['max_training_hours'] == {
        'defaultValue': 168.0,
        'description': parameters['max_training_hours']['description'],
        'isOptional': True,
        'parameterType': 'NUMBER_DOUBLE',
    }
    for name, executor in spec['deploymentSpec']['executors'].items():
        resources = executor['container']['resources']
        assert resources == {
            'resourceCpuRequest': "{{$.inputs.parameters['pipelinechannel--step_cpu_request']}}",
            'resourceMemoryRequest': (
                "{{$.inputs.parameters['pipelinechannel--step_memory_request']}}"
            ),
        }, name
    tasks = spec['root']['dag']['tasks']
    assert [name for name, task in tasks.items() if 'retryPolicy' in task] == ['train']
    retry = tasks['train']['retryPolicy']
    assert retry['maxRetryCount'] == kp.TRAIN_RETRIES >= 1
    window = int(retry['backoffMaxDuration'].removesuffix('s'))
    assert window >= train.MAX_TRAINING_HOURS * 3600 + train.WAIT_GRACE_S
    trained = tasks['train']['inputs']['parameters']['max_training_hours']
    assert trained == {'componentInputParameter': 'max_training_hours'}
