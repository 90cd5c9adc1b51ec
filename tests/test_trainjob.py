"""video_kd.backends.trainjob: TrainJobs (Kubeflow Trainer v2) checked against the real
v2.3.0 CRD schema, its CEL name rules and Trainer's own admission rules, settings carried by
trainer and runtimePatches, status read from conditions as Trainer writes them, and the
job's life against an API server."""

from __future__ import annotations

import copy
import json
import logging
import re
import uuid

import pytest
from crd_schema import TRAINJOB_CRD, problems
from kube_server import CUT, FakeKube, pod
from kubeflow_trainer_api import models as tm
from test_pytorchjob import COMMAND, OVERRIDES, RUN_ID, STEP_ENV, make_spec

from video_kd import backends
from video_kd.backends import kube, pytorchjob, trainjob
from video_kd.backends.spec import job_name
from video_kd.core.errors import UserError
from video_kd.runs import Manifest, RunLayout
from video_kd.storage import s3


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


# --- Kubeflow Trainer v2.3.0's validating webhook --------------------------------------
# What validator.trainjob.trainer.kubeflow.org refuses that the CRD schema cannot say, read
# from kubeflow/trainer at tag v2.3.0:
# - pkg/runtime/core/clustertrainingruntime.go ValidateObjects (lines 99-107) and
#   trainingruntime.go ValidateObjects (lines 304-313): the runtimeRef names a runtime that
#   exists;
# - pkg/runtime/framework/plugins/jobset/jobset.go JobSet.Validate (lines 174-208): each
#   runtimePatches manager is a domain-prefixed path; a patched replicated job, and each of its
#   containers / initContainers, exists in the runtime; no env for the node and initializer
#   containers (lines 202-205);
# - pkg/runtime/framework/plugins/torch/torch.go Torch.Validate (lines 56-85): spec.trainer.env
#   holds none of torchrun's reserved names (pkg/constants/constants.go line 300,
#   TorchRunReservedEnvNames).
TRAINER_WEBHOOK = 'validator.trainjob.trainer.kubeflow.org'
TORCHRUN_RESERVED_ENV = (
    'PET_NNODES',
    'PET_NPROC_PER_NODE',
    'PET_NODE_RANK',
    'PET_MASTER_ADDR',
    'PET_MASTER_PORT',
)
NO_ENV_CONTAINERS = ('dataset-initializer', 'model-initializer', 'node')
# torch-distributed as v2.3.0 ships it (manifests/base/runtimes/torch_distributed.yaml):
# runtime (kind, name) -> replicated job -> its container names
TORCH_DISTRIBUTED = {('ClusterTrainingRuntime', 'torch-distributed'): {'node': {'node'}}}
_DNS1123_SUBDOMAIN = re.compile(
    r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'
)
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def runtime_containers(runtime: dict) -> dict[str, set[str]]:
    """A (Cluster)TrainingRuntime object's replicated jobs and their (init)container names."""
    found = {}
    for rjob in runtime['spec']['template']['spec']['replicatedJobs']:
        pod_spec = rjob['template']['spec']['template']['spec']
        found[rjob['name']] = {
            c['name'] for c in pod_spec.get('initContainers', []) + pod_spec['containers']
        }
    return found


def domain_prefixed_path_problems(where: str, value: str) -> list[str]:
    """k8s.io/apimachinery validation.IsDomainPrefixedPath, as Trainer applies it to managers."""
    host, sep, path = value.partition('/')
    if not (sep and host and path):
        return [f'{where}: must be a domain-prefixed path (such as "acme.io/foo")']
    found = []
    if len(host) > 253 or not _DNS1123_SUBDOMAIN.match(host):
        found.append(f'{where}: {host!r} is not a DNS-1123 subdomain')
    if not _PATH_SEGMENT.match(path):
        found.append(f'{where}: {path!r} is not a valid path')
    return found


def trainer_webhook_problems(manifest: dict, runtimes: dict = TORCH_DISTRIBUTED) -> list[str]:
    """What Trainer v2.3.0's TrainJob webhook refuses in a TrainJob on a torch runtime, in its
    own words; ``runtimes``: the runtimes the cluster has, (kind, name) -> job -> containers."""
    spec = manifest['spec']
    ref = spec['runtimeRef']
    kind = ref.get('kind', 'ClusterTrainingRuntime')
    if (kind, ref['name']) not in runtimes:
        # the field path is spelled so in clustertrainingruntime.go, line 105
        where = 'spec.RuntimeRef' if kind == 'ClusterTrainingRuntime' else 'spec.runtimeRef'
        return [
            f'{where}: Invalid value: {json.dumps(ref)}: {kind.lower()}s.trainer.kubeflow.org '
            f'"{ref["name"]}" not found: specified {kind[0].lower()}{kind[1:]} must be created '
            'before the TrainJob is created'
        ]
    jobs = runtimes[(kind, ref['name'])]
    found = []
    for i, patch in enumerate(spec.get('runtimePatches') or []):
        where = f'spec.runtimePatches[{i}]'
        found += domain_prefixed_path_problems(f'{where}.manager', patch['manager'])
        template = (patch.get('trainingRuntimeSpec') or {}).get('template') or {}
        for rjob in (template.get('spec') or {}).get('replicatedJobs') or []:
            if rjob['name'] not in jobs:
                found.append(
                    f"{where}: must not have replicated job that doesn't exist in the runtime "
                    'job template'
                )
                continue
            pod_spec = ((rjob.get('template') or {}).get('spec') or {}).get('template') or {}
            pod_spec = pod_spec.get('spec') or {}
            for c in pod_spec.get('initContainers', []) + pod_spec.get('containers', []):
                if c['name'] not in jobs[rjob['name']]:
                    found.append(
                        f"{where}: must not have container that doesn't exist in the runtime "
                        f'job {rjob["name"]}'
                    )
                elif c.get('env') and c['name'] in NO_ENV_CONTAINERS:
                    found.append(
                        f'{where}: must not have envs for the {", ".join(NO_ENV_CONTAINERS)} '
                        'containers'
                    )
    reserved = sorted({e['name'] for e in (spec.get('trainer') or {}).get('env') or []}
                      & set(TORCHRUN_RESERVED_ENV))  # fmt: skip
    if reserved:
        found.append(f'spec.trainer.env: must not have reserved envs, invalid envs configured: '
                     f'{reserved}')  # fmt: skip
    return found


def test_trainer_webhook_rules_catch_what_the_schema_cannot():
    manifest = trainjob.manifest(make_spec())
    assert trainer_webhook_problems(manifest) == []
    patch, template = node_patch(manifest)
    template['spec']['containers'][0]['env'] = [{'name': 'AWS_ACCESS_KEY_ID', 'value': 'x'}]
    template['spec']['containers'].append({'name': 'sidecar'})
    patch['manager'] = 'video-kd'
    manifest['spec']['trainer']['env'].append({'name': 'PET_NNODES', 'value': '2'})
    found = trainer_webhook_problems(manifest)
    assert (
        'spec.runtimePatches[0].manager: must be a domain-prefixed path (such as "acme.io/foo")'
        in found
    )
    assert (
        'spec.runtimePatches[0]: must not have envs for the dataset-initializer, '
        'model-initializer, node containers'
    ) in found
    assert (
        "spec.runtimePatches[0]: must not have container that doesn't exist in the runtime job node"
    ) in found
    assert (
        "spec.trainer.env: must not have reserved envs, invalid envs configured: ['PET_NNODES']"
    ) in found
    assert problems(manifest, TRAINJOB_CRD, 'v1alpha1') == [], 'all of it passes the schema'
    other = trainjob.manifest(make_spec(env={'VIDEO_KD_TRAINJOB_RUNTIME': 'nope'}))
    (missing,) = trainer_webhook_problems(other)
    assert missing.endswith(
        'clustertrainingruntimes.trainer.kubeflow.org "nope" not found: specified '
        'clusterTrainingRuntime must be created before the TrainJob is created'
    )


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
        assert trainer_webhook_problems(manifest) == []
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
    assert trainer['command'] == [
        'python',
        '-m',
        'video_kd.backends.torchrun',
    ]  # exit 2 final, 128 retried
    assert trainer['args'] == list(COMMAND)
    assert trainer['resourcesPerNode'] == {
        'requests': {'cpu': '8', 'memory': '32Gi'},
        'limits': {'memory': '48Gi', 'amd.com/gpu': '2'},
    }
    env = {e['name']: e for e in trainer['env']}
    assert env['AWS_DEFAULT_REGION']['value'] == 'eu-west-1'
    # the credentials by reference, in trainer.env: Trainer refuses env in a node patch
    assert env['AWS_ACCESS_KEY_ID']['valueFrom']['secretKeyRef'] == {
        'name': 'team-s3',
        'key': 'access-key',
        'optional': False,
    }
    assert env['AWS_SECRET_ACCESS_KEY']['valueFrom']['secretKeyRef']['key'] == 'secret-key'
    assert not any('value' in e for n, e in env.items() if n.startswith('AWS_') and 'KEY' in n)
    assert trainer_webhook_problems(manifest) == []
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
    assert container['name'] == 'node' and 'env' not in container
    assert {'name': 'cache', 'mountPath': '/data/cache'} in container['volumeMounts']


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
    runtimes = {('TrainingRuntime', 'kd-torch'): {'node': {'node'}}}
    assert trainer_webhook_problems(manifest, runtimes) == []


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
    """An API server with Trainer's webhook: every TrainJob a test submits meets its rules."""
    with FakeKube() as fake:
        fake.objects[('localqueues', 'ml', 'team-a-gpus')] = {}
        fake.admission['trainjobs'] = (TRAINER_WEBHOOK, trainer_webhook_problems)
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


def test_a_cut_watch_is_resumed_and_each_nodes_log_is_saved(cluster, bucket, monkeypatch):
    """The TrainJob's watch cut mid-run: resumed from its resourceVersion, the job followed to
    its end; each node's log in <run>/train/logs/ (and the manifest) before the job is
    deleted, a restarted container's previous run included."""
    monkeypatch.setenv('VIDEO_KD_WATCH_BACKOFF_S', '0.05')
    layout = RunLayout(bucket, 'kd', 'run-1')
    name = job_name(RUN_ID)
    node0 = f'{name}-node-0-0-abcde'
    cluster.scripts[name] = [[], CUT, 1.0, [COMPLETE]]  # 1 s: the pods are looked at
    cluster.pods.append(pod(node0, NODE0, 'Succeeded', 'node', exit_code=0, uid='cccc3333'))
    cluster.logs[node0] = 'Epoch(train) [1][2/2] loss: 1.25\n'
    # node 1's container restarted in place once: its first run's log is kept too
    node1 = f'{name}-node-0-1-fghij'
    labels = {**NODE0, 'batch.kubernetes.io/job-completion-index': '1'}
    cluster.pods.append(pod(node1, labels, container='node', uid='dddd4444', restarts=1))
    cluster.logs[node1] = 'resumed from epoch_1.pth\n'
    cluster.logs[node1 + '/previous'] = 'RuntimeError: NCCL timeout\n'
    backends.run_training('trainjob', make_spec(), 30, api=cluster.api(), layout=layout)
    versions = [w.get('resourceVersion') for w in cluster.watches if '/trainjobs' in w['path']]
    assert versions[0] is None and versions[1], 'resumed, not started over'
    uri = layout.uri('train', 'logs', f'{node0}.cccc3333.log')
    assert s3.read_bytes(uri) == b'Epoch(train) [1][2/2] loss: 1.25\n'
    assert Manifest.load(layout).find(uri)
    logs = layout.uri('train', 'logs')
    assert s3.read_bytes(f'{logs}/{node1}.dddd4444.restart0.log') == b'RuntimeError: NCCL timeout\n'
    assert s3.read_bytes(f'{logs}/{node1}.dddd4444.log') == b'resumed from epoch_1.pth\n'
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


def test_the_step_counts_no_restarts_of_a_trainjob(cluster):
    """JobSet's controller keeps the runtime's failurePolicy.maxRestarts itself: the step
    counts retried pods only for a PyTorchJob, whose operator does not (kubeflow/trainer#2045)."""
    spec = make_spec(env={}, num_nodes=1, backoff_limit_per_node=0)
    assert trainjob.backoff(spec) is None
    cluster.scripts[spec.name] = [[], 1.5, [COMPLETE]]
    node0 = {**NODE0, 'jobset.sigs.k8s.io/jobset-name': spec.name}
    failed = [
        pod(f'{spec.name}-node-0-0-{i}', node0, 'Failed', 'node', 137, uid=f'uid-{i}')
        for i in range(3)
    ]
    cluster.pod_events = [('MODIFIED', p) for p in failed]
    run(cluster, spec)
    assert ('trainjobs', 'ml', spec.name) not in cluster.objects


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


def test_trainers_webhook_denial_is_one_line_with_its_reason(cluster):
    """The chart's TrainingRuntime is missing (createRuntime=false but the ConfigMap names
    it, say): Trainer's webhook refuses the TrainJob; the step says why, not 'RBAC'."""
    spec = make_spec(
        env={
            'VIDEO_KD_TRAINJOB_RUNTIME': 'kd-prod-video-kd-torch',
            'VIDEO_KD_TRAINJOB_RUNTIME_KIND': 'TrainingRuntime',
        }
    )
    with pytest.raises(kube.ClusterError) as info:
        run(cluster, spec)
    text = str(info.value)
    assert text.startswith(
        'the cluster refused to create trainjobs.trainer.kubeflow.org in namespace ml: '
        'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
        'spec.runtimeRef: Invalid value: '
    )
    assert text.endswith(
        'trainingruntimes.trainer.kubeflow.org "kd-prod-video-kd-torch" not found: specified '
        'trainingRuntime must be created before the TrainJob is created'
    )
    assert '\n' not in text and 'ServiceAccount' not in text
    assert ('trainjobs', 'ml', spec.name) not in cluster.objects


# Kubeflow Trainer v2.1.0's TrainJob spec (manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml
# at tag v2.1.0): podTemplateOverrides, no runtimePatches (that came with v2.2.0).  Kubeflow
# 1.11 and 26.03 install v2.1.0 (kubeflow/website, releases/kubeflow-1.11.md, -26.03.md).
TRAINER_2_1_SPEC_FIELDS = {
    'annotations',
    'initializer',
    'labels',
    'managedBy',
    'podTemplateOverrides',
    'runtimeRef',
    'suspend',
    'trainer',
}


def test_an_older_trainer_refuses_runtime_patches_in_one_line_naming_the_fix(cluster):
    """On Trainer < 2.2 the API server would drop spec.runtimePatches (PVC, ServiceAccount,
    tolerations, Istio opt-out) without a word; created with strict field validation, the
    job is refused and the step says what to do."""
    cluster.spec_fields['trainjobs'] = TRAINER_2_1_SPEC_FIELDS
    with pytest.raises(kube.ClusterError) as info:
        run(cluster)
    text = str(info.value)
    assert text == (
        "the cluster's trainjobs.trainer.kubeflow.org API has no field spec.runtimePatches "
        "(an older TrainJob CRD): this cluster's Trainer is older than 2.2 (Kubeflow 1.11 and "
        '26.03 install v2.1.0, whose TrainJob has podTemplateOverrides instead of '
        'runtimePatches): install Kubeflow Trainer >= 2.2, or use training_backend=pytorchjob'
    )
    assert isinstance(info.value, UserError), 'exit status 2, one line'
    assert cluster.field_validation == ['Strict']
    assert ('trainjobs', 'ml', job_name(RUN_ID)) not in cluster.objects
    # Trainer v2.2's spec has runtimePatches: the same strict create goes through
    cluster.spec_fields['trainjobs'] = TRAINER_2_1_SPEC_FIELDS | {'runtimePatches'}
    cluster.scripts[job_name(RUN_ID)] = [[COMPLETE]]
    run(cluster)
    assert cluster.field_validation == ['Strict', 'Strict']


def test_missing_watch_verb_is_one_line(cluster):
    cluster.forbidden.add(('watch', 'trainjobs'))
    with pytest.raises(
        kube.ClusterError, match=re.escape('may not "watch" trainjobs.trainer.kubeflow.org')
    ):
        run(cluster)
    assert ('trainjobs', 'ml', job_name(RUN_ID)) not in cluster.objects, 'deleted all the same'


# --- what a TrainJob cannot carry: restarts and priority belong to its runtime ----------

CHART_RUNTIME_ENV = {
    **STEP_ENV,  # backoff 2 per node
    'VIDEO_KD_TRAINJOB_RUNTIME': 'kd-prod-video-kd-torch',
    'VIDEO_KD_TRAINJOB_RUNTIME_KIND': 'TrainingRuntime',
    'VIDEO_KD_TRAINJOB_MAX_RESTARTS': '2',  # rendered for backoffLimitPerNode 2 (any workers)
}


def test_a_run_that_asks_for_other_restarts_than_the_runtime_is_warned():
    """Both backends allow backoff_limit_per_node incidents: a JobSet restart per incident
    (the runtime's maxRestarts), a PyTorchJob's failed pods of every node per incident
    (backoff_limit: per node x nodes).  So the node count changes neither."""
    assert trainjob.warnings(make_spec(env=CHART_RUNTIME_ENV)) == [], 'the chart runtime: 2'
    for nodes in (1, 4):
        spec = make_spec(env=CHART_RUNTIME_ENV, num_nodes=nodes)
        assert trainjob.warnings(spec) == [], f'{nodes} nodes: 2 incidents on both backends'
        assert pytorchjob.manifest(spec)['spec']['runPolicy']['backoffLimit'] == 2 * nodes
    (line,) = trainjob.warnings(make_spec(env=CHART_RUNTIME_ENV, backoff_limit_per_node=5))
    assert line == (
        'this run asks for 5 restarts (backoff_limit_per_node, one per incident), but a '
        'TrainJob cannot set its own: TrainingRuntime kd-prod-video-kd-torch allows 2 (the '
        "chart's training.backoffLimitPerNode)"
    )
    # the manifest has nowhere to put it: neither the TrainJob nor its runtimePatches
    manifest = trainjob.manifest(make_spec(env=CHART_RUNTIME_ENV, backoff_limit_per_node=5))
    assert 'maxRestarts' not in str(manifest) and "'backoffLimit'" not in str(manifest)


def test_a_cluster_runtime_decides_the_restarts_and_needs_kueue_for_priority():
    env = {k: v for k, v in STEP_ENV.items() if k != 'VIDEO_KD_KUEUE_QUEUE'}
    restarts, priority = trainjob.warnings(make_spec(env=env))
    assert restarts == (
        'a TrainJob restarts as often as its runtime allows (ClusterTrainingRuntime '
        'torch-distributed: failurePolicy.maxRestarts); backoff_limit_per_node (2) does not '
        'apply to it'
    )
    assert priority.startswith(
        "priority class 'kd-high' has no effect on a TrainJob on ClusterTrainingRuntime "
        'torch-distributed without a Kueue queue'
    )
    with_queue = trainjob.warnings(make_spec())  # Kueue reads the label
    assert len(with_queue) == 1 and with_queue[0].startswith('a TrainJob restarts as often')


def test_the_step_logs_what_the_trainjob_cannot_carry(cluster, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.backends')
    spec = make_spec(
        env={**CHART_RUNTIME_ENV, 'VIDEO_KD_KUEUE_QUEUE': ''}, num_nodes=4, backoff_limit_per_node=8
    )
    cluster.scripts[spec.name] = [[COMPLETE]]
    runtimes = {
        **TORCH_DISTRIBUTED,
        ('TrainingRuntime', 'kd-prod-video-kd-torch'): {'node': {'node'}},
    }
    cluster.admission['trainjobs'] = (
        TRAINER_WEBHOOK,
        lambda manifest: trainer_webhook_problems(manifest, runtimes),
    )
    run(cluster, spec)
    assert 'this run asks for 8 restarts' in caplog.text
