"""video_kd.backends (spec, pytorchjob, kube, local): manifests checked against the Training
Operator's real CRD schema (v1.9.4) and its webhook rules, job names against the names the
operator derives, the job's life (create / adopt / replace / delete, SIGTERM, failures)
against a Kubernetes API server over HTTP, and torchrun run for real."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import types
import uuid
from pathlib import Path

import pytest
from crd_schema import PYTORCHJOB_CRD, problems
from kube_server import CUT, GONE, HOLD, VANISH, FakeKube, pod
from kubernetes import client as k8s
from kubernetes.utils import parse_quantity

from video_kd import backends
from video_kd.backends import kube, local, pytorchjob, torchrun
from video_kd.backends.spec import JOB_NAME_MAX, JobSpecError, TrainingJobSpec, job_name
from video_kd.core.errors import BAD_INPUT, TEMPORARY_FAILURE, UserError, run_cli
from video_kd.runs import Manifest, RunLayout
from video_kd.storage import s3

COMMAND = (
    '-m',
    'video_kd.distill.train_pod',
    's3://b/kd/run/train/config.py',
    '--work-dir',
    '/tmp/w',
)
RUN_ID = '3f2a9c4e-8b1d-4e6f-9a7c-2d5e8f1b3c4a'  # what a KFP run id looks like: a UUID
DNS1035 = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {
    'resources': {'requests': {'cpu': '8', 'memory': '32Gi'}, 'limits': {'memory': '48Gi'}},
    'nodeSelector': {'nvidia.com/gpu.present': 'true'},
    'tolerations': [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}],
    'affinity': {
        'nodeAffinity': {
            'requiredDuringSchedulingIgnoredDuringExecution': {
                'nodeSelectorTerms': [
                    {'matchExpressions': [{'key': 'pool', 'operator': 'In', 'values': ['gpu']}]}
                ]
            }
        }
    },
}
# The training ConfigMap + S3 ConfigMap, as the step pod's environment (non-default names).
STEP_ENV = {
    'VIDEO_KD_SERVICE_ACCOUNT': 'kd-trainer',
    'VIDEO_KD_WORKER_POD_OVERRIDES': json.dumps(OVERRIDES),
    'VIDEO_KD_GPU_RESOURCE': 'amd.com/gpu',
    'VIDEO_KD_KUEUE_QUEUE': 'team-a-gpus',
    'VIDEO_KD_PRIORITY_CLASS': 'kd-high',
    'VIDEO_KD_PVC': 'kd-cache',
    'VIDEO_KD_PVC_MOUNT': '/data/cache',
    'VIDEO_KD_BACKOFF_LIMIT_PER_NODE': '2',
    'S3_CREDENTIALS_SECRET': 'team-s3',
    'S3_ACCESS_KEY_ID_KEY': 'access-key',
    'S3_SECRET_ACCESS_KEY_KEY': 'secret-key',
    'S3_ENDPOINT_URL': 'http://minio:9000',
    'AWS_DEFAULT_REGION': 'eu-west-1',
}


def make_spec(env=None, **overrides) -> TrainingJobSpec:
    kwargs = dict(
        run_id=RUN_ID,
        image='registry.local/video-kd:0.1-cuda',
        command=COMMAND,
        num_nodes=3,
        gpus_per_worker=2,
        namespace='ml',
        env=STEP_ENV if env is None else env,
    )
    kwargs.update(overrides)
    return backends.spec_from_env(**kwargs)


def containers(manifest, rtype='Master'):
    return manifest['spec']['pytorchReplicaSpecs'][rtype]['template']['spec']['containers']


PYTORCHJOB_WEBHOOK = 'validator.pytorchjob.training-operator.kubeflow.org'  # v1.9 manifests


def webhook_problems(manifest: dict) -> list[str]:
    """The Training Operator v1.9 admission webhook's PyTorchJob rules (validation_webhook.go)
    and the API server's quantity parsing: what the CRD's JSON schema cannot say."""
    found = []
    # Enums the CRD leaves as plain strings; the operator's Go types reject anything else.
    if manifest['spec']['runPolicy'].get('cleanPodPolicy') not in (None, 'None', 'Running', 'All'):
        found.append('cleanPodPolicy: must be None, Running or All')
    name = manifest['metadata']['name']
    if not DNS1035.match(name) or len(name) > 63:
        found.append(f'metadata.name {name!r}: not a DNS-1035 label')
    for rtype, replica in manifest['spec']['pytorchReplicaSpecs'].items():
        if rtype not in ('Master', 'Worker'):
            found.append(f'{rtype}: replica type must be Master or Worker')
        if rtype == 'Master' and replica.get('replicas') != 1:
            found.append('Master.replicas must be 1')
        if replica.get('restartPolicy') not in ('Always', 'OnFailure', 'Never', 'ExitCode'):
            found.append(f'{rtype}.restartPolicy: must be Always, OnFailure, Never or ExitCode')
        pod_spec = replica['template']['spec']
        if not any(c['name'] == 'pytorch' for c in pod_spec['containers']):
            found.append(f'{rtype}: needs a container named pytorch')
        for c in pod_spec['containers']:
            if not c.get('image'):
                found.append(f'{rtype}.{c["name"]}.image: required')
            for kind in ('requests', 'limits'):
                for key, value in (c.get('resources', {}).get(kind) or {}).items():
                    try:
                        if parse_quantity(value) < 0:
                            found.append(f'{rtype}.{kind}.{key}: negative')
                    except ValueError:
                        found.append(f'{rtype}.{kind}.{key}: {value!r} is not a quantity')
    return found


# --- names ------------------------------------------------------------------------------


def test_job_name_fits_every_name_the_operators_derive_from_it():
    names = set()
    for _ in range(2000):
        run_id = str(uuid.uuid4())
        name = job_name(run_id)
        names.add(name)
        assert DNS1035.match(name) and len(name) <= JOB_NAME_MAX
        assert name == job_name(run_id), 'every attempt of a run gets the same job'
        assert name.startswith('vkd-' + run_id.replace('-', '')[:8])
        # Training Operator v1.9: Service and pod per replica, '<job>-<rtype>-<index>'.
        # Trainer v2: JobSet '<job>', Job '<job>-node-0', pod hostname '<job>-node-0-<index>'.
        for derived in (f'{name}-master-0', f'{name}-worker-99999', f'{name}-node-0-99999'):
            assert len(derived) <= 63 and DNS1035.match(derived), derived
    assert len(names) == 2000
    # Runs whose ids share the readable prefix still get different jobs.
    assert job_name(RUN_ID) != job_name(RUN_ID[:-1] + 'b')


def test_full_run_id_in_labels_and_annotations_of_the_job_and_pods():
    manifest = pytorchjob.manifest(make_spec())
    meta = manifest['metadata']
    assert meta['name'] == job_name(RUN_ID)
    assert meta['labels']['video-kd/run-id'] == RUN_ID
    assert meta['annotations']['video-kd/run-id'] == RUN_ID
    pod_meta = manifest['spec']['pytorchReplicaSpecs']['Worker']['template']['metadata']
    assert pod_meta['labels']['video-kd/run-id'] == RUN_ID
    # A run id that is no valid label value (too long) stays in the annotation only.
    long_id = 'local-' + 'x' * 70
    meta = pytorchjob.manifest(make_spec(run_id=long_id))['metadata']
    assert (
        'video-kd/run-id' not in meta['labels']
        and meta['annotations']['video-kd/run-id'] == long_id
    )


# --- the manifest: CRD schema, webhook, every setting -----------------------------------


@pytest.mark.parametrize('nodes', [1, 2, 4])
def test_manifest_passes_the_crd_schema_and_the_webhook(nodes):
    manifest = pytorchjob.manifest(make_spec(num_nodes=nodes))
    assert problems(manifest, PYTORCHJOB_CRD, 'v1') == []
    assert webhook_problems(manifest) == []
    assert (
        pytorchjob.build(make_spec(num_nodes=nodes)).spec.pytorch_replica_specs['Master'].replicas
        == 1
    )
    replicas = manifest['spec']['pytorchReplicaSpecs']
    assert set(replicas) == ({'Master', 'Worker'} if nodes > 1 else {'Master'})
    if nodes > 1:
        assert replicas['Worker']['replicas'] == nodes - 1


@pytest.mark.parametrize(
    'mutate, expected',
    [
        (lambda m: containers(m)[0].update(comand=['x']), "('comand' was unexpected)"),
        (lambda m: m['spec'].update(nprocPerNode=2), 'nprocPerNode'),
        (lambda m: containers(m)[0].pop('name'), "'name' is a required property"),
        (lambda m: m['spec']['runPolicy'].update(backoffLimit='3'), "'3' is not of type"),
    ],
)
def test_the_crd_schema_catches_what_a_builder_bug_would_send(mutate, expected):
    manifest = copy.deepcopy(pytorchjob.manifest(make_spec()))
    mutate(manifest)
    assert any(expected in p for p in problems(manifest, PYTORCHJOB_CRD, 'v1'))


def test_webhook_rules_catch_what_the_schema_cannot():
    manifest = pytorchjob.manifest(make_spec())
    manifest['spec']['pytorchReplicaSpecs']['Master']['replicas'] = 2
    containers(manifest, 'Worker')[0]['name'] = 'trainer'
    containers(manifest)[0]['resources']['requests']['cpu'] = 'lots'
    manifest['spec']['runPolicy']['cleanPodPolicy'] = 'Sometimes'
    manifest['spec']['pytorchReplicaSpecs']['Worker']['restartPolicy'] = 'Maybe'
    found = webhook_problems(manifest)
    assert 'cleanPodPolicy: must be None, Running or All' in found
    assert 'Worker.restartPolicy: must be Always, OnFailure, Never or ExitCode' in found
    assert 'Master.replicas must be 1' in found
    assert 'Worker: needs a container named pytorch' in found
    assert "Master.requests.cpu: 'lots' is not a quantity" in found


def test_every_setting_reaches_the_pods():
    manifest = pytorchjob.manifest(make_spec())
    assert manifest['spec']['nprocPerNode'] == '2', 'one process per GPU by default'
    policy = manifest['spec']['runPolicy']
    assert policy['backoffLimit'] == 2 * 3, 'per node x nodes'
    assert policy['cleanPodPolicy'] == 'Running'
    assert policy['schedulingPolicy'] == {'priorityClass': 'kd-high'}
    assert manifest['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a-gpus'
    for rtype in ('Master', 'Worker'):
        replica = manifest['spec']['pytorchReplicaSpecs'][rtype]
        assert replica['restartPolicy'] == 'ExitCode'
        template = replica['template']
        assert template['metadata']['annotations'] == {'sidecar.istio.io/inject': 'false'}
        spec = template['spec']
        assert spec['serviceAccountName'] == 'kd-trainer'
        assert spec['automountServiceAccountToken'] is False
        assert spec['priorityClassName'] == 'kd-high'
        assert spec['nodeSelector'] == OVERRIDES['nodeSelector']
        assert spec['tolerations'] == OVERRIDES['tolerations']
        assert spec['affinity'] == OVERRIDES['affinity']
        assert {'name': 'cache', 'persistentVolumeClaim': {'claimName': 'kd-cache'}} in spec[
            'volumes'
        ]
        (c,) = spec['containers']
        assert c['name'] == 'pytorch' and c['args'] == list(COMMAND)
        # torchrun through the launcher: exit 2 (bad input) is final, 128 is retried
        assert c['command'] == ['python', '-m', 'video_kd.backends.torchrun']
        assert c['resources'] == {
            'requests': {'cpu': '8', 'memory': '32Gi'},
            'limits': {'memory': '48Gi', 'amd.com/gpu': '2'},
        }
        assert {'name': 'cache', 'mountPath': '/data/cache'} in c['volumeMounts']
        env = {e['name']: e for e in c['env']}
        assert env['AWS_DEFAULT_REGION']['value'] == 'eu-west-1'
        assert env['S3_ENDPOINT_URL']['value'] == 'http://minio:9000'
        assert env['VIDEO_KD_RUN_ID']['value'] == RUN_ID
        assert env['AWS_ACCESS_KEY_ID']['valueFrom']['secretKeyRef'] == {
            'name': 'team-s3',
            'key': 'access-key',
            'optional': False,
        }
        assert env['AWS_SECRET_ACCESS_KEY']['valueFrom']['secretKeyRef']['key'] == 'secret-key'
        assert not any(
            'value' in e for name, e in env.items() if name.startswith('AWS_') and 'KEY' in name
        )


def test_defaults_without_a_configmap():
    manifest = pytorchjob.manifest(make_spec(env={}, num_nodes=1, gpus_per_worker=0))
    assert manifest['spec']['nprocPerNode'] == '1'
    assert manifest['spec']['runPolicy']['backoffLimit'] == 3
    assert 'schedulingPolicy' not in manifest['spec']['runPolicy']
    assert 'kueue.x-k8s.io/queue-name' not in manifest['metadata']['labels']
    (c,) = containers(manifest)
    # today's defaults: 2 CPUs, 8Gi, memory limited to the request; no GPU
    assert c['resources'] == {
        'requests': {'cpu': '2', 'memory': '8Gi'},
        'limits': {'memory': '8Gi'},
    }
    refs = {e['name']: e['valueFrom']['secretKeyRef'] for e in c['env'] if 'valueFrom' in e}
    assert refs['AWS_ACCESS_KEY_ID'] == {
        'name': 'video-kd-s3-credentials',
        'key': 'AWS_ACCESS_KEY_ID',
        'optional': False,
    }
    assert problems(manifest, PYTORCHJOB_CRD, 'v1') == []


@pytest.mark.parametrize(
    'overrides, env, message',
    [
        ({'num_nodes': 0}, {}, 'num_nodes must be >= 1'),
        ({'nproc_per_node': 0}, {}, None),  # 0 means "default": one per GPU
        (
            {},
            {'VIDEO_KD_WORKER_POD_OVERRIDES': '{oops'},
            'VIDEO_KD_WORKER_POD_OVERRIDES is not valid JSON',
        ),
        ({}, {'VIDEO_KD_BACKOFF_LIMIT_PER_NODE': 'many'}, 'must be an integer'),
        ({'namespace': 'Team_A'}, {}, 'not a Kubernetes namespace name'),
    ],
)
def test_bad_settings_are_one_clear_user_error(overrides, env, message):
    if message is None:
        assert make_spec(env=env, **overrides).procs_per_node == 2
        return
    with pytest.raises(JobSpecError, match=re.escape(message)) as info:
        make_spec(env=env, **overrides)
    assert isinstance(info.value, UserError) and '\n' not in str(info.value)


def test_literal_credentials_and_operator_env_are_refused():
    with pytest.raises(JobSpecError, match='Kubernetes Secret'):
        TrainingJobSpec(RUN_ID, 'ml', 'img', COMMAND, env={'AWS_SECRET_ACCESS_KEY': 'oops'})
    with pytest.raises(JobSpecError, match='set by the operator'):
        TrainingJobSpec(RUN_ID, 'ml', 'img', COMMAND, env={'MASTER_ADDR': 'x'})
    with pytest.raises(backends.UnknownBackend, match="'slurm': use one of pytorchjob, trainjob"):
        backends.get('slurm')


def test_backend_from_parameter_then_configmap_then_default():
    assert backends.backend_from_env('', {}) == 'pytorchjob'
    assert backends.backend_from_env('', {'VIDEO_KD_TRAINING_BACKEND': 'trainjob'}) == 'trainjob'
    assert backends.backend_from_env('local', {'VIDEO_KD_TRAINING_BACKEND': 'trainjob'}) == 'local'
    with pytest.raises(backends.UnknownBackend, match="'slurm'"):
        backends.backend_from_env('', {'VIDEO_KD_TRAINING_BACKEND': 'slurm'})


# --- status conditions as the operator writes them ---------------------------------------

CREATED = {
    'type': 'Created',
    'status': 'True',
    'reason': 'PyTorchJobCreated',
    'message': 'PyTorchJob ml/x is created.',
}
RUNNING = {
    'type': 'Running',
    'status': 'True',
    'reason': 'PyTorchJobRunning',
    'message': 'PyTorchJob ml/x is running.',
}
RESTARTING = {
    'type': 'Restarting',
    'status': 'True',
    'reason': 'PyTorchJobRestarting',
    'message': 'PyTorchJob x is restarting because 1 Worker replica(s) failed.',
}
SUCCEEDED = {
    'type': 'Succeeded',
    'status': 'True',
    'reason': 'PyTorchJobSucceeded',
    'message': 'PyTorchJob ml/x successfully completed.',
}
FAILED = {
    'type': 'Failed',
    'status': 'True',
    'reason': 'PyTorchJobFailed',
    'message': 'PyTorchJob ml/x has failed because 1 Master replica(s) failed.',
}
NOT_RUNNING = {**RUNNING, 'status': 'False'}


def test_state_from_conditions():
    def state(*conds):
        return pytorchjob.state({'status': {'conditions': list(conds)}})

    assert pytorchjob.state({}).type == 'Pending'
    assert state(CREATED, RUNNING) == kube.JobState(
        'Running', 'PyTorchJobRunning', RUNNING['message']
    )
    assert state(CREATED, NOT_RUNNING, RESTARTING).type == 'Restarting'
    done = state(CREATED, NOT_RUNNING, SUCCEEDED)
    assert done.succeeded and done.finished and not done.failed
    failed = state(CREATED, NOT_RUNNING, FAILED)
    assert failed.failed and failed.reason == 'PyTorchJobFailed'


# --- the job's life against an API server ------------------------------------------------

MASTER_LABELS = {
    'training.kubeflow.org/job-name': job_name(RUN_ID),
    'training.kubeflow.org/replica-type': 'master',
}


@pytest.fixture
def cluster():
    """An API server with the operator's webhook: every PyTorchJob a test submits meets it."""
    with FakeKube() as fake:
        fake.admission['pytorchjobs'] = (PYTORCHJOB_WEBHOOK, webhook_problems)
        yield fake


def run(cluster, spec=None, timeout=30):
    backends.run_training('pytorchjob', spec or make_spec(), timeout, api=cluster.api())


def test_success_streams_rank0_log_and_deletes_the_job(cluster, caplog):
    caplog.set_level(logging.INFO, logger='video_kd.backends.kube')
    name = job_name(RUN_ID)
    cluster.objects[('localqueues', 'ml', 'team-a-gpus')] = {'metadata': {'name': 'team-a-gpus'}}
    cluster.scripts[name] = [[CREATED], [CREATED, RUNNING], [CREATED, NOT_RUNNING, SUCCEEDED]]
    cluster.pods.append(pod(f'{name}-master-0', MASTER_LABELS))
    cluster.logs[f'{name}-master-0'] = 'epoch 1 loss 0.5\nepoch 2 loss 0.25\n'
    run(cluster)
    # one create, one watch (no polling), one delete; the queue checked first
    assert cluster.verbs('pytorchjobs') == ['POST', 'WATCH', 'DELETE']
    assert cluster.calls[0] == (
        'GET',
        '/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/localqueues/team-a-gpus',
    )
    assert not any(k[0] == 'pytorchjobs' for k in cluster.objects), 'the job is deleted'
    assert 'epoch 2 loss 0.25' in caplog.text
    assert 'PyTorchJob vkd-' in caplog.text and 'Succeeded' in caplog.text


def test_failure_carries_the_operators_reason_and_the_exit_codes(cluster):
    name = job_name(RUN_ID)
    cluster.objects[('localqueues', 'ml', 'team-a-gpus')] = {}
    cluster.scripts[name] = [[CREATED, RUNNING], [CREATED, NOT_RUNNING, FAILED]]
    cluster.pods.append(pod(f'{name}-master-0', MASTER_LABELS, 'Failed', exit_code=2))
    with pytest.raises(backends.TrainingJobFailed) as info:
        run(cluster)
    text = str(info.value)
    assert 'PyTorchJobFailed' in text and '1 Master replica(s) failed' in text
    assert f'{name}-master-0: exit 2 (Error)' in text
    assert not cluster.objects.get(('pytorchjobs', 'ml', name)), 'a failed job is deleted too'


WORKER_LABELS = {
    'training.kubeflow.org/job-name': job_name(RUN_ID),
    'training.kubeflow.org/replica-type': 'worker',
}


def retried_failures(name: str, count: int, exit_code: int = 137) -> list[tuple[str, dict]]:
    """The pod watch's events of ``count`` retried failures of worker 0, as the operator makes
    them under ExitCode: the pod ends Failed, the operator deletes it and creates one of the
    same name, a new UID (no container restart, which is all its backoffLimit counts)."""
    events = []
    for i in range(count):
        failed = pod(f'{name}-worker-0', WORKER_LABELS, 'Failed', exit_code=exit_code,
                     reason='OOMKilled', uid=f'uid-{i}')  # fmt: skip
        events += [('MODIFIED', failed), ('DELETED', failed)]
        events.append(('ADDED', pod(f'{name}-worker-0', WORKER_LABELS, uid=f'uid-{i + 1}')))
    return events


def test_retried_pods_past_the_backoff_limit_fail_the_step_in_one_line(cluster):
    """The Training Operator ignores backoffLimit under ExitCode (kubeflow/trainer#2045) and
    would re-create the pod forever: the step counts the retried pods and ends the job."""
    spec = make_spec(env={}, num_nodes=2, backoff_limit_per_node=1)
    assert pytorchjob.manifest(spec)['spec']['runPolicy']['backoffLimit'] == 2, 'still written'
    cluster.scripts[spec.name] = [[CREATED, RUNNING], [CREATED, NOT_RUNNING, RESTARTING], HOLD]
    cluster.pod_events = retried_failures(spec.name, 3)
    with pytest.raises(backends.TrainingJobFailed) as info:
        run(cluster, spec)
    assert str(info.value) == (
        f'{spec.name} failed: BackoffLimitExceeded: 3 training pods failed with an exit status '
        'the operator retries, more than the backoff limit of 2 (the last: '
        f'{spec.name}-worker-0: exit 137 (OOMKilled)) ('
        + '; '.join([f'{spec.name}-worker-0: exit 137 (OOMKilled)'] * 3)
        + ')'
    ), 'each failed pod (by UID) named, with its exit'
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects, 'the job is deleted'
    assert cluster.verbs('pytorchjobs')[-1] == 'DELETE'


def test_retried_pods_within_the_backoff_limit_let_the_job_go_on(cluster, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.backends.kube')
    spec = make_spec(env={}, num_nodes=2, backoff_limit_per_node=1)
    # the job restarts twice and succeeds; the pause lets the pods be watched more than once
    cluster.scripts[spec.name] = [
        [CREATED, RUNNING],
        [CREATED, NOT_RUNNING, RESTARTING],
        1.5,
        [CREATED, RUNNING],
        [CREATED, NOT_RUNNING, SUCCEEDED],
    ]
    cluster.pod_events = retried_failures(spec.name, 2)
    run(cluster, spec)
    assert '(2 of the backoff limit 2)' in caplog.text
    assert '(3 of' not in caplog.text, (
        'a pod seen again (MODIFIED, DELETED, a re-watch) counts once'
    )
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_only_exits_the_operator_retries_count_against_the_limit():
    assert [pytorchjob.retried(c) for c in (137, 128, 255, None)] == [True] * 4
    assert [pytorchjob.retried(c) for c in (0, 1, 2, 75, 127)] == [False] * 5
    counted = kube.RetriedPods(pytorchjob.backoff(make_spec(env={})), 'pytorch')
    client = k8s.ApiClient()

    def v1(p):  # the V1Pod a list or watch gives
        return client.deserialize(types.SimpleNamespace(data=json.dumps(p)), 'V1Pod')

    assert not counted.add(v1(pod('a', {}, 'Failed', exit_code=2, uid='1'))), 'bad input: final'
    assert not counted.add(v1(pod('a', {}, 'Running', uid='2')))
    assert counted.add(v1(pod('a', {}, 'Failed', exit_code=137, uid='3')))
    assert not counted.add(v1(pod('a', {}, 'Failed', exit_code=137, uid='3'))), 'counted once'
    evicted = pod('a', {}, 'Failed', uid='4')
    evicted['status'].update(reason='Evicted', containerStatuses=[])
    assert counted.add(v1(evicted)) and counted.last == 'a: no exit code (Evicted)'


def test_missing_pods_watch_verb_is_one_line_and_the_job_is_deleted(cluster):
    """Without the pods' watch the step cannot keep the backoff limit: it says so."""
    spec = make_spec(env={})
    cluster.forbidden.add(('watch', 'pods'))
    cluster.scripts[spec.name] = [[CREATED, RUNNING], HOLD]
    with pytest.raises(kube.ClusterError) as info:
        run(cluster, spec)
    assert str(info.value) == (
        'forbidden: this pod\'s ServiceAccount may not "watch" pods in namespace ml: grant it '
        "(the chart's Role does, rbac.create=true)"
    )
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_rerun_adopts_a_running_job_of_the_same_run(cluster):
    spec = make_spec(env={})
    manifest = pytorchjob.manifest(spec)
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = {
        **manifest,
        'status': {'conditions': [CREATED, RUNNING]},
    }
    cluster.scripts[spec.name] = [[CREATED, NOT_RUNNING, SUCCEEDED]]
    run(cluster, spec)
    assert cluster.verbs('pytorchjobs').count('POST') == 1, 'no second job'
    assert cluster.verbs('pytorchjobs').count('DELETE') == 1, 'deleted once finished'


@pytest.mark.parametrize(
    'conditions', [[CREATED, NOT_RUNNING, FAILED], [CREATED, NOT_RUNNING, SUCCEEDED]]
)
def test_rerun_replaces_a_finished_job(cluster, conditions):
    spec = make_spec(env={})
    old = {**pytorchjob.manifest(spec), 'status': {'conditions': conditions}}
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = old
    cluster.scripts[spec.name] = [[CREATED, NOT_RUNNING, SUCCEEDED]]
    run(cluster, spec)
    verbs = [v for v in cluster.verbs('pytorchjobs') if v != 'WATCH']
    assert verbs[:4] == ['POST', 'GET', 'DELETE', 'GET'] and verbs[4] == 'POST'


def test_rerun_replaces_a_running_job_built_from_other_settings(cluster):
    spec = make_spec(env={})
    other = pytorchjob.manifest(make_spec(env={}, image='other:2'))
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = {
        **other,
        'status': {'conditions': [RUNNING]},
    }
    cluster.scripts[spec.name] = [[SUCCEEDED]]
    run(cluster, spec)
    assert cluster.verbs('pytorchjobs').count('POST') == 2


def test_a_run_id_taken_by_another_release_is_refused_and_its_job_left_alone(cluster, capsys):
    """Two releases in one namespace, one explicit run id: release B's step meets release A's
    running job (another bucket: another spec hash) and neither adopts nor deletes it."""
    theirs = pytorchjob.manifest(make_spec(env={'VIDEO_KD_RELEASE': 'kd-a', 'S3_BUCKET': 'a'}))
    cluster.objects[('pytorchjobs', 'ml', theirs['metadata']['name'])] = {
        **theirs,
        'status': {'conditions': [CREATED, RUNNING]},
    }
    ours = make_spec(env={'VIDEO_KD_RELEASE': 'kd-b', 'S3_BUCKET': 'b'})
    assert pytorchjob.manifest(ours)['metadata']['labels']['app.kubernetes.io/instance'] == 'kd-b'
    assert run_cli(lambda: run(cluster, ours)) == BAD_INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: PyTorchJob ml/{ours.name} (run id '{RUN_ID}') belongs to release 'kd-a', not "
        "to this one ('kd-b'): the run id is taken in this namespace; start this run with "
        'another run_id (nothing was deleted)'
    )
    assert 'DELETE' not in cluster.verbs('pytorchjobs')
    assert cluster.objects[('pytorchjobs', 'ml', ours.name)]['metadata'] == theirs['metadata']
    # the same release's re-run with other settings still replaces its own job
    mine = make_spec(env={'VIDEO_KD_RELEASE': 'kd-a', 'S3_BUCKET': 'c'})
    cluster.scripts[mine.name] = [[SUCCEEDED]]
    run(cluster, mine)
    assert cluster.verbs('pytorchjobs').count('DELETE') == 2, 'replaced, then deleted when done'


def test_sigterm_deletes_the_job(cluster):
    """KFP cancels a run by deleting the step pod: SIGTERM, then the grace period."""
    spec = make_spec(env={})
    before = signal.getsignal(signal.SIGTERM)
    cluster.scripts[spec.name] = [[CREATED, RUNNING], HOLD]
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(kube.StepTerminated) as info:
            run(cluster, spec)
    finally:
        timer.cancel()
    assert info.value.code == 128 + signal.SIGTERM
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects
    assert 'DELETE' in cluster.verbs('pytorchjobs')
    assert signal.getsignal(signal.SIGTERM) == before, 'the previous handler is back'


def test_runtime_works_without_the_test_only_validators():
    """The image installs only [project].dependencies: the backends build and read jobs with
    kubernetes_validate and jsonschema unimportable (the kubernetes client imports the
    former only if it happens to be installed)."""
    code = (
        "import sys; sys.modules['kubernetes_validate'] = None; sys.modules['jsonschema'] = None\n"
        'from video_kd import backends\n'
        "spec = backends.TrainingJobSpec('r-1', 'ml', 'img', ('-m', 'x'), num_nodes=2)\n"
        "for name in ('pytorchjob', 'trainjob'):\n"
        '    print(backends.manifest(name, spec)["metadata"]["name"])\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [job_name('r-1')] * 2


def test_operator_not_installed_is_one_clear_line(cluster):
    cluster.crds.discard('kubeflow.org/v1/pytorchjobs')
    with pytest.raises(kube.ClusterError) as info:
        run(cluster, make_spec(env={}))
    assert str(info.value) == (
        'the cluster has no pytorchjobs.kubeflow.org API: install the Kubeflow Training Operator '
        'v1 (PyTorchJob), or choose another training_backend'
    )


def test_missing_rbac_names_the_verb_and_resource(cluster):
    cluster.forbidden.add(('create', 'pytorchjobs'))
    with pytest.raises(
        kube.ClusterError,
        match=re.escape('may not "create" pytorchjobs.kubeflow.org in namespace ml'),
    ):
        run(cluster, make_spec(env={}))


def test_missing_watch_verb_is_one_line_and_the_job_is_deleted(cluster):
    cluster.forbidden.add(('watch', 'pytorchjobs'))
    with pytest.raises(kube.ClusterError) as info:
        run(cluster, make_spec(env={}))
    assert str(info.value) == (
        'forbidden: this pod\'s ServiceAccount may not "watch" pytorchjobs.kubeflow.org in '
        "namespace ml: grant it (the chart's Role does, rbac.create=true)"
    )
    assert cluster.verbs('pytorchjobs') == ['POST', 'WATCH', 'DELETE']


def test_a_webhook_denial_is_one_line_with_the_webhooks_reason(cluster):
    """A 403 from the operator's validating webhook is not an RBAC problem: pass its reason on."""
    spec = make_spec(env={})
    bad = copy.deepcopy(pytorchjob.manifest(spec))
    bad['spec']['pytorchReplicaSpecs']['Master']['replicas'] = 2
    job = kube.ClusterJob(pytorchjob.KIND, bad, pytorchjob.state, '', '', api=cluster.api())
    with pytest.raises(kube.ClusterError) as info:
        job.submit()
    assert str(info.value) == (
        'the cluster refused to create pytorchjobs.kubeflow.org in namespace ml: admission '
        'webhook "validator.pytorchjob.training-operator.kubeflow.org" denied the request: '
        'Master.replicas must be 1'
    )
    assert 'forbidden' not in str(info.value) and not cluster.objects


def test_a_replace_whose_old_job_does_not_go_is_one_line(cluster, monkeypatch):
    spec = make_spec(env={})
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = {
        **pytorchjob.manifest(spec),
        'status': {'conditions': [CREATED, NOT_RUNNING, FAILED]},
    }
    cluster.lingering.add(spec.name)  # its pods never finish terminating
    monkeypatch.setattr(kube, 'REPLACE_WAIT_S', 1)
    with pytest.raises(kube.ClusterError) as info:
        run(cluster, spec)
    assert str(info.value) == (
        f'PyTorchJob ml/{spec.name} of an earlier attempt was deleted but is still there after '
        f'1s (its pods still terminating, or a finalizer): re-run the step once `kubectl -n ml '
        f'get pytorchjobs.kubeflow.org {spec.name}` finds nothing'
    )
    assert cluster.verbs('pytorchjobs').count('POST') == 1, 'no second create into a 409'


def test_missing_kueue_queue_is_refused_before_the_job_is_created(cluster):
    with pytest.raises(
        kube.ClusterError, match="Kueue queue 'team-a-gpus' does not exist in namespace ml"
    ):
        run(cluster)
    assert 'POST' not in cluster.verbs('pytorchjobs')
    cluster.crds.discard('kueue.x-k8s.io/v1beta1/localqueues')
    with pytest.raises(
        kube.ClusterError, match=re.escape('no localqueues.kueue.x-k8s.io API: install Kueue')
    ):
        run(cluster)


def test_a_job_deleted_by_someone_else_fails_the_step(cluster):
    spec = make_spec(env={})
    cluster.scripts[spec.name] = [[CREATED, RUNNING], HOLD]
    timer = threading.Timer(0.5, cluster.objects.pop, (('pytorchjobs', 'ml', spec.name),))
    timer.start()
    with pytest.raises(backends.TrainingJobFailed, match='Deleted: the job was deleted before'):
        run(cluster, spec)


def test_missing_namespace_is_named(cluster):
    with pytest.raises(kube.ClusterError, match='namespace team-b does not exist'):
        run(cluster, make_spec(env={}, namespace='team-b'))


# --- supervision that survives the control plane -----------------------------------------


@pytest.fixture
def short_retries(monkeypatch):
    """A retry budget of 1.5 s of continuous failure, first pause 50 ms (days and 1 s live)."""
    monkeypatch.setenv('VIDEO_KD_WATCH_RETRY_S', '1.5')
    monkeypatch.setenv('VIDEO_KD_WATCH_BACKOFF_S', '0.05')


def job_watches(cluster) -> list[dict]:
    return [w for w in cluster.watches if '/pytorchjobs' in w['path']]


def step_status(cluster, spec) -> int:
    """The train step's exit status for this run of the job (``run_cli``, as its entry point)."""
    return run_cli(run, cluster, spec)


def test_a_cut_watch_resumes_from_its_version_and_the_job_runs_to_its_end(
    cluster, short_retries, caplog
):
    """An API server restart or a balancer's idle timeout ends the watch mid-stream: the step
    watches again from the last resourceVersion it saw (nothing replayed, nothing missed)."""
    caplog.set_level(logging.WARNING, logger='video_kd.backends.kube')
    spec = make_spec(env={})
    cluster.scripts[spec.name] = [[CREATED, RUNNING], CUT, [CREATED, NOT_RUNNING, SUCCEEDED]]
    assert step_status(cluster, spec) == 0
    first, second = job_watches(cluster)[:2]
    assert 'resourceVersion' not in first and int(second['resourceVersion']) >= 2
    assert 'ProtocolError' in caplog.text and 'retrying in' in caplog.text
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects, 'deleted once it succeeded'


def test_a_watch_from_a_compacted_version_starts_over(cluster, short_retries):
    """410 Gone (the version is compacted away): the step checks the job is there and watches
    from its current state."""
    spec = make_spec(env={})
    cluster.scripts[spec.name] = [[CREATED, RUNNING], GONE, [CREATED, NOT_RUNNING, SUCCEEDED]]
    assert step_status(cluster, spec) == 0
    versions = [w.get('resourceVersion') for w in job_watches(cluster)]
    assert versions[0] is None and versions[1] and versions[2] is None, versions
    job_path = f'/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/{spec.name}'
    assert ('GET', job_path) in cluster.calls, 'is it still there?'
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_throttling_and_server_errors_are_retried(cluster, short_retries, caplog):
    """429 with a Retry-After (urllib3 waits and tries 3 times more, then gives up), 500 and
    503 on the job's watch: retried, a line each."""
    caplog.set_level(logging.WARNING, logger='video_kd.backends.kube')
    spec = make_spec(env={})
    cluster.retry_after = '0'
    cluster.watch_faults['pytorchjobs'] = [429] * 4 + [500, 503]
    cluster.scripts[spec.name] = [[CREATED, RUNNING], [CREATED, NOT_RUNNING, SUCCEEDED]]
    assert step_status(cluster, spec) == 0
    assert len(job_watches(cluster)) == 7
    retries = [r.getMessage() for r in caplog.records if 'retrying in' in r.getMessage()]
    assert len(retries) == 3, retries
    assert '(429)' in retries[0] and 'retrying in 0.0s' in retries[0], "the server's Retry-After"
    assert '(500)' in retries[1] and 'retrying in 0.1s' in retries[1], 'our pause, doubled'
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_an_api_down_past_the_budget_leaves_the_job_running(cluster, short_retries):
    """Past the retry budget the step exits (75: a KFP retry adopts the job) and never
    deletes the job its watch lost."""
    spec = make_spec(env={})
    cluster.watch_faults['pytorchjobs'] = [503] * 1000
    cluster.scripts[spec.name] = [[CREATED, RUNNING]]
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = {
        **pytorchjob.manifest(spec),
        'status': {'conditions': [CREATED, RUNNING]},
    }
    with pytest.raises(kube.SupervisionLost) as info:
        run(cluster, spec)
    assert info.value.exit_status == TEMPORARY_FAILURE
    assert str(info.value).startswith(f'following PyTorchJob ml/{spec.name}: the Kubernetes API')
    assert str(info.value).endswith('the job is left running, and a retry of the step adopts it')
    assert ('pytorchjobs', 'ml', spec.name) in cluster.objects, 'the job runs on'
    assert 'DELETE' not in cluster.verbs('pytorchjobs')
    # the retry of the step: the API is back, the job is adopted and followed to its end
    cluster.watch_faults.clear()
    cluster.scripts[spec.name] = [[CREATED, NOT_RUNNING, SUCCEEDED]]
    cluster.cursor[spec.name] = 0
    assert step_status(cluster, spec) == 0
    kinds = [kind for _, kind, _ in cluster.history[('pytorchjobs', 'ml', spec.name)]]
    assert 'ADDED' not in kinds, 'adopted, never created again'
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_a_job_deleted_while_the_watch_was_away_fails_the_step(cluster, short_retries):
    """Deleted between a cut and the resumed watch: the DELETED event is replayed."""
    spec = make_spec(env={})
    cluster.scripts[spec.name] = [[CREATED, RUNNING], VANISH]
    with pytest.raises(backends.TrainingJobFailed, match='Deleted: the job was deleted before'):
        run(cluster, spec)
    assert job_watches(cluster)[-1].get('resourceVersion'), 'learnt from the resumed watch'
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_a_deadline_ends_the_step_and_the_job(cluster):
    """activeDeadlineSeconds passed: the operator's Failed condition, reason DeadlineExceeded."""
    spec = make_spec(env={})
    deadline = {
        **FAILED,
        'reason': 'DeadlineExceeded',
        'message': 'PyTorchJob ml/x has failed because it was active longer than specified '
        'deadline',
    }
    cluster.scripts[spec.name] = [[CREATED, RUNNING], [CREATED, NOT_RUNNING, deadline]]
    with pytest.raises(backends.TrainingJobFailed, match='DeadlineExceeded: PyTorchJob ml/x'):
        run(cluster, spec)
    assert ('pytorchjobs', 'ml', spec.name) not in cluster.objects


def test_a_rerun_waits_out_a_job_being_deleted_then_creates_it_afresh(cluster):
    """A re-run soon after a cleanup finds the job with a deletionTimestamp: not adopted (it
    would vanish under the step), waited out, and created again."""
    spec = make_spec(env={})
    key = ('pytorchjobs', 'ml', spec.name)
    cluster.objects[key] = {**pytorchjob.manifest(spec), 'status': {'conditions': [RUNNING]}}
    cluster.mark_deleting(key)
    cluster.scripts[spec.name] = [[CREATED, RUNNING], [CREATED, NOT_RUNNING, SUCCEEDED]]
    timer = threading.Timer(0.5, cluster.remove, (key,))  # its pods are gone: so is the job
    timer.start()
    assert step_status(cluster, spec) == 0
    verbs = [v for v in cluster.verbs('pytorchjobs') if v != 'WATCH']
    assert verbs[:3] == ['POST', 'GET', 'GET'] and verbs[3] == 'POST', verbs
    assert verbs.count('DELETE') == 1, 'only the new job, once it ended'
    assert key not in cluster.objects


# --- every rank's log in S3 -----------------------------------------------------------------


def test_every_pods_log_is_saved_and_the_failure_line_names_them(cluster, bucket):
    """Worker 0 fails (137), is re-created by the operator under its name, and fails again
    (exit 2); the master runs.  Each pod's log (by UID) is in <run>/train/logs/ and in the
    run manifest before the job is deleted, and the failure's line names each failed pod,
    its exit and its log."""
    layout = RunLayout(bucket, 'kd', 'run-1')
    spec = make_spec(env={}, num_nodes=2)
    name = spec.name
    worker = f'{name}-worker-0'
    first = pod(worker, WORKER_LABELS, 'Failed', exit_code=137, reason='OOMKilled', uid='aaaa1111')
    cluster.pods = [
        pod(f'{name}-master-0', MASTER_LABELS, uid='mmmm0000'),
        pod(worker, WORKER_LABELS, 'Failed', exit_code=2, uid='bbbb2222'),
    ]
    cluster.pod_events = [('MODIFIED', first), ('DELETED', first)]
    cluster.logs[f'{name}-master-0'] = 'epoch 1 loss 0.5\n'
    cluster.logs[worker] = 'Traceback (most recent call last):\nValueError: bad clip\n'
    cluster.scripts[name] = [[CREATED, RUNNING], 0.5, [CREATED, NOT_RUNNING, FAILED]]
    with pytest.raises(backends.TrainingJobFailed) as info:
        backends.run_training('pytorchjob', spec, 30, api=cluster.api(), layout=layout)
    logs = layout.uri('train', 'logs')
    text = str(info.value)
    assert f'{worker}: exit 137 (OOMKilled), log {logs}/{worker}.aaaa1111.log' in text
    assert f'{worker}: exit 2 (Error), log {logs}/{worker}.bbbb2222.log' in text
    assert 'master-0' not in text, 'only the failed pods'
    assert '\n' not in text
    saved = {uri.rsplit('/', 1)[1]: uri for uri in s3.list_uris(logs + '/')}
    assert set(saved) == {
        f'{name}-master-0.mmmm0000.log',
        f'{worker}.aaaa1111.log',
        f'{worker}.bbbb2222.log',
    }
    assert s3.read_bytes(saved[f'{worker}.bbbb2222.log']).endswith(b'ValueError: bad clip\n')
    manifest = Manifest.load(layout)
    assert all(manifest.find(uri) for uri in saved.values()), 'recorded in the run manifest'
    assert ('pytorchjobs', 'ml', name) not in cluster.objects, 'deleted after the logs are saved'


# --- local torchrun ---------------------------------------------------------------------


def test_local_pod_env_matches_the_operator():
    env = local.local_pod_env(2, 3, 4, 'kd-master-0', 23456)
    assert env['WORLD_SIZE'] == '12' and env['RANK'] == '2' and env['PET_NNODES'] == '3'
    assert set(env) == set(backends.spec.OPERATOR_ENV)


ENTRY = textwrap.dedent("""
    import os, signal, sys
    rank = os.environ["RANK"]
    with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as out:
        out.write(f"{rank} {os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']} "
                  f"{os.environ['GREETING']}")
    print(f"hello from rank {rank}", flush=True)
    failure = os.environ.get("FAIL_WITH", "exit-3") if rank == os.environ.get("FAIL_RANK") else ""

    def fail():
        from video_kd.core import errors
        from video_kd.storage import s3
        if failure == "bad-input":
            raise errors.UserError("no such config")
        if failure == "s3-down":  # a real request to a port nobody listens on
            s3.read_bytes("s3://bucket/key")
        raise RuntimeError("NCCL error: remote process exited")  # a crash: traceback, exit 1

    if failure == "exit-3":
        sys.exit(3)
    if failure == "killed":
        os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, say
    if failure:
        from video_kd.core.errors import run_cli
        sys.exit(run_cli(fail))
""")


@pytest.fixture
def entry_dir(tmp_path):
    (tmp_path / 'tiny_entry.py').write_text(ENTRY)
    (tmp_path / 'out').mkdir()
    return tmp_path


def test_run_local_runs_two_processes(entry_dir, caplog):
    caplog.set_level('INFO', logger='video_kd.backends.local')
    log_path = entry_dir / 'torchrun.log'
    code = local.run_local(
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


def test_local_backend_runs_the_spec_and_reports_a_failing_rank(entry_dir):
    spec = TrainingJobSpec(
        RUN_ID,
        'ml',
        'img',
        ('-m', 'tiny_entry', str(entry_dir / 'out')),
        num_nodes=2,
        env={'GREETING': 'hi', 'FAIL_RANK': '1'},
    )
    with pytest.raises(
        backends.TrainingJobFailed,
        match=r'local torchrun \(2 processes\) failed: ExitCode: exit code 128 ',
    ):
        backends.run_training('local', spec, 60, cwd=entry_dir)
    assert (entry_dir / 'out' / 'rank0.txt').read_text() == '0 2 0 hi'


# --- exit statuses through torchrun: bad input is final, anything else is retried ---------

# What makes a failure retried: exit status >= 128 (the Training Operator's ExitCode policy).
RETRIED = range(128, 256)


def torchrun_alone(entry_dir, env) -> int:
    """`torchrun` itself (torch.distributed.run), one node, two processes."""
    argv = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2']
    argv += ['--master_addr', '127.0.0.1', '--master_port', str(local.free_port())]
    argv += ['-m', 'tiny_entry', str(entry_dir / 'out')]
    done = subprocess.run(argv, cwd=entry_dir, env={**os.environ, **env}, capture_output=True)
    return done.returncode


def test_torchrun_alone_reports_bad_input_as_1(entry_dir):
    """Why the launcher exists: torchrun exits 1 when a worker exits 2, and ExitCode treats
    1 as final, like 2; no exit status of torchrun's is ever retried."""
    env = {'GREETING': 'hi', 'FAIL_RANK': '1', 'FAIL_WITH': 'bad-input'}
    assert torchrun_alone(entry_dir, env) == 1


@pytest.mark.parametrize(
    'failure, status',
    [
        ('bad-input', 2),  # a UserError in a worker: permanent, the job fails at once
        ('crash', 128),  # an exception (NCCL error, lost peer): retried
        ('s3-down', 128),  # S3UnavailableError, the worker's exit 75: retried
        ('killed', 128),  # SIGKILL (OOM): retried
    ],
)
def test_the_launcher_keeps_bad_input_final_and_makes_the_rest_retryable(
    entry_dir, failure, status
):
    env = {
        'GREETING': 'hi',
        'FAIL_RANK': '1',
        'FAIL_WITH': failure,
        'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
        # S3 that refuses the connection, tried once
        'S3_ENDPOINT_URL': f'http://127.0.0.1:{local.free_port()}',
        'AWS_ACCESS_KEY_ID': 'test',
        'AWS_SECRET_ACCESS_KEY': 'test',
        'VIDEO_KD_S3_MAX_ATTEMPTS': '1',
        'VIDEO_KD_S3_RETRY_WINDOW': '0',
    }
    log_path = entry_dir / 'torchrun.log'
    code = local.run_local(
        ['-m', 'tiny_entry', str(entry_dir / 'out')], 2, env, cwd=entry_dir, log_path=log_path
    )
    text = log_path.read_text()
    assert code == status, text[-3000:]
    assert (code in RETRIED) == (failure != 'bad-input')
    assert pytorchjob.RESTART_POLICY == 'ExitCode' and torchrun.RETRYABLE in RETRIED
    expected_line = {
        'bad-input': 'error: no such config',
        's3-down': 'error: cannot read s3://bucket/key: cannot connect to the S3 server at ',
    }.get(failure)
    if expected_line:
        assert expected_line in text
    assert f': exit {status} (' in text, 'the launcher says what it made of the failure'


def test_user_errors_carry_their_exit_status(capsys):
    assert run_cli(lambda: (_ for _ in ()).throw(UserError('bad'))) == BAD_INPUT == 2
    unavailable = s3.S3UnavailableError('cannot connect to the S3 server at http://x')
    assert run_cli(lambda: (_ for _ in ()).throw(unavailable)) == TEMPORARY_FAILURE == 75
    assert isinstance(unavailable, UserError)
    assert capsys.readouterr().err.splitlines() == [
        'error: bad',
        'error: cannot connect to the S3 server at http://x',
    ]
    assert torchrun.exit_status([2, -9]) == 2 and torchrun.exit_status([75, 1]) == 128


def test_the_real_training_entry_point_with_bad_input_exits_2(entry_dir):
    """video_kd.distill.train_pod under the launcher, as a pod runs it, without S3 credentials."""
    log_path = entry_dir / 'train_pod.log'
    command = ['-m', 'video_kd.distill.train_pod', 's3://b/kd/run/train/config.py']
    command += ['--run-root', 's3://b/kd/run', '--data-meta', 's3://b/kd/run/data/dataset.json']
    command += ['--teacher', 's3://b/kd/run/teacher/t.pth', '--work-dir', str(entry_dir / 'w')]
    env = {'AWS_ACCESS_KEY_ID': '', 'AWS_SECRET_ACCESS_KEY': ''}
    code = local.run_local(command, 1, env, cwd=ROOT, log_path=log_path)
    text = log_path.read_text()
    assert code == 2, text[-3000:]
    assert 'error: S3 credentials are missing' in text


def test_the_failure_line_is_the_step_pods_termination_message(tmp_path, monkeypatch, capsys):
    """In a pod the error line also goes to the termination message (Kubernetes' status
    message, which Argo shows as the failed step's message in the KFP UI)."""
    from video_kd.core.errors import UserError, run_cli

    line = 'PyTorchJob ml/vkd-x failed: BackoffLimitExceeded: ... (failed pods: w-0: exit 2)'
    message = tmp_path / 'termination-log'
    monkeypatch.setenv('VIDEO_KD_TERMINATION_LOG', str(message))

    def failing() -> int:
        raise UserError(line + ' ' + 'x' * 5000)

    assert run_cli(failing) == 2
    printed = capsys.readouterr().err.strip()
    assert printed.startswith(f'error: {line}')
    assert message.read_text() == printed[:4096]  # the kubelet keeps at most 4096 bytes
    monkeypatch.delenv('VIDEO_KD_TERMINATION_LOG')
    monkeypatch.delenv('KUBERNETES_SERVICE_HOST', raising=False)
    message.unlink()
    assert run_cli(failing) == 2 and not message.exists(), 'outside a pod: nothing written'
