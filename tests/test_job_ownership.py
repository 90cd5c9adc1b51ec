"""A training job never outlives its run nor runs unsupervised forever: the run's Argo
Workflow owns it (read from the step pod over the API stand-in), it has a deadline and a
TTL on both backends (checked against the operators' CRD schemas, strictly), a retried step
adopts it only when it is its own run's, and GPUs are what gpus_per_worker says."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from crd_schema import PYTORCHJOB_CRD, TRAINJOB_CRD, problems
from kube_server import FakeKube, pod
from test_pytorchjob import RUN_ID, STEP_ENV, make_spec

from video_kd import backends
from video_kd.backends import kube, owner, pytorchjob, trainjob
from video_kd.backends.spec import JobSpecError, deadline_seconds
from video_kd.core.errors import BAD_INPUT, UserError
from video_kd.steps import train

WORKFLOW_UID = '6b0f3c1e-2d4a-4e5f-8a9b-0c1d2e3f4a5b'
WORKFLOW = 'video-kd-distillation-x7k2p'
STEP_POD = f'{WORKFLOW}-system-container-impl-1234567890'
ARGO_OWNER = {
    'apiVersion': 'argoproj.io/v1alpha1',
    'kind': 'Workflow',
    'name': WORKFLOW,
    'uid': WORKFLOW_UID,
    'controller': True,
    'blockOwnerDeletion': True,
}
OWNER = {k: ARGO_OWNER[k] for k in ('apiVersion', 'kind', 'name', 'uid')}
IN_KFP = {'KFP_POD_NAME': STEP_POD, 'VIDEO_KD_NAMESPACE': 'ml'}
BUILDERS = {'pytorchjob': pytorchjob.manifest, 'trainjob': trainjob.manifest}


def step_pod(owner_references=(ARGO_OWNER,), labels=None):
    """The train step's pod as Argo makes it: owned by the Workflow, labelled with its name."""
    found = pod(STEP_POD, labels or {'workflows.argoproj.io/workflow': WORKFLOW}, container='main')
    found['metadata']['ownerReferences'] = list(owner_references)
    return found


@pytest.fixture
def cluster(monkeypatch):
    # the step pod's namespace (its ServiceAccount mount in a cluster)
    monkeypatch.setattr(owner, 'current_namespace', lambda: 'ml')
    with FakeKube() as fake:
        yield fake


# --- the manifests: owner, deadline, TTL, GPUs ---------------------------------------------


@pytest.mark.parametrize('backend', sorted(BUILDERS))
def test_owner_deadline_and_ttl_pass_the_crd_schema(backend):
    spec = make_spec(max_training_hours=1.5, owner=OWNER)
    manifest = BUILDERS[backend](spec)
    crd, version = (PYTORCHJOB_CRD, 'v1') if backend == 'pytorchjob' else (TRAINJOB_CRD, 'v1alpha1')
    assert problems(manifest, crd, version) == []
    assert manifest['metadata']['ownerReferences'] == [OWNER], 'no controller, no blocking'
    if backend == 'pytorchjob':
        policy = manifest['spec']['runPolicy']
        assert policy['activeDeadlineSeconds'] == 5400
        assert policy['ttlSecondsAfterFinished'] == 86400
    else:  # Trainer v2.3: a deadline, no TTL field (the owner and the runtime's JobSet TTL)
        assert manifest['spec']['activeDeadlineSeconds'] == 5400
        assert 'ttlSecondsAfterFinished' not in json.dumps(manifest)
    # strict: the schema refuses the field where the other operator has it
    broken = json.loads(json.dumps(manifest))
    if backend == 'pytorchjob':
        broken['spec']['activeDeadlineSeconds'] = 5400  # a TrainJob's place
    else:
        broken['spec']['runPolicy'] = {'ttlSecondsAfterFinished': 86400}  # a PyTorchJob's
        assert problems({**manifest, 'spec': {**manifest['spec'], 'activeDeadlineSeconds': 0}},
                        crd, version)  # fmt: skip
    assert problems(broken, crd, version)


@pytest.mark.parametrize('hours', [0, -1, math.nan, math.inf, 721])
def test_a_deadline_that_is_not_above_0_is_refused(hours):
    with pytest.raises(
        UserError, match='max_training_hours must be above 0 and at most 720'
    ) as info:
        train.check_launch(max_training_hours=hours)
    assert '\n' not in str(info.value) and info.value.exit_status == BAD_INPUT
    if hours != 721:
        with pytest.raises(JobSpecError, match='max_training_hours must be > 0'):
            deadline_seconds(hours)
    with pytest.raises(JobSpecError, match='the active deadline must be >= 1 s'):
        dataclasses.replace(make_spec(env={}), active_deadline_seconds=0)
    assert deadline_seconds(None) is None and deadline_seconds(1e-6) == 1


@pytest.mark.parametrize('backend', sorted(BUILDERS))
def test_no_gpus_asked_for_means_none_requested_whatever_the_chart_says(backend):
    """The chart puts its GPU count into the worker overrides (training.gpu.perWorker); a run
    with gpus_per_worker=0 must request none, one with 2 must request 2 (request = limit)."""
    chart = {'resources': {'limits': {'nvidia.com/gpu': '8', 'memory': '48Gi'},
                           'requests': {'nvidia.com/gpu': '8', 'cpu': '8'}}}  # fmt: skip
    env = {**STEP_ENV, 'VIDEO_KD_GPU_RESOURCE': 'nvidia.com/gpu',
           'VIDEO_KD_WORKER_POD_OVERRIDES': json.dumps(chart)}  # fmt: skip

    def resources(gpus):
        manifest = BUILDERS[backend](make_spec(env=env, gpus_per_worker=gpus))
        if backend == 'trainjob':
            return manifest['spec']['trainer']['resourcesPerNode']
        (container,) = manifest['spec']['pytorchReplicaSpecs']['Master']['template']['spec'][
            'containers'
        ]
        return container['resources']

    none = resources(0)
    assert 'nvidia.com/gpu' not in json.dumps(none)
    assert none == {'limits': {'memory': '48Gi'}, 'requests': {'cpu': '8', 'memory': '8Gi'}}
    two = resources(2)
    assert two['limits']['nvidia.com/gpu'] == two['requests']['nvidia.com/gpu'] == '2'


# --- the owner: the run's Workflow, read from the step pod ----------------------------------


def test_the_owner_is_the_workflow_of_the_step_pod(cluster):
    cluster.pods.append(step_pod())
    assert backends.step_owner(IN_KFP, cluster.api()) == OWNER
    assert cluster.calls == [('GET', f'/api/v1/namespaces/ml/pods/{STEP_POD}')]


def test_without_argos_owner_reference_the_label_names_the_workflow(cluster):
    cluster.pods.append(step_pod(owner_references=()))
    cluster.crds.add('argoproj.io/v1alpha1/workflows')
    cluster.objects[('workflows', 'ml', WORKFLOW)] = {
        'metadata': {'name': WORKFLOW, 'uid': WORKFLOW_UID}
    }
    assert backends.step_owner(IN_KFP, cluster.api()) == OWNER
    # RBAC without `get workflows`: one line, naming the verb and why it is needed
    cluster.forbidden.add(('get', 'workflows'))
    with pytest.raises(kube.ClusterError) as info:
        backends.step_owner(IN_KFP, cluster.api())
    assert str(info.value) == (
        'forbidden: this pod\'s ServiceAccount may not "get" workflows.argoproj.io in namespace '
        "ml: the train step reads it to make the run's Argo Workflow own the training job, "
        'which must not run without an owner'
    )


def test_outside_kfp_there_is_no_owner(cluster):
    """run-local, or the step run by hand: no KFP_POD_NAME, so no API call and no owner
    (the deadline and the TTL still bound the job)."""
    assert backends.step_owner({'VIDEO_KD_NAMESPACE': 'ml'}, cluster.api()) is None
    assert cluster.calls == []


@pytest.mark.parametrize('case', ['forbidden', 'no pod', 'no workflow', 'other namespace'])
def test_an_owner_that_cannot_be_set_is_one_line_before_anything_is_created(
    cluster, monkeypatch, case
):
    """The train step asks for the owner before it writes the run's config or creates a job:
    a ClusterError (exit status 2), nothing created, nothing written."""
    env = dict(IN_KFP)
    if case == 'forbidden':
        cluster.pods.append(step_pod())
        cluster.forbidden.add(('get', 'pods'))
    elif case == 'no workflow':
        cluster.pods.append(step_pod(owner_references=(), labels={'app': 'x'}))
    elif case == 'other namespace':
        env['VIDEO_KD_NAMESPACE'] = 'training'
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv('KUBERNETES_SERVICE_HOST', '10.96.0.1')
    monkeypatch.setattr(owner, 'api_client', cluster.api)
    # a run root nothing may touch: the owner fails first
    data_meta = {'run_root': 's3://no-such-bucket/kd/run'}
    with pytest.raises(kube.ClusterError) as info:
        train.run(data_meta, {}, 'kd_no_such_config', training_backend='pytorchjob')
    line = str(info.value)
    assert '\n' not in line and info.value.exit_status == BAD_INPUT
    expected = {
        'forbidden': 'forbidden: this pod\'s ServiceAccount may not "get" pods in namespace ml',
        'no pod': 'no such pods in namespace ml',
        'no workflow': f'step pod ml/{STEP_POD} belongs to no Argo Workflow',
        'other namespace': 'the training job would run in namespace training but the run in ml',
    }[case]
    assert line.startswith(expected), line
    assert not [verb for verb, _ in cluster.calls if verb in ('POST', 'DELETE')]


# --- a retried step adopts its own run's job, not another Workflow's ------------------------

CREATED = {'type': 'Created', 'status': 'True', 'reason': 'PyTorchJobCreated'}
RUNNING = {'type': 'Running', 'status': 'True', 'reason': 'PyTorchJobRunning'}
SUCCEEDED = {'type': 'Succeeded', 'status': 'True', 'reason': 'PyTorchJobSucceeded'}


@pytest.mark.parametrize('owned_by', ['this run', 'another run'])
def test_a_retried_step_adopts_only_its_own_runs_job(cluster, owned_by):
    """A KFP retry is a new pod of the same Workflow: same job, same owner, adopted.  A job
    of the same run id that another Workflow owns would go with that Workflow: replaced."""
    spec = make_spec(env={}, owner=OWNER)
    other = {**OWNER, 'name': 'video-kd-distillation-old', 'uid': 'old-uid'}
    existing = pytorchjob.manifest(
        spec if owned_by == 'this run' else make_spec(env={}, owner=other)
    )
    cluster.objects[('pytorchjobs', 'ml', spec.name)] = {
        **existing,
        'status': {'conditions': [CREATED, RUNNING]},
    }
    cluster.scripts[spec.name] = [[CREATED, RUNNING, SUCCEEDED]]
    backends.run_training('pytorchjob', spec, 30, api=cluster.api())
    posts = cluster.verbs('pytorchjobs').count('POST')
    assert posts == (1 if owned_by == 'this run' else 2), 'adopted, or replaced'
    assert spec.name == backends.job_name(RUN_ID)


# --- a KFP retry after a definitive failure does not train again ----------------------------


def test_a_retry_after_the_jobs_definitive_failure_does_not_train_again(bucket):
    """KFP retries the train task on any failure; a job that Failed for good (backoff limit,
    deadline) is recorded with the run's Workflow, so the retry stops in one line instead of
    starting days of GPU work for the same verdict.  A new KFP run (another Workflow) of the
    run id trains again; outside KFP nothing is recorded."""
    from video_kd.runs import RunLayout

    layout = RunLayout(bucket, 'kd', RUN_ID)
    train.refuse_a_failed_attempt(layout, OWNER)  # nothing recorded yet
    failure = f'PyTorchJob ml/{backends.job_name(RUN_ID)} failed: BackoffLimitExceeded: ...'
    train.record_failure(layout, OWNER, failure)
    with pytest.raises(UserError) as info:
        train.refuse_a_failed_attempt(layout, OWNER)
    assert str(info.value).startswith(failure + ' (in an earlier attempt of this KFP run')
    train.refuse_a_failed_attempt(layout, {**OWNER, 'uid': 'a-new-workflow'})
    train.refuse_a_failed_attempt(layout, None)
    train.record_failure(RunLayout(bucket, 'kd', 'local-run'), None, failure)
    train.refuse_a_failed_attempt(RunLayout(bucket, 'kd', 'local-run'), OWNER)
