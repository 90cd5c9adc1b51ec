"""video_kd.pytorchjob: manifests checked by the SDK models and the Kubernetes schema,
status read from real SDK model objects, and torchrun run for real."""

from __future__ import annotations

import copy
import textwrap

import pytest
from kubeflow.training import models

from video_kd import pytorchjob as pj

COMMAND = ['-m', 'video_kd.train', 'configs/kd_tsm.py', '--work-dir', '/tmp/work']


def _job(**overrides):
    kwargs = dict(
        name='kd-run-7',
        namespace='ml',
        image='registry.local/video-kd:0.1',
        command=COMMAND,
        num_workers=3,
        nproc_per_node=2,
        gpus_per_worker=2,
        cpu='8',
        memory='32Gi',
        env={'S3_ENDPOINT_URL': 'http://minio:9000'},
        s3_secret_name='s3-creds',
        service_account='trainer',
        node_selector={'gpu': 'a100'},
        tolerations=[{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}],
        labels={'app': 'video-kd'},
    )
    kwargs.update(overrides)
    return pj.build_pytorchjob(**kwargs)


def _container(manifest, rtype='Master'):
    return manifest['spec']['pytorchReplicaSpecs'][rtype]['template']['spec']['containers'][0]


def test_manifest_shape_and_validation():
    manifest = _job()
    job = pj.validate_pytorchjob(manifest)

    assert isinstance(job, models.KubeflowOrgV1PyTorchJob)
    assert job.spec.pytorch_replica_specs['Master'].replicas == 1
    assert job.spec.pytorch_replica_specs['Worker'].replicas == 2
    assert job.spec.nproc_per_node == '2'
    assert job.spec.run_policy.backoff_limit == 3
    assert manifest['apiVersion'] == 'kubeflow.org/v1' and manifest['kind'] == 'PyTorchJob'
    for rtype in ('Master', 'Worker'):
        spec = manifest['spec']['pytorchReplicaSpecs'][rtype]
        assert spec['restartPolicy'] == 'OnFailure'
        container = _container(manifest, rtype)
        assert container['name'] == 'pytorch'
        assert container['command'] == ['torchrun'] and container['args'] == COMMAND
        assert container['resources']['limits']['nvidia.com/gpu'] == '2'
        assert container['resources']['requests'] == {'cpu': '8', 'memory': '32Gi'}
        assert container['ports'] == [
            {'name': 'pytorchjob-port', 'containerPort': 23456, 'protocol': 'TCP'}
        ]
        assert spec['template']['spec']['serviceAccountName'] == 'trainer'


def test_credentials_come_from_the_secret_only():
    env = _container(_job())['env']
    assert {'name': 'S3_ENDPOINT_URL', 'value': 'http://minio:9000'} in env
    refs = {e['name']: e['valueFrom']['secretKeyRef'] for e in env if 'valueFrom' in e}
    assert refs['AWS_ACCESS_KEY_ID'] == {
        'name': 's3-creds',
        'key': 'AWS_ACCESS_KEY_ID',
        'optional': False,
    }
    assert refs['AWS_SECRET_ACCESS_KEY']['name'] == 's3-creds'
    assert refs['AWS_SESSION_TOKEN']['optional'] is True
    assert not any('value' in e for e in env if e['name'].startswith('AWS_'))
    with pytest.raises(ValueError, match='Kubernetes Secret'):
        _job(env={'AWS_SECRET_ACCESS_KEY': 'oops'})
    with pytest.raises(ValueError, match='set by the Training Operator'):
        _job(env={'MASTER_ADDR': 'x'})


def test_replica_templates_are_independent_copies():
    manifest = _job()
    _container(manifest)['image'] = 'other:1'
    assert _container(manifest, 'Worker')['image'] == 'registry.local/video-kd:0.1'


def test_single_replica_has_no_worker_and_no_gpu():
    manifest = _job(num_workers=1, gpus_per_worker=0, s3_secret_name=None)
    pj.validate_pytorchjob(manifest)
    assert list(manifest['spec']['pytorchReplicaSpecs']) == ['Master']
    container = _container(manifest)
    assert 'nvidia.com/gpu' not in container['resources']['limits']
    assert not any('valueFrom' in e for e in container['env'])


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match='num_workers >= 1'):
        _job(num_workers=0)


@pytest.mark.parametrize(
    'mutate, expected',
    [
        (
            lambda m: m['spec']['pytorchReplicaSpecs']['Worker'].update(replicas=-1),
            'Worker.replicas: must be an integer >= 1, got -1',
        ),
        (
            lambda m: m['spec']['pytorchReplicaSpecs']['Master'].update(replicas=2),
            'Master.replicas: must be 1',
        ),
        (
            lambda m: _container(m).pop('name'),
            "Master.template.spec.containers[0]: 'name' is a required property",
        ),
        (lambda m: _container(m).pop('image'), 'containers[0].image: required'),
        (
            lambda m: _container(m)['resources']['requests'].update(cpu='lots'),
            "requests.cpu: 'lots' is not a Kubernetes quantity",
        ),
        (
            lambda m: _container(m)['resources']['limits'].update({'nvidia.com/gpu': '-1'}),
            'must not be negative',
        ),
        (lambda m: _container(m).update(imagePullPolicy=3), 'imagePullPolicy'),
        (
            lambda m: _container(m, 'Worker').update(comand=['x']),
            "Worker.template.spec.containers[0]: Additional properties are not allowed ('comand'",
        ),
        (lambda m: m['spec'].update(nprocPerNode=2), 'spec.nprocPerNode'),
        (lambda m: m['spec']['runPolicy'].update(cleanPodPolicy='Sometimes'), 'cleanPodPolicy'),
        (lambda m: m['spec']['pytorchReplicaSpecs'].update(Chief={}), 'Chief: replica type'),
        (lambda m: m['metadata'].update(name='KD_Run'), 'DNS-1035'),
        (lambda m: m.update(kind='TFJob'), 'kind: must be PyTorchJob'),
    ],
)
def test_invalid_manifests_rejected_clearly(mutate, expected):
    manifest = copy.deepcopy(_job())
    mutate(manifest)
    with pytest.raises(ValueError) as info:
        pj.validate_pytorchjob(manifest)
    assert 'invalid PyTorchJob' in str(info.value)
    assert expected in str(info.value)


def test_all_problems_are_listed():
    manifest = _job()
    manifest['spec']['pytorchReplicaSpecs']['Worker']['replicas'] = 0
    _container(manifest).pop('image')
    _container(manifest, 'Worker')['name'] = 'trainer'
    with pytest.raises(ValueError) as error:
        pj.validate_pytorchjob(manifest)
    message = str(error.value)
    assert 'Worker.replicas' in message
    assert 'Master.template.spec.containers[0].image: required' in message
    assert "needs a container named 'pytorch'" in message


def test_sdk_model_type_errors_are_reported():
    manifest = _job()
    manifest['spec']['pytorchReplicaSpecs']['Worker']['replicas'] = 'two'
    with pytest.raises(ValueError, match=r'kubeflow\.training KubeflowOrgV1PyTorchJob model'):
        pj.validate_pytorchjob(manifest)


def _with_conditions(*conditions):
    return models.KubeflowOrgV1PyTorchJob(
        metadata=models.V1ObjectMeta(name='kd-run-7', namespace='ml'),
        status=models.KubeflowOrgV1JobStatus(
            conditions=[
                models.KubeflowOrgV1JobCondition(type=t, status=s, reason=r, message=m)
                for t, s, r, m in conditions
            ]
        ),
    )


def test_job_state_from_sdk_models():
    assert pj.job_state(_with_conditions()).type == 'Pending'
    running = _with_conditions(
        ('Created', 'True', 'PyTorchJobCreated', None),
        ('Running', 'True', 'PyTorchJobRunning', 'running'),
    )
    assert pj.job_state(running) == pj.JobState('Running', 'PyTorchJobRunning', 'running')
    assert pj.check_finished(running) is False
    done = _with_conditions(
        ('Created', 'True', None, None),
        ('Running', 'False', None, None),
        ('Succeeded', 'True', 'PyTorchJobSucceeded', 'ok'),
    )
    assert pj.job_state(done).finished and pj.check_finished(done) is True
    restarting = _with_conditions(
        ('Running', 'False', None, None), ('Restarting', 'True', 'PyTorchJobRestarting', 'pod died')
    )
    assert pj.job_state(restarting).type == 'Restarting'


def test_failed_job_raises_with_reason_and_message():
    failed = _with_conditions(
        ('Running', 'False', None, None),
        (
            'Failed',
            'True',
            'PyTorchJobFailed',
            'PyTorchJob ml/kd-run-7 is failed because 1 Master replica(s) failed.',
        ),
    )
    with pytest.raises(pj.PyTorchJobFailed) as info:
        pj.check_finished(failed)
    assert info.value.reason == 'PyTorchJobFailed'
    assert '1 Master replica(s) failed' in str(info.value)


def test_local_pod_env_matches_the_operator():
    env = pj.local_pod_env(
        node_rank=2, nnodes=3, nproc_per_node=4, master_addr='kd-master-0', master_port=23456
    )
    assert env == {
        'PYTHONUNBUFFERED': '1',
        'MASTER_ADDR': 'kd-master-0',
        'PET_MASTER_ADDR': 'kd-master-0',
        'MASTER_PORT': '23456',
        'PET_MASTER_PORT': '23456',
        'WORLD_SIZE': '12',
        'RANK': '2',
        'PET_NODE_RANK': '2',
        'PET_NNODES': '3',
        'PET_NPROC_PER_NODE': '4',
    }
    assert set(env) == set(pj.OPERATOR_ENV)


ENTRY = textwrap.dedent("""
    import os, sys
    rank = os.environ["RANK"]
    with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as out:
        out.write(f"{rank} {os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']} "
                  f"{os.environ['GREETING']}")
    print(f"hello from rank {rank}", flush=True)
    sys.exit(3 if rank == os.environ.get("FAIL_RANK") else 0)
""")


@pytest.fixture
def entry_dir(tmp_path):
    (tmp_path / 'tiny_entry.py').write_text(ENTRY)
    (tmp_path / 'out').mkdir()
    return tmp_path


def test_run_local_runs_two_processes(entry_dir, caplog):
    caplog.set_level('INFO', logger='video_kd.pytorchjob')
    log_path = entry_dir / 'torchrun.log'
    code = pj.run_local(
        ['-m', 'tiny_entry', str(entry_dir / 'out')],
        nproc_per_node=2,
        env={'GREETING': 'hi'},
        cwd=entry_dir,
        log_path=log_path,
    )
    assert code == 0
    assert (entry_dir / 'out' / 'rank0.txt').read_text() == '0 2 0 hi'
    assert (entry_dir / 'out' / 'rank1.txt').read_text() == '1 2 1 hi'
    assert 'hello from rank 1' in log_path.read_text()
    assert 'hello from rank 0' in caplog.text


def test_run_local_reports_a_failing_rank(entry_dir):
    code = pj.run_local(
        ['-m', 'tiny_entry', str(entry_dir / 'out')],
        nproc_per_node=2,
        env={'GREETING': 'hi', 'FAIL_RANK': '1'},
        cwd=entry_dir,
    )
    assert code != 0
