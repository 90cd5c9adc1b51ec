"""video_kd.backends.trainjob: TrainJobs (Kubeflow Trainer v2) checked against the real
v2.3.0 CRD schema and its CEL name rules, settings carried by runtimePatches, status read
from conditions as Trainer writes them, and the job's life against an API server."""

from __future__ import annotations

import copy
import logging
import re
import uuid

import pytest
from crd_schema import TRAINJOB_CRD, problems
from kube_server import FakeKube, pod
from kubeflow_trainer_api import models as tm
from test_pytorchjob import COMMAND, OVERRIDES, RUN_ID, make_spec

from video_kd import backends
from video_kd.backends import kube, trainjob
from video_kd.backends.spec import job_name


def node_patch(manifest):
    (patch,) = manifest['spec']['runtimePatches']
    (rjob,) = patch['trainingRuntimeSpec']['template']['spec']['replicatedJobs']
    assert rjob['name'] == 'node'
    return patch, rjob['template']['spec']['template']


def cel_name_rules(manifest) -> list[str]:
    """The CRD's x-kubernetes-validations on metadata.name (CEL; jsonschema cannot run them)."""
    name = manifest['metadata']['name']
    found = []
    if not re.match(r'^[a-z]([-a-z0-9]*[a-z0-9])?$', name):
        found.append('metadata.name must match RFC 1035 DNS label format')
    if len(name) > 63:
        found.append('metadata.name must be no more than 63 characters')
    return found


def test_the_crd_carries_the_cel_rules_checked_here():
    text = TRAINJOB_CRD.read_text()
    assert "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')" in text
    assert 'size(self.metadata.name) <= 63' in text
    assert '              runtimePatches:' in text, 'Trainer >= 2.2 field name'


@pytest.mark.parametrize('nodes', [1, 4])
def test_manifest_passes_the_crd_schema(nodes):
    for run_id in (RUN_ID, str(uuid.uuid4())):
        manifest = trainjob.manifest(make_spec(run_id=run_id, num_nodes=nodes))
        assert problems(manifest, TRAINJOB_CRD, 'v1alpha1') == []
        assert cel_name_rules(manifest) == []
        # and the Trainer API's own models read it back
        job = tm.TrainerV1alpha1TrainJob.from_dict(manifest)
        assert job.spec.trainer.num_nodes == nodes


@pytest.mark.parametrize(
    'mutate, expected',
    [
        (lambda m: m['spec']['trainer'].update(numNode=2), "('numNode' was unexpected)"),
        (
            lambda m: m['spec'].update(podTemplateOverrides=[]),
            "('podTemplateOverrides' was unexpected)",
        ),
        (lambda m: m['spec']['trainer'].update(numNodes='2'), "'2' is not of type 'integer'"),
        (lambda m: m['spec'].pop('runtimeRef'), "'runtimeRef' is a required property"),
        (lambda m: node_patch(m)[0].pop('manager'), "'manager' is a required property"),
    ],
)
def test_the_crd_schema_catches_what_a_builder_bug_would_send(mutate, expected):
    manifest = copy.deepcopy(trainjob.manifest(make_spec()))
    mutate(manifest)
    assert any(expected in p for p in problems(manifest, TRAINJOB_CRD, 'v1alpha1')), problems(
        manifest, TRAINJOB_CRD, 'v1alpha1'
    )


def test_every_setting_reaches_the_trainjob():
    manifest = trainjob.manifest(make_spec())
    meta = manifest['metadata']
    assert meta['name'] == job_name(RUN_ID) and meta['namespace'] == 'ml'
    assert meta['annotations']['video-kd/run-id'] == RUN_ID
    assert meta['labels']['kueue.x-k8s.io/queue-name'] == 'team-a-gpus'
    assert meta['labels']['kueue.x-k8s.io/priority-class'] == 'kd-high'
    spec = manifest['spec']
    assert spec['runtimeRef'] == {'name': 'torch-distributed', 'kind': 'ClusterTrainingRuntime'}
    trainer = spec['trainer']
    assert trainer['numNodes'] == 3 and trainer['numProcPerNode'] == 2, 'one process per GPU'
    assert trainer['image'] == 'registry.local/video-kd:0.1-cuda'
    assert trainer['command'] == ['torchrun'] and trainer['args'] == list(COMMAND)
    assert trainer['resourcesPerNode'] == {
        'requests': {'cpu': '8', 'memory': '32Gi'},
        'limits': {'memory': '48Gi', 'amd.com/gpu': '2'},
    }
    env = {e['name']: e for e in trainer['env']}
    assert env['AWS_DEFAULT_REGION']['value'] == 'eu-west-1' and 'AWS_ACCESS_KEY_ID' not in env
    patch, template = node_patch(manifest)
    assert patch['manager'] == 'video-kd.kubeflow.org/train-step'
    assert template['metadata']['annotations'] == {'sidecar.istio.io/inject': 'false'}
    pod_spec = template['spec']
    assert pod_spec['serviceAccountName'] == 'kd-trainer'
    assert pod_spec['nodeSelector'] == OVERRIDES['nodeSelector']
    assert pod_spec['tolerations'] == OVERRIDES['tolerations']
    assert pod_spec['affinity'] == OVERRIDES['affinity']
    assert {'name': 'cache', 'persistentVolumeClaim': {'claimName': 'kd-cache'}} in pod_spec[
        'volumes'
    ]
    (container,) = pod_spec['containers']
    assert container['name'] == 'node'
    assert {'name': 'cache', 'mountPath': '/data/cache'} in container['volumeMounts']
    refs = {e['name']: e['valueFrom']['secretKeyRef'] for e in container['env']}
    assert refs['AWS_ACCESS_KEY_ID'] == {'name': 'team-s3', 'key': 'access-key', 'optional': False}
    assert refs['AWS_SECRET_ACCESS_KEY']['key'] == 'secret-key'


def test_runtime_name_and_nproc_come_from_the_configmap_and_arguments():
    env = {
        'VIDEO_KD_TRAINJOB_RUNTIME': 'kd-torch',
        'VIDEO_KD_TRAINJOB_RUNTIME_KIND': 'TrainingRuntime',
    }
    manifest = trainjob.manifest(make_spec(env=env, nproc_per_node=4))
    assert manifest['spec']['runtimeRef'] == {'name': 'kd-torch', 'kind': 'TrainingRuntime'}
    assert manifest['spec']['trainer']['numProcPerNode'] == 4
    assert 'kueue.x-k8s.io/queue-name' not in manifest['metadata']['labels']
    assert problems(manifest, TRAINJOB_CRD, 'v1alpha1') == []


# --- status conditions as Trainer writes them (copied from the JobSet) -------------------

COMPLETE = {
    'type': 'Complete',
    'status': 'True',
    'reason': 'AllJobsCompleted',
    'message': 'jobset completed successfully',
    'lastTransitionTime': '2026-01-01T00:00:00Z',
}
FAILED = {
    'type': 'Failed',
    'status': 'True',
    'reason': 'FailedJobs',
    'message': 'jobset failed due to one or more job failures',
    'lastTransitionTime': '2026-01-01T00:00:00Z',
}
SUSPENDED = {
    'type': 'Suspended',
    'status': 'True',
    'reason': 'Suspended',
    'message': 'TrainJob is suspended',
    'lastTransitionTime': '2026-01-01T00:00:00Z',
}
RESUMED = {**SUSPENDED, 'status': 'False', 'reason': 'Resumed', 'message': 'TrainJob is resumed'}


def test_state_from_conditions():
    def state(*conds):
        return trainjob.state({'status': {'conditions': list(conds)}})

    assert trainjob.state({}).type == 'Pending'
    assert state(SUSPENDED).type == 'Suspended' and not state(SUSPENDED).finished
    assert state(RESUMED).type == 'Pending'
    assert state(RESUMED, COMPLETE).succeeded
    failed = state(RESUMED, FAILED)
    assert failed.failed and failed.reason == 'FailedJobs'


NODE0 = {
    'jobset.sigs.k8s.io/jobset-name': job_name(RUN_ID),
    'jobset.sigs.k8s.io/replicatedjob-name': 'node',
    'batch.kubernetes.io/job-completion-index': '0',
}


@pytest.fixture
def cluster():
    with FakeKube() as fake:
        fake.objects[('localqueues', 'ml', 'team-a-gpus')] = {}
        yield fake


def run(cluster, spec=None):
    backends.run_training('trainjob', spec or make_spec(), 30, api=cluster.api())


def test_success_streams_node0_log_and_deletes_the_job(cluster, caplog):
    caplog.set_level(logging.INFO, logger='video_kd.backends.kube')
    name = job_name(RUN_ID)
    cluster.scripts[name] = [[], [COMPLETE]]
    cluster.pods.append(pod(f'{name}-node-0-0-abcde', NODE0, container='node'))
    cluster.logs[f'{name}-node-0-0-abcde'] = 'Epoch(train) [1][2/2] loss: 1.25\n'
    run(cluster)
    assert 'Epoch(train) [1][2/2] loss: 1.25' in caplog.text
    assert cluster.verbs('trainjobs')[0] == 'POST' and 'DELETE' in cluster.verbs('trainjobs')
    assert ('trainjobs', 'ml', name) not in cluster.objects


def test_failure_carries_the_reason_and_the_exit_codes(cluster):
    name = job_name(RUN_ID)
    cluster.scripts[name] = [[FAILED]]
    cluster.pods.append(
        pod(
            f'{name}-node-0-1-xyzab',
            {**NODE0, 'batch.kubernetes.io/job-completion-index': '1'},
            'Failed',
            container='node',
            exit_code=137,
            reason='OOMKilled',
        )
    )
    with pytest.raises(backends.TrainingJobFailed) as info:
        run(cluster)
    assert 'FailedJobs: jobset failed due to one or more job failures' in str(info.value)
    assert f'{name}-node-0-1-xyzab: exit 137 (OOMKilled)' in str(info.value)
    assert ('trainjobs', 'ml', name) not in cluster.objects


def test_rerun_adopts_or_replaces(cluster):
    spec = make_spec()
    manifest = trainjob.manifest(spec)
    cluster.objects[('trainjobs', 'ml', spec.name)] = {
        **manifest,
        'status': {'conditions': [RESUMED]},
    }
    cluster.scripts[spec.name] = [[COMPLETE]]
    run(cluster, spec)
    assert cluster.verbs('trainjobs').count('POST') == 1
    cluster.objects[('trainjobs', 'ml', spec.name)] = {
        **manifest,
        'status': {'conditions': [FAILED]},
    }
    cluster.calls.clear()
    run(cluster, spec)
    assert cluster.verbs('trainjobs').count('POST') == 2, 'the failed one is replaced'


def test_trainer_not_installed_and_rbac_missing_are_one_line(cluster):
    cluster.crds.discard('trainer.kubeflow.org/v1alpha1/trainjobs')
    with pytest.raises(
        kube.ClusterError,
        match=r'^the cluster has no trainjobs.trainer.kubeflow.org API: '
        r'install Kubeflow Trainer v2 \(>= 2.2, TrainJob\)',
    ):
        run(cluster)
    cluster.crds.add('trainer.kubeflow.org/v1alpha1/trainjobs')
    cluster.forbidden.add(('create', 'trainjobs'))
    with pytest.raises(
        kube.ClusterError, match=re.escape('may not "create" trainjobs.trainer.kubeflow.org')
    ):
        run(cluster)
