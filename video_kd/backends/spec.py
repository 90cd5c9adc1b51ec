"""One description of a training job, whatever launches it (PyTorchJob, TrainJob, torchrun).

The train step fills a ``TrainingJobSpec`` (``spec_from_env`` reads the
chart's training ConfigMap from the step pod's environment); each backend
turns it into its own object.  Names follow what the operators derive from
the job name, so ``job_name`` is short: see its docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from video_kd.core.errors import UserError

GPU_RESOURCE = 'nvidia.com/gpu'
DEFAULT_BACKOFF_PER_NODE = 3
DEFAULT_PVC_MOUNT = '/cache'
DEFAULT_TRAINJOB_RUNTIME = 'torch-distributed'
RUNTIME_KINDS = ('ClusterTrainingRuntime', 'TrainingRuntime')
DEFAULT_S3_SECRET = 'video-kd-s3-credentials'
# What a training pod asks for when the chart sets nothing (as before the backends existed):
# a memory limit equal to the request, so a leak is an OOM kill of the pod, not of the node.
DEFAULT_REQUESTS = {'cpu': '2', 'memory': '8Gi'}
# How long a finished job stays when its step did not delete it (the step pod lost): a day to
# read its pods' state and logs, then its pods go. Its owner, the run's Argo Workflow, may stay
# a week (KFP 2.15 persistence agent's ttlSecondsAfterWorkflowFinish: 604800 s by default).
DEFAULT_TTL_AFTER_FINISHED_S = 24 * 3600
DEFAULT_MAX_TRAINING_HOURS = 168.0  # a week: the longest a run's training job may be active
# Labels and annotations every job carries; the full run id is always in the annotation.
RUN_ID_LABEL = 'video-kd/run-id'
RUN_ID_ANNOTATION = 'video-kd/run-id'
SPEC_HASH_ANNOTATION = 'video-kd/spec-sha256'
PART_OF = {'app.kubernetes.io/part-of': 'video-kd', 'app.kubernetes.io/managed-by': 'video-kd'}
# The Helm release whose step made the job (VIDEO_KD_RELEASE, from the chart's training
# ConfigMap): two releases in one namespace may name the same job (an explicit run id reused),
# and a step adopts or deletes only a job of its own release.
RELEASE_LABEL = 'app.kubernetes.io/instance'
KUEUE_QUEUE_LABEL = 'kueue.x-k8s.io/queue-name'
KUEUE_PRIORITY_LABEL = 'kueue.x-k8s.io/priority-class'
ISTIO_INJECT = 'sidecar.istio.io/inject'
# Env vars both operators set in every training pod (torchrun reads the PET_* ones).
OPERATOR_ENV = (
    'MASTER_ADDR',
    'MASTER_PORT',
    'PET_MASTER_ADDR',
    'PET_MASTER_PORT',
    'WORLD_SIZE',
    'RANK',
    'PET_NODE_RANK',
    'PET_NNODES',
    'PET_NPROC_PER_NODE',
    'PYTHONUNBUFFERED',
)
# Non-secret S3 settings copied from the step pod into the training pods.
S3_PLAIN_ENV = ('S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL', 'AWS_DEFAULT_REGION', 'S3_BUCKET')
S3_SECRET_ENV = ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN')
_LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z')
_DNS1123 = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z')  # a namespace name
# A job name is at most this long, so that the longest derived name fits 63 characters:
# '<job>-worker-99999' (PyTorchJob Service) and '<job>-node-0-99999' (TrainJob pod hostname).
JOB_NAME_MAX = 32


class JobSpecError(UserError):
    """A training job setting is invalid (one line, exit status 2)."""


def job_name(run_id: str) -> str:
    """A short DNS-1035 name for a run's training job, the same for every attempt of the run.

    KFP run ids are 36-char UUIDs; the operators append to the job name
    (Training Operator: Services and pods ``<job>-master-0`` /
    ``<job>-worker-N``; Trainer v2: JobSet ``<job>`` -> Job ``<job>-node-0``
    -> pods with hostname ``<job>-node-0-N``), and each of those must be a
    63-char DNS label.  So the name is ``vkd-`` + the run id's first 8
    letters/digits (what a user recognises) + 8 hex of its SHA-256 (unique
    for runs sharing that prefix): at most 21 characters.  The full run id
    is in the job's annotations (and label, when it is a valid label value).
    """
    if not run_id:
        raise JobSpecError('a training job needs a run id')
    readable = re.sub(r'[^a-z0-9]+', '', run_id.lower())[:8]
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f'vkd-{readable}-{digest}' if readable else f'vkd-{digest}'


@dataclass(frozen=True)
class SecretEnv:
    """An env var taken from a key of a Kubernetes Secret."""

    name: str
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything a backend needs to run one run's distributed training."""

    run_id: str
    namespace: str
    image: str
    command: tuple[str, ...]  # what follows `torchrun`: ('-m', 'video_kd.distill.train_pod', ...)
    num_nodes: int = 1
    gpus_per_worker: int = 0
    nproc_per_node: int | None = None  # None: one process per GPU, else 1
    gpu_resource: str = GPU_RESOURCE
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: tuple[SecretEnv, ...] = ()
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    pvc: str = ''
    pvc_mount: str = DEFAULT_PVC_MOUNT
    service_account: str = ''
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    queue: str = ''
    priority_class: str = ''
    backoff_limit_per_node: int = DEFAULT_BACKOFF_PER_NODE
    istio_sidecar: bool = False
    trainjob_runtime: str = DEFAULT_TRAINJOB_RUNTIME
    trainjob_runtime_kind: str = RUNTIME_KINDS[0]
    # The restarts the TrainJob's runtime allows, when known (the chart's TrainingRuntime):
    # a TrainJob cannot ask for its own, so backoff_limit does not reach it.
    trainjob_max_restarts: int | None = None
    # The job's activeDeadlineSeconds (None: none) and its ttlSecondsAfterFinished.
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int = DEFAULT_TTL_AFTER_FINISHED_S
    # The object Kubernetes garbage-collects the job with (an ownerReference as the API
    # takes it, see video_kd.backends.owner); None: no owner (a run from outside KFP).
    owner: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise JobSpecError('; '.join(problems))

    @property
    def name(self) -> str:
        return job_name(self.run_id)

    @property
    def procs_per_node(self) -> int:
        """Processes per node: as given, else one per GPU, else 1."""
        return self.nproc_per_node or max(1, self.gpus_per_worker)

    @property
    def backoff_limit(self) -> int:
        """Restarts the whole job may use: per node x nodes, since with static torchrun
        one node's failure restarts every peer (restarts are counted over all pods).
        A PyTorchJob's backoffLimit, which the train step enforces (the operator does not
        with restartPolicy ExitCode: kubeflow/trainer#2045); a TrainJob has no such field
        (its runtime decides)."""
        return self.backoff_limit_per_node * self.num_nodes

    def job_labels(self) -> dict[str, str]:
        labels = {**PART_OF, **self.labels}
        if _LABEL_VALUE.match(self.run_id) and len(self.run_id) <= 63:
            labels[RUN_ID_LABEL] = self.run_id
        if self.queue:
            labels[KUEUE_QUEUE_LABEL] = self.queue
        return labels

    def job_annotations(self) -> dict[str, str]:
        return {
            **self.annotations,
            RUN_ID_ANNOTATION: self.run_id,
            SPEC_HASH_ANNOTATION: self.digest(),
        }

    def pod_annotations(self) -> dict[str, str]:
        """Istio's sidecar would keep a finished pod running and intercept the rendezvous."""
        return {} if self.istio_sidecar else {ISTIO_INJECT: 'false'}

    def limits(self) -> dict[str, str]:
        """The chart's limits with the GPUs this run asks for: ``gpus_per_worker`` wins over
        any GPU count the chart's overrides carry (0: none at all)."""
        limits = self._without_gpus('limits')
        if self.gpus_per_worker:
            limits[self.gpu_resource] = str(self.gpus_per_worker)
        return limits

    def requests(self) -> dict[str, str]:
        requests = self._without_gpus('requests')
        if self.gpus_per_worker and self.gpu_resource in (self.resources.get('requests') or {}):
            # an extended resource's request must equal its limit
            requests[self.gpu_resource] = str(self.gpus_per_worker)
        return requests

    def _without_gpus(self, kind: str) -> dict[str, str]:
        given = self.resources.get(kind) or {}
        return {k: str(v) for k, v in given.items() if k != self.gpu_resource}

    def owner_references(self) -> list[dict[str, Any]] | None:
        return [dict(self.owner)] if self.owner else None

    def digest(self) -> str:
        """What the job does, hashed: a re-run adopts a running job only if this matches."""
        body = {
            'image': self.image,
            'command': list(self.command),
            'nodes': self.num_nodes,
            'gpus': self.gpus_per_worker,
            'nproc': self.procs_per_node,
            'env': dict(sorted(self.env.items())),
            'deadline_s': self.active_deadline_seconds,  # a re-run with another budget replaces
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _problems(spec: TrainingJobSpec) -> list[str]:
    problems = []
    if spec.num_nodes < 1:
        problems.append(f'num_nodes must be >= 1, got {spec.num_nodes}')
    if spec.gpus_per_worker < 0:
        problems.append(f'gpus_per_worker must be >= 0, got {spec.gpus_per_worker}')
    if spec.nproc_per_node is not None and spec.nproc_per_node < 1:
        problems.append(f'nproc_per_node must be >= 1, got {spec.nproc_per_node}')
    if spec.backoff_limit_per_node < 0:
        problems.append(f'backoff_limit_per_node must be >= 0, got {spec.backoff_limit_per_node}')
    if len(spec.namespace) > 63 or not _DNS1123.match(spec.namespace):
        problems.append(f'namespace {spec.namespace!r} is not a Kubernetes namespace name')
    if not spec.image:
        problems.append('the training image is empty')
    if set(S3_SECRET_ENV) & spec.env.keys():
        problems.append(
            f'{sorted(set(S3_SECRET_ENV) & spec.env.keys())} must not be literal env values: '
            'they come from the Kubernetes Secret'
        )
    if set(OPERATOR_ENV) & spec.env.keys():
        problems.append(
            f'{sorted(set(OPERATOR_ENV) & spec.env.keys())} are set by the operator in every '
            'training pod and must not be set by the job'
        )
    if spec.trainjob_runtime_kind not in RUNTIME_KINDS:
        problems.append(
            f'TrainJob runtime kind {spec.trainjob_runtime_kind!r}: use one of {RUNTIME_KINDS}'
        )
    if spec.active_deadline_seconds is not None and spec.active_deadline_seconds < 1:
        problems.append(f'the active deadline must be >= 1 s, got {spec.active_deadline_seconds}')
    if spec.ttl_seconds_after_finished < 0:
        problems.append(
            f'ttlSecondsAfterFinished must be >= 0, got {spec.ttl_seconds_after_finished}'
        )
    if spec.pvc and not spec.pvc_mount.startswith('/'):
        problems.append(f'pvc mount path must be absolute, got {spec.pvc_mount!r}')
    return problems


def s3_secret_env(
    secret: str, access_key_id_key: str, secret_access_key_key: str, session_token_key: str = ''
) -> tuple[SecretEnv, ...]:
    """The S3 credentials as references to the Secret, under the keys the chart names."""
    refs = [
        SecretEnv('AWS_ACCESS_KEY_ID', secret, access_key_id_key),
        SecretEnv('AWS_SECRET_ACCESS_KEY', secret, secret_access_key_key),
    ]
    refs.append(
        SecretEnv('AWS_SESSION_TOKEN', secret, session_token_key or 'AWS_SESSION_TOKEN', True)
    )
    return tuple(refs)


def spec_from_env(
    *,
    run_id: str,
    image: str,
    command: list[str] | tuple[str, ...],
    num_nodes: int,
    gpus_per_worker: int,
    nproc_per_node: int | None = None,
    backoff_limit_per_node: int | None = None,
    namespace: str = '',
    env: Mapping[str, str] | None = None,
    max_training_hours: float | None = None,
    owner: Mapping[str, Any] | None = None,
) -> TrainingJobSpec:
    """A spec from the step pod's environment: the chart's training and S3 ConfigMaps.

    Keys read (all optional): VIDEO_KD_NAMESPACE, VIDEO_KD_RELEASE (the job's release
    label), VIDEO_KD_SERVICE_ACCOUNT (the training pods'), VIDEO_KD_WORKER_POD_OVERRIDES (JSON: resources,
    nodeSelector, tolerations, affinity), VIDEO_KD_GPU_RESOURCE,
    VIDEO_KD_KUEUE_QUEUE, VIDEO_KD_PRIORITY_CLASS, VIDEO_KD_PVC,
    VIDEO_KD_PVC_MOUNT, VIDEO_KD_BACKOFF_LIMIT_PER_NODE, VIDEO_KD_ISTIO_SIDECAR,
    VIDEO_KD_TRAINJOB_RUNTIME, VIDEO_KD_TRAINJOB_RUNTIME_KIND,
    VIDEO_KD_TRAINJOB_MAX_RESTARTS (the chart's TrainingRuntime's), S3_CREDENTIALS_SECRET,
    S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY, S3_SESSION_TOKEN_KEY and the plain S3
    settings (S3_PLAIN_ENV).  Arguments win over the environment.
    ``max_training_hours``: the job's activeDeadlineSeconds (None: no deadline);
    ``owner``: its ownerReference (``video_kd.backends.owner.step_owner``).
    """
    env = os.environ if env is None else env
    overrides = _json_env(env, 'VIDEO_KD_WORKER_POD_OVERRIDES')
    backoff = backoff_limit_per_node
    if backoff is None:
        backoff = _int_env(env, 'VIDEO_KD_BACKOFF_LIMIT_PER_NODE', DEFAULT_BACKOFF_PER_NODE)
    plain = {k: env[k] for k in S3_PLAIN_ENV if env.get(k)}
    return TrainingJobSpec(
        run_id=run_id,
        namespace=namespace or job_namespace(env),
        image=image,
        command=tuple(command),
        num_nodes=num_nodes,
        gpus_per_worker=gpus_per_worker,
        nproc_per_node=nproc_per_node or None,
        gpu_resource=env.get('VIDEO_KD_GPU_RESOURCE') or GPU_RESOURCE,
        env={**plain, 'VIDEO_KD_RUN_ID': run_id},
        secret_env=s3_secret_env(
            env.get('S3_CREDENTIALS_SECRET') or DEFAULT_S3_SECRET,
            env.get('S3_ACCESS_KEY_ID_KEY') or 'AWS_ACCESS_KEY_ID',
            env.get('S3_SECRET_ACCESS_KEY_KEY') or 'AWS_SECRET_ACCESS_KEY',
            env.get('S3_SESSION_TOKEN_KEY') or '',
        ),
        resources=_with_defaults(overrides.get('resources') or {}),
        node_selector=overrides.get('nodeSelector') or {},
        tolerations=tuple(overrides.get('tolerations') or ()),
        affinity=overrides.get('affinity') or {},
        pvc=env.get('VIDEO_KD_PVC') or '',
        pvc_mount=env.get('VIDEO_KD_PVC_MOUNT') or DEFAULT_PVC_MOUNT,
        service_account=env.get('VIDEO_KD_SERVICE_ACCOUNT') or '',
        labels={RELEASE_LABEL: env['VIDEO_KD_RELEASE']} if env.get('VIDEO_KD_RELEASE') else {},
        queue=env.get('VIDEO_KD_KUEUE_QUEUE') or '',
        priority_class=env.get('VIDEO_KD_PRIORITY_CLASS') or '',
        backoff_limit_per_node=backoff,
        istio_sidecar=(env.get('VIDEO_KD_ISTIO_SIDECAR') or 'false').lower() == 'true',
        trainjob_runtime=env.get('VIDEO_KD_TRAINJOB_RUNTIME') or DEFAULT_TRAINJOB_RUNTIME,
        trainjob_runtime_kind=env.get('VIDEO_KD_TRAINJOB_RUNTIME_KIND') or RUNTIME_KINDS[0],
        trainjob_max_restarts=_int_env(env, 'VIDEO_KD_TRAINJOB_MAX_RESTARTS', None),
        active_deadline_seconds=deadline_seconds(max_training_hours),
        owner=owner,
    )


def deadline_seconds(max_training_hours: float | None) -> int | None:
    """The job's activeDeadlineSeconds for a budget in hours (at least 1 s); None: none."""
    if max_training_hours is None:
        return None
    if not 0 < max_training_hours < float('inf'):  # NaN too
        raise JobSpecError(f'max_training_hours must be > 0, got {max_training_hours}')
    return max(1, round(max_training_hours * 3600))


def _with_defaults(resources: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    requests = {**DEFAULT_REQUESTS, **(resources.get('requests') or {})}
    limits = {'memory': requests['memory'], **(resources.get('limits') or {})}
    return {'requests': requests, 'limits': limits}


def job_namespace(env: Mapping[str, str] | None = None) -> str:
    """Where the training job goes: the chart's VIDEO_KD_NAMESPACE, else the step pod's."""
    env = os.environ if env is None else env
    return env.get('VIDEO_KD_NAMESPACE') or current_namespace()


def current_namespace() -> str:
    """The step pod's namespace (from its ServiceAccount mount), else 'kubeflow'."""
    path = '/var/run/secrets/kubernetes.io/serviceaccount/namespace'
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    return 'kubeflow'


def _json_env(env: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(env.get(key) or '{}')
    except json.JSONDecodeError as exc:
        raise JobSpecError(f'{key} is not valid JSON: {exc}') from exc
    if not isinstance(value, dict):
        raise JobSpecError(f'{key} must be a JSON object, got {type(value).__name__}')
    return value


@overload
def _int_env(env: Mapping[str, str], key: str, default: int) -> int: ...
@overload
def _int_env(env: Mapping[str, str], key: str, default: None) -> int | None: ...
def _int_env(env: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = env.get(key) or ''
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise JobSpecError(f'{key} must be an integer, got {raw!r}') from exc
