"""Distributed training as a Kubeflow PyTorchJob (kubeflow.org/v1), or locally with torchrun.

The Training Operator starts one pod per replica (one Master, N-1 Workers)
and gives each pod the rendezvous settings as env vars (see
``local_pod_env``).  The pod runs ``torchrun`` with no flags: torchrun reads
every flag it lacks from ``PET_<FLAG>`` (``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``), which is exactly what the operator sets.  Locally,
``run_local`` passes the same values as flags.  Either way the training
entry point is the same ``command`` list, e.g. ``['-m', 'video_kd.train',
CONFIG]``, so what is tested on a laptop is what runs in the cluster.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import kubernetes_validate
from kubeflow.training import TrainingClient, models
from kubeflow.training.api_client import ApiClient
from kubeflow.training.constants import constants as kf
from kubeflow.training.utils.utils import FakeResponse
from kubernetes.utils import parse_quantity

log = logging.getLogger(__name__)

API_VERSION = kf.API_VERSION  # kubeflow.org/v1
KIND = kf.PYTORCHJOB_KIND
CONTAINER_NAME = kf.PYTORCHJOB_CONTAINER  # the operator finds the port and logs by this name
MASTER, WORKER = kf.REPLICA_TYPE_MASTER, kf.REPLICA_TYPE_WORKER
PORT_NAME = 'pytorchjob-port'  # the operator reads MASTER_PORT from the port of this name
DEFAULT_PORT = 23456
GPU_RESOURCE = 'nvidia.com/gpu'
# Schema version of the Kubernetes API the pod templates are checked against.
K8S_VERSION = '1.30'
S3_SECRET_KEYS = ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')
OPTIONAL_S3_SECRET_KEYS = ('AWS_SESSION_TOKEN',)
# Env vars the operator sets in every pod; a template must not set them itself.
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
RESTART_POLICIES = ('Always', 'OnFailure', 'Never', 'ExitCode')
CLEAN_POD_POLICIES = ('None', 'Running', 'All')
_DNS1035 = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')


class PyTorchJobFailed(RuntimeError):
    """The PyTorchJob reached the Failed condition."""

    def __init__(self, name: str, reason: str | None, message: str | None):
        super().__init__(
            f'PyTorchJob {name} failed: {reason or "no reason given"}: {message or "no message"}'
        )
        self.name, self.reason, self.message = name, reason, message


def build_pytorchjob(
    name: str,
    namespace: str,
    image: str,
    command: list[str],
    num_workers: int,
    nproc_per_node: int = 1,
    gpus_per_worker: int = 0,
    cpu: str = '2',
    memory: str = '8Gi',
    env: dict[str, str] | None = None,
    s3_secret_name: str | None = None,
    service_account: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
    labels: dict[str, str] | None = None,
    backoff_limit: int = 3,
    clean_pod_policy: str = 'None',
) -> dict[str, Any]:
    """A PyTorchJob manifest (a plain dict, ready for ``validate_pytorchjob``).

    ``num_workers`` counts every replica, Master included, so 1 means one
    pod.  ``command`` is what follows ``torchrun`` (script or ``-m module``
    and its arguments).  S3 credentials are referenced from the Secret
    ``s3_secret_name``; literal credentials in ``env`` are refused so that
    they never land in a manifest.
    """
    if num_workers < 1 or nproc_per_node < 1 or gpus_per_worker < 0:
        raise ValueError(
            f'need num_workers >= 1, nproc_per_node >= 1, gpus_per_worker >= 0; got '
            f'{num_workers}, {nproc_per_node}, {gpus_per_worker}'
        )
    template = _pod_template(
        image,
        command,
        gpus_per_worker,
        cpu,
        memory,
        env or {},
        s3_secret_name,
        service_account,
        node_selector,
        tolerations,
        labels,
    )
    replicas = {MASTER: _replica(1, template)}
    if num_workers > 1:
        replicas[WORKER] = _replica(num_workers - 1, template)
    metadata = {'name': name, 'namespace': namespace}
    if labels:
        metadata['labels'] = dict(labels)
    return {
        'apiVersion': API_VERSION,
        'kind': KIND,
        'metadata': metadata,
        'spec': {
            'nprocPerNode': str(nproc_per_node),  # a string in the CRD: it also takes 'auto'
            'runPolicy': {'cleanPodPolicy': clean_pod_policy, 'backoffLimit': backoff_limit},
            'pytorchReplicaSpecs': replicas,
        },
    }


def _replica(count: int, template: dict) -> dict:
    # A copy each, so that editing one replica's template never changes the other's.
    return {'replicas': count, 'restartPolicy': 'OnFailure', 'template': copy.deepcopy(template)}


def _pod_template(
    image: str,
    command: list[str],
    gpus: int,
    cpu: str,
    memory: str,
    env: dict[str, str],
    s3_secret_name: str | None,
    service_account: str | None,
    node_selector: dict[str, str] | None,
    tolerations: list[dict] | None,
    labels: dict[str, str] | None,
) -> dict:
    container = {
        'name': CONTAINER_NAME,
        'image': image,
        'command': ['torchrun'],
        'args': list(command),
        'env': _container_env(env, s3_secret_name),
        'ports': [{'name': PORT_NAME, 'containerPort': DEFAULT_PORT, 'protocol': 'TCP'}],
        'resources': {
            'requests': {'cpu': cpu, 'memory': memory},
            'limits': {'memory': memory, **({GPU_RESOURCE: str(gpus)} if gpus else {})},
        },
        # DataLoader workers pass batches through /dev/shm; a pod's default is 64 MiB.
        'volumeMounts': [{'name': 'dshm', 'mountPath': '/dev/shm'}],
    }
    spec: dict[str, Any] = {
        'containers': [container],
        'volumes': [{'name': 'dshm', 'emptyDir': {'medium': 'Memory'}}],
    }
    if service_account:
        spec['serviceAccountName'] = service_account
    if node_selector:
        spec['nodeSelector'] = dict(node_selector)
    if tolerations:
        spec['tolerations'] = list(tolerations)
    template: dict[str, Any] = {'spec': spec}
    if labels:
        template['metadata'] = {'labels': dict(labels)}
    return template


def _container_env(env: dict[str, str], s3_secret_name: str | None) -> list[dict]:
    """Plain env vars, then S3 credentials as references to the Secret."""
    secret_names = set(S3_SECRET_KEYS + OPTIONAL_S3_SECRET_KEYS)
    if secret_names & env.keys():
        raise ValueError(
            f'{sorted(secret_names & env.keys())} must not be literal env values: '
            'pass s3_secret_name so they come from the Kubernetes Secret'
        )
    if set(OPERATOR_ENV) & env.keys():
        raise ValueError(
            f'{sorted(set(OPERATOR_ENV) & env.keys())} are set by the Training '
            'Operator in every pod and must not be set in the template'
        )
    entries = [{'name': key, 'value': str(value)} for key, value in sorted(env.items())]
    if s3_secret_name:
        entries += [_secret_ref(key, s3_secret_name, optional=False) for key in S3_SECRET_KEYS]
        entries += [
            _secret_ref(key, s3_secret_name, optional=True) for key in OPTIONAL_S3_SECRET_KEYS
        ]
    return entries


def _secret_ref(key: str, secret: str, optional: bool) -> dict:
    return {
        'name': key,
        'valueFrom': {'secretKeyRef': {'name': secret, 'key': key, 'optional': optional}},
    }


def validate_pytorchjob(manifest: dict[str, Any]) -> models.KubeflowOrgV1PyTorchJob:
    """Check a manifest before it reaches the cluster; return it as the SDK's model.

    Three layers, each catching what the others miss: the kubeflow-training
    SDK models (required fields, types), the rules the operator's admission
    webhook enforces (replica counts, the ``pytorch`` container, images),
    and the Kubernetes JSON schema for each replica's pod template (unknown
    or misspelled fields, wrong types).  Raises ``ValueError`` listing every
    problem found.
    """
    problems = _check_top_level(manifest)
    job = None
    try:
        job = ApiClient().deserialize(FakeResponse(manifest), kf.PYTORCHJOB_MODEL)
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(f'does not fit the kubeflow.training {kf.PYTORCHJOB_MODEL} model: {exc}')
    spec = manifest.get('spec') if isinstance(manifest.get('spec'), dict) else {}
    problems += _check_run_policy(spec.get('runPolicy'))
    problems += _check_nproc(spec.get('nprocPerNode'))
    replicas = spec.get('pytorchReplicaSpecs')
    if not isinstance(replicas, dict) or not replicas:
        problems.append('spec.pytorchReplicaSpecs: required, a map of Master/Worker replicas')
        replicas = {}
    for rtype, rspec in replicas.items():
        problems += _check_replica(manifest.get('metadata', {}).get('name', 'job'), rtype, rspec)
    if problems:
        name = manifest.get('metadata', {}).get('name', '<unnamed>')
        raise ValueError(f'invalid PyTorchJob {name}:\n' + '\n'.join(f'  - {p}' for p in problems))
    return job


def _check_top_level(manifest: dict[str, Any]) -> list[str]:
    problems = []
    if manifest.get('apiVersion') != API_VERSION:
        problems.append(f'apiVersion: must be {API_VERSION}, got {manifest.get("apiVersion")!r}')
    if manifest.get('kind') != KIND:
        problems.append(f'kind: must be {KIND}, got {manifest.get("kind")!r}')
    name = (manifest.get('metadata') or {}).get('name')
    if not isinstance(name, str) or len(name) > 63 or not _DNS1035.match(name):
        problems.append(
            f'metadata.name: {name!r} must be a DNS-1035 label '
            '(lowercase letters, digits and "-", starting with a letter, <= 63 chars)'
        )
    return problems


def _check_run_policy(policy: Any) -> list[str]:
    if not isinstance(policy, dict):
        return ['spec.runPolicy: required']
    problems = []
    if policy.get('cleanPodPolicy', 'None') not in CLEAN_POD_POLICIES:
        problems.append(
            f'spec.runPolicy.cleanPodPolicy: must be one of {CLEAN_POD_POLICIES}, '
            f'got {policy["cleanPodPolicy"]!r}'
        )
    backoff = policy.get('backoffLimit', 0)
    if not isinstance(backoff, int) or backoff < 0:
        problems.append(f'spec.runPolicy.backoffLimit: must be an integer >= 0, got {backoff!r}')
    return problems


def _check_nproc(nproc: Any) -> list[str]:
    if nproc is None or nproc in ('auto', 'cpu', 'gpu'):
        return []
    if isinstance(nproc, str) and nproc.isdigit() and int(nproc) >= 1:
        return []
    return [
        f'spec.nprocPerNode: must be "auto", "cpu", "gpu" or a positive integer as a '
        f'string, got {nproc!r}'
    ]


def _check_replica(job_name: str, rtype: str, rspec: Any) -> list[str]:
    """The operator webhook's rules for one replica, then the pod template's schema."""
    path = f'spec.pytorchReplicaSpecs.{rtype}'
    if rtype not in (MASTER, WORKER):
        return [f'{path}: replica type must be {MASTER} or {WORKER}']
    if not isinstance(rspec, dict):
        return [f'{path}: must be a mapping']
    problems = []
    count = rspec.get('replicas')
    if rtype == MASTER and count != 1:
        problems.append(f'{path}.replicas: must be 1, got {count!r}')
    if rtype == WORKER and (not isinstance(count, int) or count < 1):
        problems.append(f'{path}.replicas: must be an integer >= 1, got {count!r}')
    if rspec.get('restartPolicy', 'Never') not in RESTART_POLICIES:
        problems.append(
            f'{path}.restartPolicy: must be one of {RESTART_POLICIES}, '
            f'got {rspec["restartPolicy"]!r}'
        )
    template = rspec.get('template')
    containers = ((template or {}).get('spec') or {}).get('containers') or []
    if not containers:
        return [*problems, f'{path}.template.spec.containers: required']
    problems += _check_containers(f'{path}.template.spec.containers', containers)
    return problems + _check_pod_schema(f'{job_name}-{rtype.lower()}', path, template)


def _check_containers(path: str, containers: list) -> list[str]:
    problems = []
    if not any(isinstance(c, dict) and c.get('name') == CONTAINER_NAME for c in containers):
        problems.append(
            f'{path}: needs a container named {CONTAINER_NAME!r} '
            '(the operator finds the training container by that name)'
        )
    for i, container in enumerate(c for c in containers if isinstance(c, dict)):
        if not container.get('image'):
            problems.append(f'{path}[{i}].image: required')
        resources = container.get('resources') or {}
        for kind in ('requests', 'limits'):
            for resource, value in (resources.get(kind) or {}).items():
                problems += _check_quantity(
                    f'{path}[{i}].resources.{kind}.{resource}', resource, value
                )
    return problems


def _check_quantity(path: str, resource: str, value: Any) -> list[str]:
    """The JSON schema accepts any string as a quantity; the API server does not."""
    try:
        quantity = parse_quantity(value)
    except (ValueError, TypeError):
        return [f'{path}: {value!r} is not a Kubernetes quantity (e.g. "2", "500m", "8Gi")']
    if quantity < 0:
        return [f'{path}: must not be negative, got {value!r}']
    if resource == GPU_RESOURCE and quantity != int(quantity):
        return [f'{path}: GPUs come in whole units, got {value!r}']
    return []


def _check_pod_schema(name: str, path: str, template: dict) -> list[str]:
    """Validate the template as a v1 PodTemplate against the Kubernetes schema (strict)."""
    pod_template = {
        'apiVersion': 'v1',
        'kind': 'PodTemplate',
        'metadata': {'name': name},
        'template': template,
    }
    try:
        kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ''.join(
            f'[{p}]' if isinstance(p, int) else f'.{p}' for p in list(exc.path)[1:]
        )  # [1:] drops the wrapper's 'template'
        return [f'{path}.template{where}: {exc.message} (Kubernetes {K8S_VERSION} schema)']
    return []


@dataclass(frozen=True)
class JobState:
    """Where a job stands: a condition type (or 'Pending') with its reason and message."""

    type: str
    reason: str | None = None
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.type in (kf.JOB_CONDITION_SUCCEEDED, kf.JOB_CONDITION_FAILED)


def job_state(job: models.KubeflowOrgV1PyTorchJob) -> JobState:
    """Interpret a job's status conditions.

    Succeeded and Failed are final and win over anything else; otherwise
    the most recent condition that is true tells the phase (Created,
    Running, Restarting).  No condition yet means the operator has not
    picked the job up: Pending.
    """
    conditions = [
        c
        for c in ((job.status and job.status.conditions) or [])
        if c.status == kf.CONDITION_STATUS_TRUE
    ]
    for final in (kf.JOB_CONDITION_FAILED, kf.JOB_CONDITION_SUCCEEDED):
        for condition in conditions:
            if condition.type == final:
                return JobState(condition.type, condition.reason, condition.message)
    if not conditions:
        return JobState('Pending')
    last = conditions[-1]
    return JobState(last.type, last.reason, last.message)


def check_finished(job: models.KubeflowOrgV1PyTorchJob) -> bool:
    """True when the job succeeded, False while it runs; raises ``PyTorchJobFailed``."""
    state = job_state(job)
    if state.type == kf.JOB_CONDITION_FAILED:
        raise PyTorchJobFailed(job.metadata.name, state.reason, state.message)
    return state.finished


def submit_and_wait(
    manifest: dict[str, Any],
    timeout: float = 24 * 3600,
    poll: float = 15,
    client: TrainingClient | None = None,
) -> models.KubeflowOrgV1PyTorchJob:
    """Validate, create the job, stream the Master's logs and wait for the end.

    Returns the finished job; raises ``PyTorchJobFailed`` with the
    operator's reason and message, or ``TimeoutError``.  ``client`` defaults
    to a ``TrainingClient`` for the in-cluster or kubeconfig credentials.
    """
    job = validate_pytorchjob(manifest)
    name, namespace = job.metadata.name, job.metadata.namespace
    client = client or TrainingClient(namespace=namespace)
    client.create_job(job=job, namespace=namespace)
    log.info('created PyTorchJob %s/%s', namespace, name)
    deadline = time.monotonic() + timeout
    streamed, last = False, None
    while time.monotonic() < deadline:
        job = client.get_job(name=name, namespace=namespace)
        state = job_state(job)
        if state != last:
            log.info('PyTorchJob %s: %s %s', name, state.type, state.message or '')
            last = state
        if check_finished(job):
            return job
        if state.type == kf.JOB_CONDITION_RUNNING and not streamed:
            # Blocks while the Master's container runs, printing its log lines.
            client.get_job_logs(name=name, namespace=namespace, follow=True)
            streamed = True
            continue
        time.sleep(poll)
    raise TimeoutError(
        f'PyTorchJob {namespace}/{name} did not finish within {timeout:.0f}s; last state: {last}'
    )


def local_pod_env(
    node_rank: int, nnodes: int, nproc_per_node: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The env vars the Training Operator (v1.9) gives a PyTorchJob pod.

    RANK is the pod's (node's) rank, not a process rank: torchrun derives
    each process's RANK from it, and WORLD_SIZE counts processes.
    """
    values = {
        'PYTHONUNBUFFERED': 1,
        'MASTER_ADDR': master_addr,
        'PET_MASTER_ADDR': master_addr,
        'MASTER_PORT': master_port,
        'PET_MASTER_PORT': master_port,
        'WORLD_SIZE': nnodes * nproc_per_node,
        'RANK': node_rank,
        'PET_NODE_RANK': node_rank,
        'PET_NNODES': nnodes,
        'PET_NPROC_PER_NODE': nproc_per_node,
    }
    return {key: str(value) for key, value in values.items()}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for torchrun's rendezvous store."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_local(
    command: list[str],
    nproc_per_node: int,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
) -> int:
    """Run ``torchrun ... <command>`` on this machine as one node; return its exit code.

    torchrun is started as ``python -m torch.distributed.run`` (the same
    program as the ``torchrun`` script) so it comes from this interpreter's
    environment.  Output goes to this module's logger, and to ``log_path``
    if given.  The caller decides what a non-zero code means.
    """
    port = free_port()
    argv = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--nproc_per_node',
        str(nproc_per_node),
        '--nnodes',
        '1',
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(port),
        *command,
    ]
    child_env = {
        **os.environ,
        **local_pod_env(0, 1, nproc_per_node, '127.0.0.1', port),
        **(env or {}),
    }
    log.info('running %s', ' '.join(argv))
    with (
        open(log_path, 'w') if log_path else contextlib.nullcontext() as log_file,
        subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        for line in proc.stdout:
            log.info('[torchrun] %s', line.rstrip())
            if log_file:
                log_file.write(line)
        code = proc.wait()
    log.info('torchrun exited with %d', code)
    return code
