"""The Helm chart in charts/video-kd, rendered by a real Helm engine.

Helm comes from the `helm-python-sdk` wheel (test extra): Helm's own Go SDK
(v4) behind a C ABI, so `render` here is `helm template` — same template
engine, same values.schema.json validation — with no helm binary and no
cluster.  Every rendered object is then validated against the Kubernetes
OpenAPI schemas by `kubernetes-validate` (strict: unknown fields fail).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
# Both from the test extra (pip install -e ".[test]"); a missing one fails, never skips.
import helm_python as helm
import kubernetes_validate
import kubernetes_validate.utils
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / 'charts' / 'video-kd'
RELEASE, NAMESPACE = 'video-kd', 'ml-team'
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
K8S_VERSIONS = ['1.25', kubernetes_validate.utils.latest_version()]

GPU_SCHEDULE = {
    'training': {
        'workers': 4,
        'gpu': {'enabled': True, 'perWorker': 2},
        'resources': {'requests': {'cpu': '8', 'memory': '32Gi'}, 'limits': {'memory': '48Gi'}},
        'nodeSelector': {'nvidia.com/gpu.present': 'true'},
        'tolerations': [{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}],
    },
    'schedule': {'enabled': True, 'cron': '0 30 2 * * 1', 'experiment': 'nightly-kd'},
    'persistence': {'enabled': True, 'size': '200Gi', 'storageClassName': 'fast'},
    's3': {
        'endpoint': 'http://minio-service.kubeflow.svc.cluster.local:9000',
        'bucket': 'kd-artifacts',
        'prefix': 'runs/kd',
    },
    'pipeline': {
        'version': 'v7',
        'params': {
            'dataset_uri': 's3://kd-artifacts/data/ucf101-mini',
            'teacher_sha256': 'ab12',
            'image': 'evil:latest',
        },
    },
}
EVERYTHING = {
    **GPU_SCHEDULE,
    'rbac': {
        'extraServiceAccounts': ['default-editor'],
        'sharedWithReleases': ['kd-prod'],
        'argoExecutor': True,
    },
    'imagePullSecrets': [{'name': 'regcred'}],
    'serviceAccount': {'annotations': {'eks.amazonaws.com/role-arn': 'arn:aws:iam::1:role/kd'}},
    'uploadJob': {
        'nodeSelector': {'pool': 'cpu'},
        'tolerations': [{'key': 'x', 'operator': 'Exists'}],
    },
}
CLUSTER_SCOPED = ('ValidatingAdmissionPolicy', 'ValidatingAdmissionPolicyBinding')
VAP_K8S = '1.30'
SCENARIOS = {'default': None, 'gpu+schedule': GPU_SCHEDULE, 'everything': EVERYTHING}


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith('NOTES.txt'):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o['kind'] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in by_kind(objects, kind) if name is None or o['metadata']['name'] == name]
    assert len(found) == 1, (
        f'expected one {kind} {name or ""}, got {[o["metadata"]["name"] for o in found]}'
    )
    return found[0]


@pytest.fixture(scope='module', params=list(SCENARIOS))
def scenario(request):
    return request.param, render(SCENARIOS[request.param])


# --- the chart itself -----------------------------------------------------------


def test_chart_metadata_matches_the_project():
    meta = yaml.safe_load((CHART / 'Chart.yaml').read_text())
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    assert meta['apiVersion'] == 'v2'
    assert meta['appVersion'] == project['version'], 'chart appVersion is the default image tag'


def test_helm_lint_strict_is_clean():
    report = helm.lint(str(CHART), strict=True)
    problems = [m for m in report['messages'] if m['severity'] >= 2]
    assert not problems and not report['errors'], problems or report['errors']


def test_every_value_is_documented():
    """Each top-level block of values.yaml opens with a comment, and has a schema entry."""
    lines = (CHART / 'values.yaml').read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        # top-level keys
        if re.match(r'^[A-Za-z]\w*:', line) and not lines[i - 1].lstrip().startswith('#'):
            undocumented.append(line)
    assert not undocumented, f'undocumented top-level values: {undocumented}'
    schema = json.loads((CHART / 'values.schema.json').read_text())
    values = yaml.safe_load((CHART / 'values.yaml').read_text())
    assert set(values) <= set(schema['properties']), 'every value has a schema entry'


# --- rendering + Kubernetes schemas ----------------------------------------------


def test_renders_expected_objects(scenario):
    name, objects = scenario
    kinds = sorted(o['kind'] for o in objects)
    expected = ['ConfigMap', 'ConfigMap', 'Job', 'ServiceAccount', 'ServiceAccount']
    expected += ['Role', 'RoleBinding'] * 2  # the training job's Role, the KFP API's Role
    if name != 'default':
        expected.append('PersistentVolumeClaim')
        # Argo's executor Role: asked for (everything), or the scheduled runs execute as the
        # chart's ServiceAccount (both schedule)
        expected += ['Role', 'RoleBinding']
    # the admission policy for the training jobs: one policy + binding per job kind
    expected += ['ValidatingAdmissionPolicy', 'ValidatingAdmissionPolicyBinding'] * 2
    assert kinds == sorted(expected)
    for obj in objects:
        if obj['kind'] in CLUSTER_SCOPED:
            assert 'namespace' not in obj['metadata'], obj['metadata']['name']
            assert NAMESPACE in obj['metadata']['name']  # one per release namespace
            continue
        assert obj['metadata'].get('namespace') == NAMESPACE, obj['metadata']['name']
        assert obj['metadata']['labels']['app.kubernetes.io/instance'] == RELEASE


@pytest.mark.parametrize('k8s_version', K8S_VERSIONS)
def test_every_object_validates_against_kubernetes_schemas(scenario, k8s_version):
    _, objects = scenario
    for obj in objects:
        # raises ValidationError (with the path) on a wrong type or an unknown field
        version = k8s_version
        if obj['kind'] in CLUSTER_SCOPED:  # admissionregistration.k8s.io/v1's VAP: GA in 1.30
            version = max(k8s_version, VAP_K8S, key=lambda v: tuple(map(int, v.split('.'))))
        kubernetes_validate.validate(obj, version, strict=True)


def test_kubernetes_validation_can_fail():
    job = one(render(), 'Job')
    job['spec']['template']['spec']['containers'][0]['imagePullPolicy'] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)
    job = one(render(), 'Job')
    job['spec']['template']['spec']['serviceAcountName'] = 'typo'
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


# --- RBAC: exactly what the pipeline needs ------------------------------------------

EXPECTED_GRANTS = (
    {('kubeflow.org', 'pytorchjobs', verb) for verb in ('create', 'get', 'watch', 'list', 'delete')}
    | {('', 'pods', verb) for verb in ('get', 'list', 'watch')}
    | {('', 'pods/log', 'get')}
    | {
        ('trainer.kubeflow.org', 'trainjobs', v)
        for v in ('create', 'get', 'watch', 'list', 'delete')
    }
    | {('kueue.x-k8s.io', 'localqueues', 'get')}
)
# What KFP 2.17.0 authorizes for the hook's calls (tests/kfp_server.py cites the source):
# pipelines (upload: find by name, create it or a version), experiments, and jobs - a
# recurring run is a 'job' to KFP's RBAC; there is no pipelines/versions or recurringruns.
KFP_API_GRANTS = {
    ('pipelines.kubeflow.org', r, v)
    for r in ('pipelines', 'experiments')
    for v in ('create', 'list')
} | {('pipelines.kubeflow.org', 'jobs', v) for v in ('create', 'list', 'delete')}
KFP_API_GRANTS.add(('pipelines.kubeflow.org', 'pipelines', 'get'))  # schedule reads the version


def grants(role: dict) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role['rules']:
        assert 'resourceNames' not in rule and 'nonResourceURLs' not in rule
        for group in rule['apiGroups']:
            for resource in rule['resources']:
                for verb in rule['verbs']:
                    out.add((group, resource, verb))
    return out


def test_role_grants_exactly_the_pytorchjob_and_pod_log_verbs(scenario):
    _, objects = scenario
    role = one(objects, 'Role', f'{RELEASE}-pytorchjobs')
    assert grants(role) == EXPECTED_GRANTS
    assert not any('*' in g for grant in grants(role) for g in grant)
    assert not by_kind(objects, 'ClusterRole') and not by_kind(objects, 'ClusterRoleBinding')


def test_rolebinding_binds_the_role_to_the_chart_serviceaccount(scenario):
    name, objects = scenario
    sa = one(objects, 'ServiceAccount', RELEASE)
    binding = one(objects, 'RoleBinding', f'{RELEASE}-pytorchjobs')
    assert binding['roleRef'] == {
        'apiGroup': 'rbac.authorization.k8s.io',
        'kind': 'Role',
        'name': f'{RELEASE}-pytorchjobs',
    }
    subjects = {(s['kind'], s['name'], s['namespace']) for s in binding['subjects']}
    expected = {('ServiceAccount', sa['metadata']['name'], NAMESPACE)}
    if name == 'everything':
        expected.add(('ServiceAccount', 'default-editor', NAMESPACE))
    assert subjects == expected


# What a KFP run's pods do with the Kubernetes API as the run's ServiceAccount (KFP's driver
# and launcher, Argo's executor), from the source: tests/data/kfp-run-sa-api-calls.yaml.
# (Argo's executor needed pods patch before v3.4; the v3.7.3 / v4.0.5 KFP ships need no more.)
ARGO_EXECUTOR_GRANTS = {
    ('argoproj.io', 'workflowtaskresults', 'create'),
    ('argoproj.io', 'workflowtaskresults', 'patch'),
}
KFP_RUN_GRANTS = ARGO_EXECUTOR_GRANTS | {('', 'configmaps', 'get'), ('', 'secrets', 'get')}


def argo_role(objects):
    return [r for r in by_kind(objects, 'Role') if r['metadata']['name'].endswith('kfp-run')]


def run_grants(role: dict) -> set[tuple[str, str, str]]:
    """grants() of a Role whose rules may name resources (resourceNames dropped)."""
    return grants(
        {'rules': [{k: v for k, v in r.items() if k != 'resourceNames'} for r in role['rules']]}
    )


def test_argo_executor_role_is_opt_in_and_separate():
    assert not argo_role(render())
    objects = render({'rbac': {'argoExecutor': True}})
    argo = one(objects, 'Role', f'{RELEASE}-kfp-run')
    assert run_grants(argo) == KFP_RUN_GRANTS
    assert run_grants(argo) >= ARGO_EXECUTOR_GRANTS
    assert grants(one(objects, 'Role', f'{RELEASE}-pytorchjobs')) == EXPECTED_GRANTS


@pytest.mark.parametrize(
    'schedule, argo',
    [
        ({'enabled': True}, True),  # runs as the chart's ServiceAccount: it needs Argo's rights
        ({'enabled': True, 'serviceAccount': RELEASE}, True),  # the same account, by name
        ({'enabled': True, 'serviceAccount': 'default-editor'}, False),  # KFP's own has them
        ({'enabled': False}, False),
    ],
)
def test_scheduled_runs_get_argos_rights_when_they_run_as_the_chart(schedule, argo):
    objects = render({'schedule': schedule})
    job_args = pod_spec(objects)[1]['containers'][0]['args']
    if schedule['enabled']:
        account = job_args[job_args.index('--service-account') + 1]
        assert account == schedule.get('serviceAccount', RELEASE)
    roles = argo_role(objects)
    assert bool(roles) == argo
    if argo:
        binding = one(objects, 'RoleBinding', f'{RELEASE}-kfp-run')
        assert run_grants(roles[0]) == KFP_RUN_GRANTS
        assert binding['subjects'] == [
            {'kind': 'ServiceAccount', 'name': RELEASE, 'namespace': NAMESPACE}
        ]


def test_rbac_can_be_left_out():
    objects = render(
        {'rbac': {'create': False}, 'serviceAccount': {'create': False, 'name': 'pipeline-runner'}}
    )
    assert not by_kind(objects, 'Role') and not by_kind(objects, 'RoleBinding')
    # only the training pods' own account, which no Role is bound to
    assert [sa['metadata']['name'] for sa in by_kind(objects, 'ServiceAccount')] == [
        f'{RELEASE}-trainer'
    ]
    job = one(objects, 'Job')
    assert job['spec']['template']['spec']['serviceAccountName'] == 'pipeline-runner'


# --- S3: connection in a ConfigMap, credentials only by reference ----------------------


def test_s3_connection_and_secret_reference():
    objects = render(GPU_SCHEDULE)
    data = one(objects, 'ConfigMap', f'{RELEASE}-s3')['data']
    assert data['S3_ENDPOINT_URL'] == 'http://minio-service.kubeflow.svc.cluster.local:9000'
    assert data['S3_BUCKET'] == 'kd-artifacts' and data['S3_PREFIX'] == 'runs/kd'
    assert data['S3_CREDENTIALS_SECRET'] == 'video-kd-s3-credentials'
    assert data['S3_ACCESS_KEY_ID_KEY'] == 'AWS_ACCESS_KEY_ID'
    assert data['S3_SECRET_ACCESS_KEY_KEY'] == 'AWS_SECRET_ACCESS_KEY'


def test_no_credentials_anywhere(scenario):
    _, objects = scenario
    assert not by_kind(objects, 'Secret'), (
        'the chart references an existing Secret, never creates one'
    )
    values = yaml.safe_load((CHART / 'values.yaml').read_text())
    assert set(values['s3']['credentials']) == {
        'existingSecret',
        'accessKeyIdKey',
        'secretAccessKeyKey',
    }
    text = yaml.safe_dump_all(objects)
    assert not re.search(r'AKIA[0-9A-Z]{16}', text)
    for obj in objects:
        if obj['kind'] == 'ConfigMap':
            for key in obj['data']:
                assert not re.fullmatch(
                    r'AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)|.*PASSWORD.*', key
                ), key


# --- the hook Job: upload + schedule --------------------------------------------------

# The release's ConfigMap/Secret names and keys, compiled into the pipeline by `upload`.
UPLOAD_NAMES = [
    '--s3-config-map',
    f'{RELEASE}-s3',
    '--s3-credentials',
    'video-kd-s3-credentials',
    '--access-key-id-key',
    'AWS_ACCESS_KEY_ID',
    '--secret-access-key-key',
    'AWS_SECRET_ACCESS_KEY',
    '--training-config-map',
    f'{RELEASE}-training',
]


def pod_spec(objects):
    job = one(objects, 'Job')
    return job, job['spec']['template']['spec']


def test_upload_job_is_a_post_install_hook_running_the_upload_cli():
    job, spec = pod_spec(render())
    ann = job['metadata']['annotations']
    assert ann['helm.sh/hook'] == 'post-install,post-upgrade'
    assert 'before-hook-creation' in ann['helm.sh/hook-delete-policy']
    assert 'initContainers' not in spec, 'no schedule by default'
    (c,) = spec['containers']
    assert c['image'] == 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'
    assert c['command'] == ['video-kd']
    assert c['args'] == [
        'upload',
        '--host',
        '$(KFP_HOST)',
        '--pipeline-name',
        'video-kd-distillation',
        *UPLOAD_NAMES,
        # the chart's run settings become the uploaded pipeline's defaults (one-off runs)
        '--param',
        'gpus_per_worker=0',
        '--param',
        'image=ghcr.io/kubeflow-video-kd/video-kd:0.1.0',
        '--param',
        'keep_checkpoints=3',
        '--param',
        'num_workers=2',
        '--param',
        's3_bucket=video-kd',
        '--param',
        's3_prefix=video-kd',
    ]
    env = {e['name']: e['value'] for e in c['env']}
    assert env['KFP_HOST'] == 'http://ml-pipeline.kubeflow.svc.cluster.local:8888'
    assert spec['restartPolicy'] == 'Never' and spec['automountServiceAccountToken'] is False
    projected = [v for v in spec['volumes'] if 'projected' in v]
    assert (
        projected[0]['projected']['sources'][0]['serviceAccountToken']['audience']
        == 'pipelines.kubeflow.org'
    )


def test_schedule_creates_a_recurring_run_after_the_upload():
    _, spec = pod_spec(render(GPU_SCHEDULE))
    (upload,) = spec['initContainers']
    (schedule,) = spec['containers']
    head = [
        'upload',
        '--host',
        '$(KFP_HOST)',
        '--pipeline-name',
        'video-kd-distillation',
        '--version',
        'v7',
        *UPLOAD_NAMES,
        '--pvc',
        f'{RELEASE}-cache',
        '--pvc-mount',
        '/cache',
    ]
    assert upload['args'][: len(head)] == head
    args = schedule['args']
    # the upload's parameter defaults are the recurring run's arguments, pair for pair
    assert upload['args'][len(head) :] == args[15:]
    assert args[:9] == [
        'schedule',
        '--host',
        '$(KFP_HOST)',
        '--pipeline-name',
        'video-kd-distillation',
        '--cron',
        '0 30 2 * * 1',
        '--experiment',
        'nightly-kd',
    ]
    assert args[9:13] == ['--namespace', NAMESPACE, '--service-account', RELEASE]
    # the recurring run's name: the release's pipeline name and the experiment
    assert args[13:15] == ['--job-name', 'video-kd-distillation-nightly-kd']
    flags = args[15::2]
    assert set(flags) == {'--param'}
    params = dict(p.split('=', 1) for p in args[16::2])
    assert params == {
        # the GPU run: components and PyTorchJob on the same CUDA build; users cannot override it
        'image': 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda',
        's3_bucket': 'kd-artifacts',
        's3_prefix': 'runs/kd',
        'num_workers': '4',
        'gpus_per_worker': '2',
        'dataset_uri': 's3://kd-artifacts/data/ucf101-mini',
        'teacher_sha256': 'ab12',
        'keep_checkpoints': '3',  # training.keepCheckpoints: checkpoint retention (issue 21)
    }
    # the hook itself stays on the small CPU image
    assert upload['image'] == schedule['image'] == 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'


def test_cpu_run_uses_the_cpu_image_and_no_gpus():
    _, spec = pod_spec(render({'schedule': {'enabled': True}}))
    params = dict(p.split('=', 1) for p in spec['containers'][0]['args'][16::2])
    assert params['image'] == 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'
    assert params['gpus_per_worker'] == '0' and params['num_workers'] == '2'
    assert 'dataset_uri' not in params, "empty params are left to the pipeline's defaults"


def test_hook_pod_runs_as_the_images_non_root_user():
    dockerfile = (ROOT / 'docker' / 'Dockerfile').read_text()
    uid = int(re.findall(r'^USER\s+(\d+)', dockerfile, re.M)[-1].split(':')[0])
    _, spec = pod_spec(render())
    assert spec['securityContext']['runAsNonRoot'] is True
    assert spec['securityContext']['runAsUser'] == uid
    c = spec['containers'][0]
    assert c['securityContext']['allowPrivilegeEscalation'] is False
    assert c['securityContext']['capabilities']['drop'] == ['ALL']


# --- GPU workers: resources, node selectors, tolerations, PVC --------------------------


def test_gpu_worker_overrides_and_pvc():
    objects = render(GPU_SCHEDULE)
    data = one(objects, 'ConfigMap', f'{RELEASE}-training')['data']
    overrides = json.loads(data['VIDEO_KD_WORKER_POD_OVERRIDES'])
    assert overrides['resources'] == {
        'requests': {'cpu': '8', 'memory': '32Gi'},
        'limits': {'memory': '48Gi', 'nvidia.com/gpu': '2'},
    }
    assert overrides['nodeSelector'] == {'nvidia.com/gpu.present': 'true'}
    assert overrides['tolerations'][0]['key'] == 'nvidia.com/gpu'
    # image, workers and GPUs per worker reach the run as pipeline parameters only
    assert not {'VIDEO_KD_IMAGE', 'VIDEO_KD_NUM_WORKERS', 'VIDEO_KD_GPUS_PER_WORKER'} & set(data)
    assert data['VIDEO_KD_SERVICE_ACCOUNT'] == f'{RELEASE}-trainer', 'the training pods own SA'
    pvc = one(objects, 'PersistentVolumeClaim')
    assert data['VIDEO_KD_PVC'] == pvc['metadata']['name'] == f'{RELEASE}-cache'
    assert pvc['spec']['resources']['requests']['storage'] == '200Gi'
    assert pvc['spec']['storageClassName'] == 'fast'

    default = json.loads(
        one(render(), 'ConfigMap', f'{RELEASE}-training')['data']['VIDEO_KD_WORKER_POD_OVERRIDES']
    )
    assert default['resources'] == {}, 'no GPU request without training.gpu.enabled'


def test_existing_claim_is_used_not_created():
    objects = render({'persistence': {'enabled': True, 'existingClaim': 'shared-videos'}})
    assert not by_kind(objects, 'PersistentVolumeClaim')
    assert (
        one(objects, 'ConfigMap', f'{RELEASE}-training')['data']['VIDEO_KD_PVC'] == 'shared-videos'
    )


# --- values.schema.json -------------------------------------------------------------------


@pytest.mark.parametrize(
    'values, where, what',
    [
        ({'training': {'workers': -1}}, '/training/workers', 'minimum: got -1, want 1'),
        ({'training': {'workers': 0}}, '/training/workers', 'minimum: got 0, want 1'),
        ({'training': {'workers': 'two'}}, '/training/workers', 'got string, want integer'),
        (
            {'training': {'keepCheckpoints': 0}},
            '/training/keepCheckpoints',
            'minimum: got 0, want 1',
        ),
        ({'training': {'gpu': {'perWorker': 0}}}, '/training/gpu/perWorker', 'minimum'),
        ({'schedule': {'cron': '0 3 * * *'}}, '/schedule/cron', 'does not match pattern'),
        ({'s3': {'endpoint': 'minio:9000'}}, '/s3/endpoint', 'does not match pattern'),
        ({'s3': {'credentials': {'existingSecret': ''}}}, '/s3/credentials/existingSecret', ''),
        (
            {'s3': {'credentials': {'accessKey': 'AKIA...'}}},
            '/s3/credentials',
            "additional properties 'accessKey' not allowed",
        ),
        ({'trainig': {'workers': 2}}, '', "additional properties 'trainig' not allowed"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(values, where, what):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as err:
            chart.validate_schema(values)
        assert f"at '{where}'" in str(err.value) and what in str(err.value), str(err.value)
        # and `helm install/template` refuse to render with it
        with pytest.raises(helm.HelmValuesError, match=re.escape(f"at '{where}'")):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize('cron', ['0 0 3 * * *', '@daily', '@every 12h', '0 */30 * * * 1-5'])
def test_schema_accepts_kfp_cron_forms(cron):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({'schedule': {'enabled': True, 'cron': cron}})


def test_checkpoint_retention_value_is_the_compiled_default(tmp_path):
    """training.keepCheckpoints reaches the uploaded pipeline's keep_checkpoints default (what a
    run started from the KFP UI gets), as the other owned run settings do (issue 21)."""
    objects = render({'training': {'keepCheckpoints': 5}})
    assert parameter_defaults(hook_compiled_pipeline(objects, tmp_path))['keep_checkpoints'] == 5


# --- a non-default release: every name and key reaches the training job -----------------

CUSTOM = {
    's3': {
        'region': 'eu-central-1',
        'credentials': {
            'existingSecret': 'team-a-minio',
            'accessKeyIdKey': 'accesskey',
            'secretAccessKeyKey': 'secretkey',
        },
    },
    'kfp': {'namespace': 'team-a'},
    'training': {
        'backend': 'trainjob',
        'workers': 3,
        'gpu': {'enabled': True, 'perWorker': 4, 'resourceName': 'amd.com/gpu'},
        'resources': {'requests': {'cpu': '16'}, 'limits': {'memory': '64Gi'}},
        'affinity': {
            'nodeAffinity': {
                'requiredDuringSchedulingIgnoredDuringExecution': {
                    'nodeSelectorTerms': [
                        {
                            'matchExpressions': [
                                {'key': 'gpu', 'operator': 'In', 'values': ['mi300']}
                            ]
                        }
                    ]
                }
            }
        },
        'kueueQueue': 'team-a-gpus',
        'priorityClassName': 'kd-batch',
        'backoffLimitPerNode': 1,
    },
    'persistence': {'enabled': True, 'existingClaim': 'videos', 'mountPath': '/mnt/videos'},
    'schedule': {'enabled': True, 'serviceAccount': 'default-editor'},
    # `video-kd schedule` checks the run's parameters first: a run needs its teacher, pinned
    'pipeline': {
        'params': {'teacher_url': 's3://team-a/teachers/tsm_r50.pth', 'teacher_sha256': 'a' * 64}
    },
}


def render_as(values: dict, name: str, namespace: str) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith('NOTES.txt')
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def hook_compiled_pipeline(objects: list[dict], tmp_path: Path) -> bytes:
    """The pipeline the hook's upload container uploads: its exact arguments through the
    CLI's own parsing and compile (only the HTTP upload left out)."""
    from video_kd import cli

    spec = one(objects, 'Job')['spec']['template']['spec']
    containers = spec.get('initContainers', []) + spec['containers']
    (upload,) = [c for c in containers if c['name'] == 'upload']
    args = cli.build_parser().parse_args(upload['args'])
    path = cli.compile_with_defaults(
        tmp_path / 'kd_pipeline.yaml', cli.cluster_names(args), cli.parse_params(args.param)
    )
    return path.read_bytes()


def parameter_defaults(ir: bytes) -> dict:
    pipeline = next(yaml.safe_load_all(ir))
    return {
        name: p.get('defaultValue')
        for name, p in pipeline['root']['inputDefinitions']['parameters'].items()
    }


def step_env(ir: bytes, executor: str, objects: list[dict]) -> dict[str, str]:
    """A step pod's env from the cluster as KFP's driver builds it: only the ConfigMap keys
    the compiled IR's kfp-kubernetes configMapAsEnv maps (keyToEnv), the ConfigMap names
    resolved from the parameters' compiled defaults; a missing key of a non-optional entry
    fails the pod (CreateContainerConfigError)."""
    _, platform = yaml.safe_load_all(ir)
    defaults = parameter_defaults(ir)
    config = platform['platforms']['kubernetes']['deploymentSpec']['executors'][executor]
    env = {}
    for entry in config['configMapAsEnv']:
        name = defaults[entry['configMapNameParameter']['componentInputParameter']]
        data = one(objects, 'ConfigMap', name)['data']
        for pair in entry['keyToEnv']:
            if pair['configMapKey'] in data:
                env[pair['envVar']] = data[pair['configMapKey']]
            else:
                assert entry.get('optional'), f'{name} lacks {pair["configMapKey"]}'
    return env


def mapped_keys(ir: bytes, executor: str, param: str) -> set[str]:
    """The keys of the ConfigMap named by pipeline parameter ``param`` that reach a step."""
    _, platform = yaml.safe_load_all(ir)
    config = platform['platforms']['kubernetes']['deploymentSpec']['executors'][executor]
    return {
        pair['configMapKey']
        for entry in config['configMapAsEnv']
        if entry['configMapNameParameter']['componentInputParameter'] == param
        for pair in entry['keyToEnv']
    }


@pytest.mark.parametrize('backend', ['pytorchjob', 'trainjob'])
def test_a_renamed_release_reaches_the_training_job(backend, tmp_path):
    """Render as release 'kd-prod', compile the pipeline as its hook does, give the train
    step's pod exactly the env the compiled IR maps from the release's ConfigMaps (what
    kfp-kubernetes use_config_map_as_env gives it) and the run settings as the compiled
    parameter defaults, and build the job the step would."""
    import sys

    sys.path.insert(0, str(ROOT / 'tests'))
    from crd_schema import PYTORCHJOB_CRD, TRAINJOB_CRD, problems

    from video_kd import backends

    values = {**CUSTOM, 'training': {**CUSTOM['training'], 'backend': backend}}
    objects = render_as(values, 'kd-prod', 'team-a')
    training = one(objects, 'ConfigMap', 'kd-prod-video-kd-training')['data']
    assert training['VIDEO_KD_TRAINING_BACKEND'] == backend
    runtimes = by_kind(objects, 'TrainingRuntime')
    assert [r['metadata']['name'] for r in runtimes] == (
        ['kd-prod-video-kd-torch'] if backend == 'trainjob' else []
    )
    ir = hook_compiled_pipeline(objects, tmp_path)
    # every key of the training ConfigMap reaches the train step: a chart value that is
    # not in the IR's mapping would do nothing
    assert set(training) <= mapped_keys(ir, 'exec-train', 'training_config_map')
    env = step_env(ir, 'exec-train', objects)
    args = parameter_defaults(ir)  # what a run given no arguments (the KFP UI's) gets
    spec = backends.spec_from_env(  # as video_kd.steps.train.job_spec calls it
        run_id='6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f',
        image=args['image'],
        command=['-m', 'video_kd.distill.train_pod'],
        num_nodes=int(args['num_workers']),
        gpus_per_worker=int(args['gpus_per_worker']),
        nproc_per_node=int(args['nproc_per_node']) or None,
        backoff_limit_per_node=int(args['backoff_limit_per_node']) or None,
        namespace='team-a',
        env=env,
    )
    assert spec.image == 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda'
    assert (spec.num_nodes, spec.gpus_per_worker) == (3, 4)
    manifest = backends.manifest(training['VIDEO_KD_TRAINING_BACKEND'], spec)
    if backend == 'pytorchjob':
        assert problems(manifest, PYTORCHJOB_CRD, 'v1') == []
        pod = manifest['spec']['pytorchReplicaSpecs']['Worker']['template']['spec']
        container = pod['containers'][0]
        resources = container['resources']
        assert manifest['spec']['runPolicy']['backoffLimit'] == 3
        assert pod['priorityClassName'] == 'kd-batch'
    else:
        from test_trainjob import runtime_containers, trainer_webhook_problems

        assert problems(manifest, TRAINJOB_CRD, 'v1alpha1') == []
        (runtime,) = runtimes
        # Trainer's webhook admits it against the release's own runtime
        known = {('TrainingRuntime', runtime['metadata']['name']): runtime_containers(runtime)}
        assert trainer_webhook_problems(manifest, known) == []
        (patch,) = manifest['spec']['runtimePatches']
        pod = patch['trainingRuntimeSpec']['template']['spec']['replicatedJobs'][0]['template'][
            'spec'
        ]['template']['spec']
        # the env (Secret references too) is the trainer's; the patch adds mounts
        container = {**pod['containers'][0], 'env': manifest['spec']['trainer']['env']}
        resources = manifest['spec']['trainer']['resourcesPerNode']
        assert manifest['spec']['trainer']['numProcPerNode'] == 4
        assert manifest['metadata']['labels']['kueue.x-k8s.io/priority-class'] == 'kd-batch'
        assert manifest['spec']['runtimeRef'] == {
            'name': 'kd-prod-video-kd-torch',
            'kind': 'TrainingRuntime',
        }
    assert manifest['metadata']['labels']['kueue.x-k8s.io/queue-name'] == 'team-a-gpus'
    # its release label, from the IR-mapped env: what the release's admission policy admits
    assert manifest['metadata']['labels']['app.kubernetes.io/instance'] == 'kd-prod'
    policy = one(objects, 'ValidatingAdmissionPolicy', f'kd-prod-video-kd-team-a-{backend}s')
    step_user = 'system:serviceaccount:team-a:kd-prod-video-kd'
    assert admission(policy, 'CREATE', manifest, user=step_user) == []
    assert resources == {
        'requests': {'cpu': '16', 'memory': '8Gi'},  # memory: the default request
        'limits': {'memory': '64Gi', 'amd.com/gpu': '4'},
    }
    assert pod['affinity'] == CUSTOM['training']['affinity']
    assert pod['serviceAccountName'] == 'kd-prod-video-kd-trainer'
    assert {'name': 'cache', 'persistentVolumeClaim': {'claimName': 'videos'}} in pod['volumes']
    assert {'name': 'cache', 'mountPath': '/mnt/videos'} in container['volumeMounts']
    env_of = {e['name']: e for e in container['env']}
    assert env_of['AWS_DEFAULT_REGION']['value'] == 'eu-central-1'
    assert env_of['AWS_ACCESS_KEY_ID']['valueFrom']['secretKeyRef'] == {
        'name': 'team-a-minio',
        'key': 'accesskey',
        'optional': False,
    }
    assert env_of['AWS_SECRET_ACCESS_KEY']['valueFrom']['secretKeyRef']['key'] == 'secretkey'
    # the training pods' account exists, has no token and no Role
    trainer_sa = one(objects, 'ServiceAccount', 'kd-prod-video-kd-trainer')
    assert trainer_sa['automountServiceAccountToken'] is False
    bound = {s['name'] for b in by_kind(objects, 'RoleBinding') for s in b['subjects']}
    assert 'kd-prod-video-kd-trainer' not in bound


def test_a_renamed_release_compiles_and_schedules_with_its_own_names():
    objects = render_as(CUSTOM, 'kd-prod', 'team-a')
    spec = one(objects, 'Job')['spec']['template']['spec']
    (upload,) = spec['initContainers']
    (schedule,) = spec['containers']
    args = upload['args']
    named = dict(zip(args[5::2], args[6::2], strict=False))
    params = [
        value for flag, value in zip(args[5::2], args[6::2], strict=True) if flag == '--param'
    ]
    assert params == [p for p in schedule['args'][15:] if p != '--param']
    named.pop('--param')
    assert named == {
        '--s3-config-map': 'kd-prod-video-kd-s3',
        '--s3-credentials': 'team-a-minio',
        '--access-key-id-key': 'accesskey',
        '--secret-access-key-key': 'secretkey',
        '--training-config-map': 'kd-prod-video-kd-training',
        '--pvc': 'videos',
        '--pvc-mount': '/mnt/videos',
    }
    assert schedule['args'][9:15] == [
        '--namespace',
        'team-a',
        '--service-account',
        'default-editor',
        '--job-name',
        'kd-prod-video-kd-distillation-video-kd',
    ]
    assert args[4] == 'kd-prod-video-kd-distillation'  # the release's own pipeline
    assert schedule['args'][4] == args[4]
    env = {e['name']: e['value'] for e in schedule['env']}
    assert env['KF_PIPELINES_SA_TOKEN_PATH'] == '/var/run/secrets/kubeflow/pipelines/token'
    kfp_role = one(objects, 'Role', 'kd-prod-video-kd-kfp-api')
    assert kfp_role['metadata']['namespace'] == 'team-a'
    assert grants(kfp_role) == KFP_API_GRANTS
    binding = one(objects, 'RoleBinding', 'kd-prod-video-kd-kfp-api')
    assert binding['subjects'] == [
        {'kind': 'ServiceAccount', 'name': 'kd-prod-video-kd', 'namespace': 'team-a'}
    ]


@pytest.mark.parametrize(
    'values, where',
    [
        ({'training': {'backend': 'slurm'}}, '/training/backend'),
        ({'training': {'gpu': {'resourceName': 'nvidia gpu'}}}, '/training/gpu/resourceName'),
        ({'training': {'kueueQueue': 'Team_A'}}, '/training/kueueQueue'),
        ({'persistence': {'mountPath': 'cache'}}, '/persistence/mountPath'),
    ],
)
def test_schema_rejects_bad_cluster_values(values, where):
    with (
        helm.Chart.load(str(CHART)) as chart,
        pytest.raises(helm.HelmValuesError, match=re.escape(f"at '{where}'")),
    ):
        chart.validate_schema(values)


def test_trainjob_runtime_carries_the_failure_semantics():
    """The chart's TrainingRuntime: valid for the v2.3.0 CRD and Trainer's webhook, exit 2
    fails at once, evictions do not count, restarts = backoff per node (one per incident, as
    a PyTorchJob's per node x workers failed pods), a finished JobSet deleted after a day."""
    import sys

    sys.path.insert(0, str(ROOT / 'tests'))
    from crd_schema import TRAININGRUNTIME_CRD, problems

    values = {'training': {'backend': 'trainjob', 'workers': 4, 'backoffLimitPerNode': 2}}
    runtime = one(render(values), 'TrainingRuntime', f'{RELEASE}-torch')
    assert problems(runtime, TRAININGRUNTIME_CRD, 'v1alpha1') == []
    jobset = runtime['spec']['template']['spec']
    assert jobset['failurePolicy']['maxRestarts'] == 2, 'incidents, whatever the workers'
    assert jobset['ttlSecondsAfterFinished'] == 86400
    assert jobset['failurePolicy']['rules'] == [
        {
            'name': 'bad-input-fails-at-once',
            'action': 'FailJobSet',
            'onJobFailureReasons': ['PodFailurePolicy'],
        }
    ]
    (node,) = jobset['replicatedJobs']
    # Trainer's webhook: the trainer ancestor's job is 'node', 1 replica, container 'node'
    assert node['name'] == 'node' and node.get('replicas', 1) == 1
    assert node['template']['metadata']['labels'] == {
        'trainer.kubeflow.org/trainjob-ancestor-step': 'trainer'
    }
    job = node['template']['spec']
    assert job['backoffLimit'] == 0
    rules = job['podFailurePolicy']['rules']
    assert rules[0] == {
        'action': 'FailJob',
        'onExitCodes': {'containerName': 'node', 'operator': 'In', 'values': [2]},
    }
    assert rules[1] == {'action': 'Ignore', 'onPodConditions': [{'type': 'DisruptionTarget'}]}
    pod = job['template']['spec']
    assert pod['restartPolicy'] == 'Never' and pod['containers'][0]['name'] == 'node'
    assert pod['automountServiceAccountToken'] is False
    assert 'priorityClassName' not in pod
    data = one(render(values), 'ConfigMap', f'{RELEASE}-training')['data']
    assert data['VIDEO_KD_TRAINJOB_RUNTIME'] == f'{RELEASE}-torch'
    assert data['VIDEO_KD_TRAINJOB_RUNTIME_KIND'] == 'TrainingRuntime'
    assert data['VIDEO_KD_TRAINJOB_MAX_RESTARTS'] == '2', 'what the runtime allows'
    # the priority class reaches the pods through the runtime (a TrainJob cannot carry it)
    prioritized = {'training': {**values['training'], 'priorityClassName': 'kd-batch'}}
    runtime = one(render(prioritized), 'TrainingRuntime', f'{RELEASE}-torch')
    node_job = runtime['spec']['template']['spec']['replicatedJobs'][0]['template']['spec']
    assert node_job['template']['spec']['priorityClassName'] == 'kd-batch'
    assert problems(runtime, TRAININGRUNTIME_CRD, 'v1alpha1') == []
    # an admin's ClusterTrainingRuntime instead
    values['training']['trainJob'] = {'createRuntime': False, 'clusterRuntime': 'torch-gpu'}
    objects = render(values)
    assert not by_kind(objects, 'TrainingRuntime')
    data = one(objects, 'ConfigMap', f'{RELEASE}-training')['data']
    assert data['VIDEO_KD_TRAINJOB_RUNTIME'] == 'torch-gpu'
    assert data['VIDEO_KD_TRAINJOB_RUNTIME_KIND'] == 'ClusterTrainingRuntime'
    # the PyTorchJob backend needs no runtime
    assert not by_kind(render(), 'TrainingRuntime')


@pytest.mark.parametrize(
    'training',
    [
        {'backend': 'pytorchjob'},  # createRuntime is true by default, but only trainjob gets one
        {'backend': 'local'},
        {'backend': 'trainjob'},
        {'backend': 'trainjob', 'trainJob': {'createRuntime': False}},
        {'backend': 'pytorchjob', 'trainJob': {'createRuntime': False, 'clusterRuntime': 'gpu'}},
    ],
)
def test_the_configmap_names_only_a_runtime_that_exists(training):
    """A run may pick trainjob by parameter whatever the chart's backend: the runtime the
    ConfigMap names is the chart's own only when the chart creates it."""
    objects = render({'training': training})
    data = one(objects, 'ConfigMap', f'{RELEASE}-training')['data']
    created = {r['metadata']['name'] for r in by_kind(objects, 'TrainingRuntime')}
    if data['VIDEO_KD_TRAINJOB_RUNTIME_KIND'] == 'TrainingRuntime':
        assert created == {data['VIDEO_KD_TRAINJOB_RUNTIME']}
        assert 'VIDEO_KD_TRAINJOB_MAX_RESTARTS' in data
    else:
        assert not created and 'VIDEO_KD_TRAINJOB_MAX_RESTARTS' not in data
        cluster_runtime = training.get('trainJob', {}).get('clusterRuntime', 'torch-distributed')
        assert data['VIDEO_KD_TRAINJOB_RUNTIME'] == cluster_runtime
    assert bool(created) == (
        training['backend'] == 'trainjob' and training.get('trainJob', {}) == {}
    )


# --- the hook Job against a multi-user KFP API: exactly the Role's rights -------------------


def step_pods(ir: bytes) -> dict[str, dict]:
    """What each step pod of a compiled pipeline gets from the cluster (its platform spec,
    the names given as pipeline parameters resolved to their compiled defaults)."""
    pipeline, platform = yaml.safe_load_all(ir)
    defaults = {
        name: p.get('defaultValue')
        for name, p in pipeline['root']['inputDefinitions']['parameters'].items()
    }

    def name_of(ref: dict) -> str:
        return defaults[ref['componentInputParameter']]

    pods = {}
    for executor, config in platform['platforms']['kubernetes']['deploymentSpec'][
        'executors'
    ].items():
        if 'secretAsEnv' not in config:  # check inputs: no credentials (its own test)
            assert 'check-inputs' in executor, executor
            continue
        (secret,) = config['secretAsEnv']
        pods[executor] = {
            'secret': name_of(secret['secretNameParameter']),
            'secret_keys': {k['envVar']: k['secretKey'] for k in secret['keyToEnv']},
            'config_maps': {name_of(c['configMapNameParameter']) for c in config['configMapAsEnv']},
            'pvc': [(m['constant'], m['mountPath']) for m in config.get('pvcMount', [])],
        }
    return pods


CHART_RUN_SETTINGS = (
    'image',
    'num_workers',
    'gpus_per_worker',
    's3_bucket',
    's3_prefix',
    'dataset_uri',
    'max_epochs',
    'keep_checkpoints',
)


def test_the_hook_uploads_and_schedules_on_multi_user_kfp_with_its_roles_rights():
    """Render a renamed release for a Kubeflow profile, then run the hook's two containers'
    exact arguments (`video-kd upload`, `video-kd schedule`) against a KFP API that
    authorizes every call as multi-user KFP 2.17 does, with the chart's kfp-api Role as the
    only rights: both succeed, each granted verb is used, and the uploaded pipeline is
    compiled with the release's Secret, keys, ConfigMaps and PVC."""
    from kfp_server import FakeKFP

    from video_kd import cli

    values = {
        **CUSTOM,
        'kfp': {'multiUser': True, 'namespace': 'team-a'},
        's3': {**CUSTOM['s3'], 'bucket': 'team-a-kd', 'prefix': 'kd/prod'},
        'pipeline': {
            'params': {
                **CUSTOM['pipeline']['params'],
                'dataset_uri': 's3://team-a-kd/videos',
                'max_epochs': 7,
            }
        },
    }
    objects = render_as(values, 'kd-prod', 'team-a')
    spec = one(objects, 'Job')['spec']['template']['spec']
    (upload,) = spec['initContainers']
    (schedule,) = spec['containers']
    role = one(objects, 'Role', 'kd-prod-video-kd-kfp-api')
    granted = {(verb, resource) for _, resource, verb in grants(role)}
    with FakeKFP(multi_user=True) as kfp:
        kfp.grants = {(verb, resource, role['metadata']['namespace']) for verb, resource in granted}
        for _ in ('helm install', 'helm upgrade'):  # the upgrade: a version, a new schedule
            for container in (upload, schedule):
                argv = [arg.replace('$(KFP_HOST)', kfp.url) for arg in container['args']]
                assert cli.main(argv) == 0, container['name']
        (pipeline,) = kfp.pipelines.values()
        assert pipeline['namespace'] == 'team-a', 'a namespaced pipeline: the Role allows it'
        assert len(kfp.versions[pipeline['pipeline_id']]) == 2
        (recurring,) = kfp.recurring_runs.values()
        assert recurring['service_account'] == 'default-editor'
        assert recurring['namespace'] == 'team-a'
        assert {(verb, resource) for verb, resource, _ in kfp.checks} == granted, (
            'every right of the Role is needed, and no other'
        )
        assert len(kfp.uploads) == 2 and kfp.uploads[0] == kfp.uploads[1]
    # a one-off run (the KFP UI's, or one given no arguments) gets the chart's settings:
    # they are the uploaded pipeline's parameter defaults
    defaults = parameter_defaults(kfp.uploads[-1])
    assert {k: defaults[k] for k in CHART_RUN_SETTINGS} == {
        'image': 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda',
        'num_workers': 3,
        'gpus_per_worker': 4,
        's3_bucket': 'team-a-kd',
        's3_prefix': 'kd/prod',
        'dataset_uri': 's3://team-a-kd/videos',
        'max_epochs': 7,
        'keep_checkpoints': 3,  # training.keepCheckpoints
    }
    # ... and the recurring run's arguments, the same values
    arguments = recurring['runtime_config']['parameters']
    assert set(CHART_RUN_SETTINGS) | {'teacher_url', 'teacher_sha256'} == set(arguments)
    assert arguments == {k: defaults[k] for k in arguments}
    for executor, pod in step_pods(kfp.uploads[-1]).items():
        assert pod['secret'] == 'team-a-minio', executor
        assert pod['secret_keys'] == {
            'AWS_ACCESS_KEY_ID': 'accesskey',
            'AWS_SECRET_ACCESS_KEY': 'secretkey',
        }
        expected_maps = {'kd-prod-video-kd-s3'}
        if executor in ('exec-train', 'exec-evaluate'):  # both run on the training backend
            expected_maps.add('kd-prod-video-kd-training')
        assert pod['config_maps'] == expected_maps, executor
        assert pod['pvc'] == [('videos', '/mnt/videos')], executor


def test_single_user_kfp_gets_a_shared_pipeline():
    """Without kfp.multiUser the upload names no namespace: a shared pipeline, which the
    schedule finds too."""
    objects = render({'schedule': {'enabled': True}})
    _, spec = pod_spec(objects)
    assert '--namespace' not in spec['initContainers'][0]['args']
    multi = render({'schedule': {'enabled': True}, 'kfp': {'multiUser': True}})
    upload = pod_spec(multi)[1]['initContainers'][0]['args']
    assert upload[upload.index('--namespace') + 1] == NAMESPACE


def notes(values: dict | None, namespace: str) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    (text,) = [text for path, text in manifests.items() if path.endswith('NOTES.txt')]
    return text


@pytest.mark.parametrize(
    'values, namespace, kfp_namespace',
    [
        (None, NAMESPACE, 'kubeflow'),  # single-user KFP in kubeflow, the release elsewhere
        ({'kfp': {'host': 'http://ml-pipeline.kfp.svc:8888'}}, NAMESPACE, 'kfp'),
        (None, 'kubeflow', None),  # installed into KFP's namespace: what single-user needs
        ({'kfp': {'multiUser': True}}, NAMESPACE, None),  # profiles: the release's own
        ({'kfp': {'host': 'https://kfp.example.com'}}, NAMESPACE, None),  # namespace unknown
    ],
)
def test_notes_warn_when_single_user_kfp_runs_the_steps_elsewhere(values, namespace, kfp_namespace):
    """Single-user KFP runs step pods in its own namespace, where a release installed into
    another one has no S3 ConfigMap or Secret (CreateContainerConfigError): NOTES says so."""
    text = notes(values, namespace)
    if kfp_namespace is None:
        assert 'WARNING' not in text
        return
    warning = text[text.index('WARNING: single-user KFP') :]
    assert f'namespace, {kfp_namespace} (from kfp.host), not in {namespace}' in warning
    assert f'neither ConfigMap {RELEASE}-s3 nor Secret video-kd-s3-credentials' in warning
    assert (
        f'helm install {RELEASE} charts/video-kd -n {kfp_namespace} '
        '--set rbac.extraServiceAccounts={pipeline-runner}'
    ) in warning
    assert 'kfp.multiUser=true' in warning


# --- the admission policy: what the Role cannot say -------------------------------------
# Evaluated with cel-python (test extra), a CEL implementation: the policy's match
# conditions, then its variables in order (each sees the earlier ones), then its
# validations, as the API server's ValidatingAdmissionPolicy plugin does.
STEP_USER = f'system:serviceaccount:{NAMESPACE}:{RELEASE}'


@functools.cache
def cel_program(expression: str):
    """The expression compiled once (cel-python's parser is slow; the policies repeat)."""
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expression))


def admission(policy: dict, operation: str, obj: dict | None, old: dict | None = None,
              user: str = STEP_USER) -> list[str] | None:  # fmt: skip
    """The messages of the validations that refuse the request; None when not matched."""
    import celpy
    from celpy import celtypes

    def evaluate(expression: str, activation: dict):
        return cel_program(expression).evaluate(activation)

    activation = {
        'object': celpy.json_to_cel(obj),
        'oldObject': celpy.json_to_cel(old),
        'request': celpy.json_to_cel({'operation': operation, 'userInfo': {'username': user}}),
    }
    spec = policy['spec']
    if not all(evaluate(c['expression'], activation) for c in spec['matchConditions']):
        return None
    variables: dict = {}
    for variable in spec['variables']:
        value = evaluate(
            variable['expression'], {**activation, 'variables': celtypes.MapType(variables)}
        )
        variables[celtypes.StringType(variable['name'])] = value
    activation['variables'] = celtypes.MapType(variables)
    # a validation's messageExpression, when it gives a non-empty string, wins over its message
    return [
        (v.get('messageExpression') and str(evaluate(v['messageExpression'], activation)))
        or v['message']
        for v in spec['validations']
        if not evaluate(v['expression'], activation)
    ]


def built_job(objects: list[dict], backend: str, image: str = '') -> dict:
    """The job the train step builds from the release's ConfigMaps (as in the step pod)."""
    from video_kd import backends

    env = {
        **one(objects, 'ConfigMap', suffixed_name(objects, 'training'))['data'],
        **one(objects, 'ConfigMap', suffixed_name(objects, 's3'))['data'],
    }
    spec = backends.spec_from_env(
        run_id='run-1', image=image or 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0',
        command=['-m', 'video_kd.distill.train_pod'], num_nodes=2, gpus_per_worker=0,
        namespace=NAMESPACE, env=env,
    )  # fmt: skip
    return backends.manifest(backend, spec)


def suffixed_name(objects: list[dict], suffix: str) -> str:
    """The name of the release's "<fullname>-<suffix>" object (any release name)."""
    (name,) = {
        o['metadata']['name'] for o in objects if o['metadata']['name'].endswith(f'-{suffix}')
    }
    return name


def pod_specs(job: dict) -> list[dict]:
    if job['kind'] == 'PyTorchJob':
        return [r['template']['spec'] for r in job['spec']['pytorchReplicaSpecs'].values()]
    return [
        j['template']['spec']['template']['spec']
        for p in job['spec']['runtimePatches']
        for j in p['trainingRuntimeSpec']['template']['spec']['replicatedJobs']
    ]


@pytest.mark.parametrize('backend', ['pytorchjob', 'trainjob'])
@pytest.mark.parametrize('values', [None, {'persistence': {'enabled': True}}], ids=['', 'pvc'])
def test_the_admission_policy_admits_the_backends_jobs_and_refuses_others(backend, values):
    import copy

    objects = render(values)
    policy = one(objects, 'ValidatingAdmissionPolicy', f'{RELEASE}-{NAMESPACE}-{backend}s')
    binding = one(objects, 'ValidatingAdmissionPolicyBinding', policy['metadata']['name'])
    assert binding['spec']['policyName'] == policy['metadata']['name']
    assert binding['spec']['validationActions'] == ['Deny']
    assert binding['spec']['matchResources']['namespaceSelector']['matchLabels'] == {
        'kubernetes.io/metadata.name': NAMESPACE
    }
    job = built_job(objects, backend)
    assert admission(policy, 'CREATE', job) == []
    assert admission(policy, 'DELETE', None, job) == []
    # another user's requests (the operator, a person) are not this policy's business
    other = copy.deepcopy(job)
    other['metadata']['labels'] = {}
    assert admission(policy, 'DELETE', None, other, user='system:serviceaccount:x:y') is None

    def refused(change, operation='CREATE') -> list[str]:
        bad = copy.deepcopy(job)
        change(bad)
        found = admission(policy, operation, None if operation == 'DELETE' else bad, bad)
        assert found, f'{backend}: admitted after {change.__name__}'
        return found

    def other_service_account(bad):
        pod_specs(bad)[0]['serviceAccountName'] = 'default-editor'

    def no_service_account(bad):
        for pod in pod_specs(bad):
            del pod['serviceAccountName']

    def another_secret_volume(bad):
        pod_specs(bad)[0]['volumes'].append({'name': 's', 'secret': {'secretName': 'kfp-token'}})

    def a_host_path(bad):
        pod_specs(bad)[0]['volumes'].append({'name': 'h', 'hostPath': {'path': '/'}})

    def another_secret_env(bad):
        ref = {'name': 'X', 'valueFrom': {'secretKeyRef': {'name': 'other', 'key': 'k'}}}
        if backend == 'trainjob':
            bad['spec']['trainer']['env'].append(ref)
        else:
            pod_specs(bad)[0]['containers'][0]['env'].append(ref)

    def another_image(bad):
        if backend == 'trainjob':
            bad['spec']['trainer']['image'] = 'ghcr.io/kubeflow-video-kd/video-kd-evil:1'
        else:
            pod_specs(bad)[0]['containers'][0]['image'] = 'evil:latest'

    def no_label(bad):
        del bad['metadata']['labels']['app.kubernetes.io/part-of']

    assert refused(other_service_account) == [
        "the training pods must run as the chart's training ServiceAccount"
    ]
    for change in (no_service_account, another_secret_volume, a_host_path, another_secret_env,
                   another_image, no_label):  # fmt: skip
        refused(change)
    assert refused(no_label, 'DELETE') == [
        "the step's ServiceAccount may create and delete only jobs labelled "
        'app.kubernetes.io/part-of=video-kd and app.kubernetes.io/managed-by=video-kd'
    ]
    if backend == 'trainjob':

        def another_runtime(bad):
            bad['spec']['runtimeRef']['name'] = 'someone-elses'

        refused(another_runtime)


def test_every_admission_expression_compiles_and_names_only_the_releases_objects():
    import celpy

    objects = render(EVERYTHING)
    policies = by_kind(objects, 'ValidatingAdmissionPolicy')
    assert len(policies) == 2
    env = celpy.Environment()
    for policy in policies:
        spec = policy['spec']
        for item in spec['matchConditions'] + spec['variables'] + spec['validations']:
            env.compile(item['expression'])  # raises CELParseError
            if 'messageExpression' in item:
                env.compile(item['messageExpression'])
        condition, shared = spec['matchConditions']
        assert (
            shared['name'] == 'not-a-sharing-releases-job' and '["kd-prod"]' in shared['expression']
        )
        assert condition['expression'] == (
            f'request.userInfo.username in ["{STEP_USER}",'
            f'"system:serviceaccount:{NAMESPACE}:default-editor"]'
        )  # the Role's subjects, and no one else
        variables = {v['name']: v['expression'] for v in spec['variables']}
        assert variables['serviceAccount'] == f'"{RELEASE}-trainer"'
        assert variables['secret'] == '"video-kd-s3-credentials"'
        assert variables['pvc'] == f'"{RELEASE}-cache"'
        assert spec['failurePolicy'] == 'Fail'
    assert not by_kind(render({'rbac': {'admissionPolicy': False}}), 'ValidatingAdmissionPolicy')


def test_the_image_allow_list_defaults_to_the_charts_repository():
    import json as json_

    def allowed(values):
        data = one(render(values), 'ConfigMap', f'{RELEASE}-training')['data']
        return json_.loads(data['VIDEO_KD_ALLOWED_IMAGE_PREFIXES'])

    assert allowed(None) == [
        'ghcr.io/kubeflow-video-kd/video-kd:',
        'ghcr.io/kubeflow-video-kd/video-kd@',
    ]
    assert allowed({'pipeline': {'allowedImagePrefixes': ['r.example/ml/']}}) == ['r.example/ml/']


# --- releases side by side ------------------------------------------------------------

# Helm's longest release name (53), twice, differing only at the end: a cut name would collide
LONG_RELEASES = ('kd-' + 'x' * 49 + 'a', 'kd-' + 'x' * 49 + 'b')
SIDE_BY_SIDE = {
    'schedule': {'enabled': True},
    'persistence': {'enabled': True},
    'training': {'backend': 'trainjob'},
    'rbac': {'argoExecutor': True},
    'pipeline': {
        'params': {'teacher_url': 's3://kd/teachers/tsm_r50.pth', 'teacher_sha256': 'a' * 64}
    },
}


def object_names(objects: list[dict]) -> dict[tuple[str, str], dict]:
    named = {(o['kind'], o['metadata']['name']): o for o in objects}
    assert len(named) == len(objects), 'two objects of one kind and name in one release'
    return named


@pytest.mark.parametrize('releases', [LONG_RELEASES, ('video-kd', 'kd-prod')])
def test_two_releases_side_by_side_share_no_name_and_every_name_fits(releases):
    """Two releases in one namespace: no rendered object, pipeline or recurring run shares a
    name, every namespaced name is a 63-char DNS label (cluster-scoped: a 253-char subdomain),
    and every name the hook passes on is an object of its own release."""
    rendered = [render_as(SIDE_BY_SIDE, release, NAMESPACE) for release in releases]
    names = [object_names(objects) for objects in rendered]
    assert not names[0].keys() & names[1].keys()
    kfp_names = []
    for release, objects in zip(releases, rendered, strict=True):
        for obj in objects:
            name = obj['metadata']['name']
            limit = 253 if obj['kind'] in CLUSTER_SCOPED else 63
            assert len(name) <= limit and re.fullmatch(r'[a-z0-9]([-a-z0-9.]*[a-z0-9])?', name)
            assert obj['metadata']['labels']['app.kubernetes.io/instance'] == release
        spec = one(objects, 'Job')['spec']['template']['spec']
        (upload,) = spec['initContainers']
        (schedule,) = spec['containers']
        flags = dict(zip(upload['args'][1::2], upload['args'][2::2], strict=False))
        for flag, kind in (('--s3-config-map', 'ConfigMap'), ('--training-config-map', 'ConfigMap'),
                           ('--pvc', 'PersistentVolumeClaim')):  # fmt: skip
            one(objects, kind, flags[flag])
        training = one(objects, 'ConfigMap', flags['--training-config-map'])['data']
        assert training['VIDEO_KD_RELEASE'] == release
        one(objects, 'TrainingRuntime', training['VIDEO_KD_TRAINJOB_RUNTIME'])
        one(objects, 'ServiceAccount', training['VIDEO_KD_SERVICE_ACCOUNT'])
        args = schedule['args']
        assert args[args.index('--pipeline-name') + 1] == flags['--pipeline-name']
        kfp_names.append((flags['--pipeline-name'], args[args.index('--job-name') + 1]))
    assert kfp_names[0][0] != kfp_names[1][0] and kfp_names[0][1] != kfp_names[1][1]
    if releases == LONG_RELEASES:
        hook = [one(objects, 'Job')['metadata']['name'] for objects in rendered]
        assert all(len(n) == 63 for n in hook), hook  # cut, hashed, suffixed: still 63
    else:  # short names are kept as they were
        assert kfp_names[0] == ('video-kd-distillation', 'video-kd-distillation-video-kd')
        one(rendered[1], 'Job', 'kd-prod-video-kd-upload-pipeline')


def test_two_releases_hooks_upload_two_pipelines_and_schedule_two_recurring_runs():
    """Both releases' hook containers, their exact arguments, against one KFP API (single-user:
    shared pipelines): two pipelines, two recurring runs."""
    from kfp_server import FakeKFP

    from video_kd import cli

    hooks = []
    for release in LONG_RELEASES:
        spec = one(render_as(SIDE_BY_SIDE, release, NAMESPACE), 'Job')['spec']['template']['spec']
        hooks.append((spec['initContainers'][0], spec['containers'][0]))
    with FakeKFP(multi_user=False) as kfp:
        for containers in hooks:
            for container in containers:
                argv = [arg.replace('$(KFP_HOST)', kfp.url) for arg in container['args']]
                assert cli.main(argv) == 0, container['name']
        pipelines = {p['display_name']: p['pipeline_id'] for p in kfp.pipelines.values()}
        assert len(pipelines) == 2
        recurring = {r['display_name']: r['pipeline_version_reference']['pipeline_id']
                     for r in kfp.recurring_runs.values()}  # fmt: skip
    assert len(recurring) == 2 and set(recurring.values()) == set(pipelines.values())


# Multi-user Kubeflow: every pipeline of a profile runs as its default-editor, so two releases
# in one namespace both list it, and each release's policy matches the other's train step.
EDITOR = f'system:serviceaccount:{NAMESPACE}:default-editor'


def shared_policy(release: str, shared: list[str], backend: str) -> tuple[dict, dict]:
    """Release ``release``'s policy for ``backend``'s jobs, sharing default-editor with the
    releases ``shared``, and the job its train step builds."""
    values = {'rbac': {'extraServiceAccounts': ['default-editor'], 'sharedWithReleases': shared}}
    objects = render_as(values, release, NAMESPACE)
    (policy,) = [p for p in by_kind(objects, 'ValidatingAdmissionPolicy')
                 if p['metadata']['name'].endswith(f'-{NAMESPACE}-{backend}s')]  # fmt: skip
    return policy, built_job(objects, backend)


def not_its_release(release: str, label: str | None) -> str:
    """The message release ``release``'s policy refuses a job labelled ``label`` with."""
    return (
        f"release {release}: the step's ServiceAccounts may create and delete only jobs labelled "
        f'app.kubernetes.io/instance={release}, not one '
        + ('without that label' if label is None else
           f'labelled app.kubernetes.io/instance={label}: if release {label} shares them in this '
           f"namespace, add it to this release's rbac.sharedWithReleases "
           f"(and {release} to that release's)")
    )  # fmt: skip


@pytest.mark.parametrize('backend', ['pytorchjob', 'trainjob'])
def test_two_releases_sharing_default_editor_each_judge_their_own_jobs(backend):
    import copy

    a, job_a = shared_policy('video-kd', ['kd-prod'], backend)
    b, job_b = shared_policy('kd-prod', ['video-kd'], backend)
    assert job_a['metadata']['labels']['app.kubernetes.io/instance'] == 'video-kd'
    assert job_b['metadata']['labels']['app.kubernetes.io/instance'] == 'kd-prod'
    for own, other, job in ((a, b, job_a), (b, a, job_b)):
        assert admission(own, 'CREATE', job, user=EDITOR) == []
        assert admission(own, 'DELETE', None, job, user=EDITOR) == []
        # left to its own release's policy by the other
        assert admission(other, 'CREATE', job, user=EDITOR) is None
        assert admission(other, 'DELETE', None, job, user=EDITOR) is None
        # an update can move a job out of its release only into one whose policy judges it
        assert admission(own, 'UPDATE', job, job, user=EDITOR) == []
    # a job labelled video-kd that breaks video-kd's rules: refused by video-kd's policy
    bad = copy.deepcopy(job_a)
    pod_specs(bad)[0]['volumes'].append({'name': 's', 'secret': {'secretName': 'kfp-token'}})
    assert admission(a, 'CREATE', bad, user=EDITOR) == [
        "the training pods may mount only emptyDir, the chart's PVC, its ConfigMaps and its S3 Secret"
    ]
    assert admission(b, 'CREATE', bad, user=EDITOR) is None
    # kd-prod's job made to look like video-kd's: judged, and refused, by video-kd's rules
    disguised = copy.deepcopy(job_b)
    disguised['metadata']['labels']['app.kubernetes.io/instance'] = 'video-kd'
    assert "the training pods must run as the chart's training ServiceAccount" in admission(
        a, 'CREATE', disguised, user=EDITOR
    )
    # a release neither lists, or none: refused by both, naming the label
    for label in ('c', None):
        stray = copy.deepcopy(job_a)
        if label is None:
            del stray['metadata']['labels']['app.kubernetes.io/instance']
        else:
            stray['metadata']['labels']['app.kubernetes.io/instance'] = label
        for policy, release in ((a, 'video-kd'), (b, 'kd-prod')):
            for operation in ('CREATE', 'DELETE'):
                found = admission(policy, operation, None if operation == 'DELETE' else stray,
                                  stray, user=EDITOR)  # fmt: skip
                assert found and found[0] == not_its_release(release, label), (operation, found)
    # the chart's own ServiceAccount is never left to another release's policy (no other
    # release's policy matches it): a job it labels kd-prod is refused by video-kd's
    found = admission(a, 'CREATE', job_b, user=STEP_USER)
    assert found and found[0] == not_its_release('video-kd', 'kd-prod')


@pytest.mark.parametrize('backend', ['pytorchjob', 'trainjob'])
def test_without_shared_releases_another_releases_job_is_refused_with_the_way_out(backend):
    a, job_a = shared_policy('video-kd', [], backend)
    _, job_b = shared_policy('kd-prod', [], backend)
    assert len(a['spec']['matchConditions']) == 1  # nothing left to another policy
    assert admission(a, 'CREATE', job_a, user=EDITOR) == []
    found = admission(a, 'CREATE', job_b, user=EDITOR)
    assert found[0] == not_its_release('video-kd', 'kd-prod')
    assert admission(a, 'DELETE', None, job_b, user=EDITOR) == [
        not_its_release('video-kd', 'kd-prod')
    ]


@pytest.mark.parametrize(
    'rbac, what',
    [
        ({'extraServiceAccounts': ['default-editor'], 'sharedWithReleases': [RELEASE]},
         'rbac.sharedWithReleases lists this release, video-kd'),
        ({'sharedWithReleases': ['kd-prod']}, 'rbac.sharedWithReleases needs rbac.extraServiceAccounts'),
    ],
)  # fmt: skip
def test_shared_releases_that_would_leave_jobs_unjudged_are_refused(rbac, what):
    with pytest.raises(Exception, match=re.escape(what)):
        render({'rbac': rbac})
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema({'rbac': {'sharedWithReleases': ['Not_A_Release']}})


def test_notes_say_which_releases_jobs_the_shared_accounts_may_make():
    """NOTES names the label the shared accounts' jobs need, and warns of a listed release
    whose policy it cannot find (lookup: none under helm template, so always here)."""
    rbac = {'extraServiceAccounts': ['default-editor']}
    text = notes({'rbac': rbac}, NAMESPACE)
    assert (
        'admits jobs by default-editor only when labelled app.kubernetes.io/instance=video-kd:'
    ) in text
    assert 'must be listed in rbac.sharedWithReleases' in text
    assert 'WARNING: rbac.sharedWithReleases' not in text
    text = notes({'rbac': {**rbac, 'sharedWithReleases': ['kd-prod', 'kd-dev']}}, NAMESPACE)
    assert "leaves those labelled kd-prod, kd-dev to their release's policy" in text
    for release in ('kd-prod', 'kd-dev'):
        assert (
            f'WARNING: rbac.sharedWithReleases lists {release}, but no admission policy of '
            f'release {release} in namespace {NAMESPACE} matches\ndefault-editor'
        ) in text
    assert 'admits jobs by' not in notes(None, NAMESPACE)


def test_notes_find_a_listed_releases_policy_that_matches_the_shared_accounts(tmp_path):
    """The found path of NOTES' lookup (offline rendering finds nothing): the chart copied
    with the lookup's answer in its place, the cluster's policies as the API lists them."""
    import shutil

    def policies(release: str, namespace: str, accounts: list[str]) -> list[dict]:
        rbac = {'extraServiceAccounts': accounts} if accounts else {}
        return by_kind(render_as({'rbac': rbac}, release, namespace), 'ValidatingAdmissionPolicy')

    cluster = [
        *policies('kd-prod', NAMESPACE, ['default-editor']),  # matches: no warning
        *policies('kd-dev', NAMESPACE, []),  # does not match default-editor
        *policies('kd-other', 'elsewhere', ['default-editor']),  # another namespace's
    ]
    chart = tmp_path / 'video-kd'
    shutil.copytree(CHART, chart)
    notes_txt = chart / 'templates' / 'NOTES.txt'
    call = '(lookup "admissionregistration.k8s.io/v1" "ValidatingAdmissionPolicy" "" "")'
    assert call in notes_txt.read_text()
    answer = '(`' + json.dumps({'items': cluster}) + '` | fromJson)'
    notes_txt.write_text(notes_txt.read_text().replace(call, answer))
    values = {'rbac': {'extraServiceAccounts': ['default-editor'],
                       'sharedWithReleases': ['kd-prod', 'kd-dev', 'kd-other']}}  # fmt: skip
    with helm.Chart.load(str(chart)) as loaded:
        manifests = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    (text,) = [text for path, text in manifests.items() if path.endswith('NOTES.txt')]
    warned = set(re.findall(r'WARNING: rbac.sharedWithReleases lists ([-a-z]+)', text))
    assert warned == {'kd-dev', 'kd-other'}


# --- the runs' ServiceAccount: what KFP's driver and launcher and Argo's executor call ------

KFP_RUN_CALLS = yaml.safe_load((ROOT / 'tests' / 'data' / 'kfp-run-sa-api-calls.yaml').read_text())


def allows(roles: list[dict], verb: str, group: str, resource: str, name: str | None) -> bool:
    """Whether one of the Roles allows the request, as RBAC decides it (a rule with
    resourceNames allows only a request naming one of them)."""
    return any(
        verb in rule['verbs']
        and group in rule['apiGroups']
        and resource in rule['resources']
        and (not rule.get('resourceNames') or name in rule['resourceNames'])
        for role in roles
        for rule in role['rules']
    )


def roles_of(objects: list[dict], account: str) -> list[dict]:
    bound = {
        b['roleRef']['name']
        for b in by_kind(objects, 'RoleBinding')
        if {'kind': 'ServiceAccount', 'name': account, 'namespace': NAMESPACE} in b['subjects']
    }
    return [r for r in by_kind(objects, 'Role') if r['metadata']['name'] in bound]


def test_the_kfp_run_calls_are_read_at_the_minimum_kfp_version():
    """The list is read at the oldest KFP the chart and docs claim, and at the first that runs
    a recurring run as the account it names; each call cites a file:line at those tags."""
    minimum = re.search(
        r'backend \*\*(\d+\.\d+\.\d+) or newer\*\*', (ROOT / 'docs' / 'cluster.md').read_text()
    )
    assert minimum, 'docs/cluster.md names the minimum KFP backend'
    chart = yaml.safe_load((CHART / 'Chart.yaml').read_text())
    assert f'Kubeflow Pipelines >= {minimum[1]}' in chart['annotations']['video-kd/requires']
    tags = {**KFP_RUN_CALLS['sources']['kfp']['tags'], **KFP_RUN_CALLS['sources']['argo']['tags']}
    assert minimum[1] in tags and '2.17.0' in tags
    for call in KFP_RUN_CALLS['calls']:
        for source in call['source']:
            tag, where = source.split()[:2]
            assert tag in tags and re.fullmatch(r'[\w/.-]+\.(go|md):\d+(-\d+)?', where), source


def test_the_runs_service_account_may_make_exactly_the_calls_kfp_and_our_steps_make():
    """Scheduled runs as the chart's ServiceAccount: its Roles allow every call KFP's driver and
    launcher and Argo's executor make (tests/data/kfp-run-sa-api-calls.yaml), and nothing
    beyond those and what our own steps need; the calls left out are ones the compiled
    pipeline never reaches."""
    objects = render({'schedule': {'enabled': True}})
    roles = roles_of(objects, RELEASE)
    ir = (ROOT / 'pipelines' / 'kd_pipeline.yaml').read_text()
    needed = []
    for call in KFP_RUN_CALLS['calls']:
        request = (call['verb'], call['group'], call['resource'], call['name'])
        if call['needed']:
            assert allows(roles, *request), f'the runs cannot {request}'
            needed.append(request)
        else:  # reached only by what the compiled pipeline does not hold
            assert not any(text in ir for text in call.get('unless_ir_contains', [])), request
    ours = EXPECTED_GRANTS | KFP_API_GRANTS
    for role in roles:
        for rule in role['rules']:
            for group in rule['apiGroups']:
                for resource in rule['resources']:
                    for verb in rule['verbs']:
                        names = rule.get('resourceNames') or [None]
                        for name in names:
                            justified = (group, resource, verb) in ours or any(
                                (verb, group, resource) == n[:3] and n[3] in (None, name)
                                for n in needed
                            )
                            assert justified, (
                                f'{role["metadata"]["name"]}: {verb} {group}/{resource} {name or ""}'
                            )
                            if name is None and (group, resource, verb) not in ours:
                                # a call on one fixed object is granted on that object only
                                assert all(
                                    n[3] is None for n in needed if n[:3] == (verb, group, resource)
                                )
    # the Secret the launcher reads is a value (kfp-launcher's providers may name others)
    other = render({'schedule': {'enabled': True}, 'rbac': {'kfpArtifactSecrets': ['minio-kd']}})
    assert allows(roles_of(other, RELEASE), 'get', '', 'secrets', 'minio-kd')
    assert not allows(roles_of(other, RELEASE), 'get', '', 'secrets', 'mlpipeline-minio-artifact')
    assert not allows(roles, 'get', '', 'secrets', 'video-kd-s3-credentials'), 'ours: env only'
    # runs as another account (KFP's own): the chart grants nothing for them
    elsewhere = render({'schedule': {'enabled': True, 'serviceAccount': 'default-editor'}})
    assert not allows(roles_of(elsewhere, RELEASE), 'get', '', 'configmaps', 'kfp-launcher')


def test_step_pod_requests_reach_the_pipeline_from_the_chart():
    """pipeline.params.step_cpu_request / step_memory_request become the uploaded pipeline's
    defaults (and the recurring run's arguments); empty: the compiled defaults (1, 4Gi),
    tests/test_pipeline.py."""

    def params(values):
        _, spec = pod_spec(render(values))
        (container,) = spec['containers']
        args = container['args']
        return dict(v.split('=', 1) for f, v in itertools.pairwise(args) if f == '--param')

    assert not {'step_cpu_request', 'step_memory_request'} & params(None).keys()
    sized = params(
        {'pipeline': {'params': {'step_cpu_request': '2', 'step_memory_request': '8Gi'}}}
    )
    assert sized['step_cpu_request'] == '2' and sized['step_memory_request'] == '8Gi'
