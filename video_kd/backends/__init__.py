"""Training launch backends, by name: where the train step's torchrun processes run.

- ``pytorchjob``: a Kubeflow Training Operator v1 PyTorchJob (Kubeflow <= 1.10).
- ``trainjob``: a Kubeflow Trainer v2 TrainJob (Kubeflow 1.11, 26.03; Trainer >= 2.2).
- ``local``: torchrun on this machine (run-local, tests, a single-node step pod).

Every backend takes the same ``TrainingJobSpec`` (``spec.py``; the step builds it
with ``spec_from_env``) and implements a protocol of ``base.py`` (``ClusterBackend``: the
object to create and how to read it; ``LocalBackend``: ``run``).
``run_training(name, spec, timeout, ...)`` returns when training succeeded and raises ``TrainingJobFailed`` (operator reason, pod exit
codes) or a ``ClusterError`` (UserError: operator missing, RBAC, queue).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from video_kd.backends import owner
from video_kd.backends.base import ClusterBackend, LocalBackend
from video_kd.backends.kube import ClusterError, ClusterJob, TrainingJobFailed
from video_kd.backends.spec import (
    DEFAULT_MAX_TRAINING_HOURS,
    JobSpecError,
    TrainingJobSpec,
    job_name,
    job_namespace,
    spec_from_env,
)
from video_kd.core.checks import InvalidInputError
from video_kd.runs import RunLayout

log = logging.getLogger(__name__)
BACKENDS = ('pytorchjob', 'trainjob', 'local')
DEFAULT_BACKEND = 'pytorchjob'

__all__ = [
    'BACKENDS',
    'DEFAULT_MAX_TRAINING_HOURS',
    'ClusterBackend',
    'ClusterError',
    'JobSpecError',
    'LocalBackend',
    'TrainingJobFailed',
    'TrainingJobSpec',
    'UnknownBackend',
    'backend_from_env',
    'check_backend_name',
    'check_train_backend',
    'get',
    'job_name',
    'manifest',
    'run_training',
    'spec_from_env',
    'step_owner',
]


class UnknownBackend(JobSpecError):
    """A training_backend name that is not one of BACKENDS."""


def backend_from_env(name: str = '', env: Mapping[str, str] | None = None) -> str:
    """The backend to use: the pipeline parameter if set, else the chart's ConfigMap
    (VIDEO_KD_TRAINING_BACKEND), else pytorchjob.  Raises UnknownBackend for a bad name."""
    env = os.environ if env is None else env
    chosen = name or env.get('VIDEO_KD_TRAINING_BACKEND') or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise UnknownBackend(f'training_backend {chosen!r}: use one of {", ".join(BACKENDS)}')
    return chosen


def get(name: str) -> ClusterBackend | LocalBackend:
    """The backend module of that name (imported on first use: each has its own SDK)."""
    # deferred: each backend imports its own SDK (Training Operator, Trainer), only when used
    if name == 'pytorchjob':
        from video_kd.backends import pytorchjob

        return pytorchjob
    if name == 'trainjob':
        from video_kd.backends import trainjob

        return trainjob
    if name == 'local':
        from video_kd.backends import local

        return local
    raise UnknownBackend(f'training_backend {name!r}: use one of {", ".join(BACKENDS)}')


def cluster_backend(name: str) -> ClusterBackend:
    """The Kubernetes backend of that name; ``local`` is refused (it creates no object)."""
    backend = get(name)
    if name == 'local':
        raise UnknownBackend('training_backend "local" creates no Kubernetes object')
    return cast(ClusterBackend, backend)


def local_backend(name: str) -> LocalBackend:
    return cast(LocalBackend, get(name))


def step_owner(env: Mapping[str, str] | None = None, api: Any = None) -> dict[str, Any] | None:
    """The ownerReference of the run's Argo Workflow for the training job (``owner.py``);
    None outside a KFP step pod.  A ``ClusterError`` (one line) when it cannot be set."""
    return owner.step_owner(job_namespace(env), env, api)


def manifest(name: str, spec: TrainingJobSpec) -> dict[str, Any]:
    """The object a cluster backend would create (for --dry-run and the tests)."""
    return cluster_backend(name).manifest(spec)


def run_training(
    name: str,
    spec: TrainingJobSpec,
    timeout: float | None,
    api: Any = None,
    layout: RunLayout | None = None,
    **local_kwargs: Any,
) -> None:
    """Run the spec's training on the named backend until it ends; see the module doc.

    ``timeout``: seconds; None (no limit) for the local backend only.

    ``api``: a ``kubernetes.client.ApiClient`` (default: in-cluster, else kubeconfig).
    ``layout``: the run, whose ``train/logs/`` gets every training pod's log (None: not saved).
    ``local_kwargs``: ``log_path``, ``cwd`` for the local backend.
    """
    if name == 'local':
        local_backend(name).run(spec, timeout, **local_kwargs)
        return
    if timeout is None:
        raise ValueError(f'the {name} backend needs a timeout')
    backend = cluster_backend(name)
    for line in backend.warnings(spec):
        log.warning('%s', line)

    job = ClusterJob(
        backend.KIND,
        backend.manifest(spec),
        backend.state,
        backend.log_pod_selector(spec.name),
        backend.pods_selector(spec.name),
        api=api,
        backoff=backend.backoff(spec),
        layout=layout,
    )
    job.run(timeout, queue=spec.queue)


# --------------------------------------------------------------------------- backends
def check_backend_name(backend: str) -> str:
    """``backend`` if it names a training backend; else one line that lists them."""
    if backend not in BACKENDS:
        raise InvalidInputError(
            f'training_backend {backend!r}: expected '
            + ', '.join(f'"{name}"' for name in BACKENDS[:-1])
            + f' or "{BACKENDS[-1]}"'
        )
    return backend


def check_train_backend(backend: str, gpus_per_worker: int = 0) -> None:
    """The training backend can run from here: a Kubernetes API, or local GPUs if asked for."""
    check_backend_name(backend)
    if backend != 'local':
        if os.environ.get('KUBERNETES_SERVICE_HOST'):
            return  # in a pod: the in-cluster config
        kubeconfig = os.environ.get('KUBECONFIG') or str(Path.home() / '.kube' / 'config')
        if not any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
            raise InvalidInputError(
                f'training_backend "{backend}" needs a Kubernetes API: run in the cluster or '
                f'set KUBECONFIG (no kubeconfig at {kubeconfig}); or use training_backend "local"'
            )
    elif gpus_per_worker > 0:
        import torch  # only here: the step pod that checks a cluster backend needs no torch

        if torch.cuda.device_count() < gpus_per_worker:
            raise InvalidInputError(
                f'gpus_per_worker={gpus_per_worker} in local mode, but this machine has '
                f'{torch.cuda.device_count()} GPUs; use gpus_per_worker=0 (CPU)'
            )
