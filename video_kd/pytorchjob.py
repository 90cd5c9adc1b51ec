"""Compatibility front of ``video_kd.backends`` for today's train step (``video_kd/steps.py``).

The launch backends live in ``video_kd.backends`` (spec, pytorchjob,
trainjob, local).  This module keeps the names the train step imports until
the step calls ``video_kd.backends`` directly (see the README's cluster
section); it holds no logic of its own.  Manifests are checked against the
real CRD schemas in the tests (tests/test_pytorchjob.py), not at run time.
"""

from __future__ import annotations

from typing import Any

from kubeflow.training import models
from kubeflow.training.constants import constants as kf

from video_kd.backends import pytorchjob as _backend
from video_kd.backends.kube import JobState, TrainingJobFailed
from video_kd.backends.local import free_port, local_pod_env, run_local
from video_kd.backends.pod import from_dict
from video_kd.backends.spec import OPERATOR_ENV, TrainingJobSpec, s3_secret_env

PyTorchJobFailed = TrainingJobFailed
__all__ = [
    'OPERATOR_ENV',
    'JobState',
    'PyTorchJobFailed',
    'build_pytorchjob',
    'free_port',
    'local_pod_env',
    'run_local',
    'submit_and_wait',
    'validate_pytorchjob',
]


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
    backoff_limit_per_node: int = 3,
) -> dict[str, Any]:
    """Today's call, mapped onto a ``TrainingJobSpec``; the job name comes from the run id
    (``env['VIDEO_KD_RUN_ID']``, else ``name``): see ``backends.spec.job_name``."""
    env = dict(env or {})
    labels = dict(labels or {})
    run_id = env.get('VIDEO_KD_RUN_ID') or labels.pop('video-kd/run-id', '') or name
    spec = TrainingJobSpec(
        run_id=run_id,
        namespace=namespace,
        image=image,
        command=tuple(command),
        num_nodes=num_workers,
        gpus_per_worker=gpus_per_worker,
        nproc_per_node=nproc_per_node,
        env=env,
        secret_env=s3_secret_env(s3_secret_name, 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')
        if s3_secret_name
        else (),
        resources={'requests': {'cpu': cpu, 'memory': memory}, 'limits': {'memory': memory}},
        node_selector=node_selector or {},
        tolerations=tuple(tolerations or ()),
        service_account=service_account or '',
        labels={k: v for k, v in labels.items() if k != 'video-kd/run-id'},
        backoff_limit_per_node=backoff_limit_per_node,
    )
    return _backend.manifest(spec)


def validate_pytorchjob(manifest: dict[str, Any]) -> models.KubeflowOrgV1PyTorchJob:
    """The manifest as the SDK's model (types checked by the model's deserializer)."""
    return from_dict(manifest, kf.PYTORCHJOB_MODEL)


def submit_and_wait(manifest: dict[str, Any], timeout: float = 24 * 3600, api: Any = None) -> None:
    """Create (or adopt / replace) the job, follow it to the end, delete it."""
    from video_kd.backends.kube import ClusterJob

    name = manifest['metadata']['name']
    ClusterJob(
        _backend.KIND,
        manifest,
        _backend.state,
        _backend.log_pod_selector(name),
        _backend.pods_selector(name),
        api=api,
    ).run(
        timeout,
        queue=(manifest['metadata'].get('labels') or {}).get('kueue.x-k8s.io/queue-name', ''),
    )
