"""Training as a Kubeflow Training Operator v1 PyTorchJob (``kubeflow.org/v1``).

Fits Kubeflow <= 1.10 (Training Operator v1.8/v1.9; maintenance-only since
Trainer v2).  One Master + N-1 Workers; the operator gives each pod the
torchrun settings as ``PET_*`` env vars, so the container runs torchrun with
no flags — through ``python -m video_kd.backends.torchrun``, which turns the workers'
failures into an exit status the ``ExitCode`` restart policy can act on:
2 when a worker reported bad input (status 1-127: the job fails at once),
128 for anything else (a crash, a lost peer, an NCCL error, S3 unreachable;
128-255 are retried, up to the backoff limit).  torchrun alone exits 1 for
every failure, which ``ExitCode`` would never retry.  Built from the
kubeflow-training SDK's typed models.

The operator does not enforce ``runPolicy.backoffLimit`` with ``ExitCode``
(kubeflow/trainer#2045: it re-creates a failed pod rather than restarting its
container, and counts only container restarts), so the train step counts the
retried pods itself (``backoff``, ``kube.ClusterJob``) and fails the job past
the limit.
"""

from __future__ import annotations

from typing import Any

from kubeflow.training import models
from kubeflow.training.constants import constants as kf
from kubernetes import client as k8s

from video_kd.backends import pod
from video_kd.backends.kube import Backoff, JobKind, JobState
from video_kd.backends.spec import KUEUE_QUEUE_LABEL, TrainingJobSpec
from video_kd.backends.torchrun import LAUNCHER, RETRYABLE

CONTAINER_NAME = kf.PYTORCHJOB_CONTAINER  # 'pytorch': the operator finds port and logs by it
MASTER, WORKER = kf.REPLICA_TYPE_MASTER, kf.REPLICA_TYPE_WORKER
PORT_NAME = 'pytorchjob-port'  # the operator reads MASTER_PORT from the port of this name
DEFAULT_PORT = 23456
# Exit codes 1-127 fail the pod for good (2 = bad input), 128-255 are retried (the launcher's
# 128 for a crash, signals: OOM kill, node loss, preemption): kubeflow/training-operator
# v1.9.0 pkg/util/train/train_util.go IsRetryableExitCode (exitCode >= 128).
RESTART_POLICY = 'ExitCode'
# When the job finishes, running pods go (their GPUs with them); finished ones stay until the
# step deletes the job, which it does once every pod's log is in <run>/train/logs/ (kube.PodLogs):
# the pods' own logs go with the job.
CLEAN_POD_POLICY = 'Running'

KIND = JobKind(
    group='kubeflow.org',
    version='v1',
    plural='pytorchjobs',
    kind=kf.PYTORCHJOB_KIND,
    operator='the Kubeflow Training Operator v1 (PyTorchJob)',
    container=CONTAINER_NAME,
)


def build(spec: TrainingJobSpec) -> models.KubeflowOrgV1PyTorchJob:
    """The PyTorchJob of a spec, as the SDK's model."""
    replicas = {MASTER: _replica(spec, 1)}
    if spec.num_nodes > 1:
        replicas[WORKER] = _replica(spec, spec.num_nodes - 1)
    return models.KubeflowOrgV1PyTorchJob(
        api_version=f'{KIND.group}/{KIND.version}',
        kind=KIND.kind,
        metadata=k8s.V1ObjectMeta(
            name=spec.name,
            namespace=spec.namespace,
            labels=spec.job_labels(),
            annotations=spec.job_annotations(),
            owner_references=spec.owner_references(),  # the run's Workflow (owner.py)
        ),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.procs_per_node),  # a string in the CRD: it also takes 'auto'
            run_policy=models.KubeflowOrgV1RunPolicy(
                # Ignored by the operator with restartPolicy ExitCode (kubeflow/trainer#2045):
                # the train step enforces it (backoff()).  Kept: right if the operator fixes it.
                backoff_limit=spec.backoff_limit,
                clean_pod_policy=CLEAN_POD_POLICY,
                # The operator fails the job past it (reason DeadlineExceeded) and deletes a
                # finished job after the TTL, whether or not the step is still there.
                active_deadline_seconds=spec.active_deadline_seconds,
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                scheduling_policy=(
                    models.KubeflowOrgV1SchedulingPolicy(priority_class=spec.priority_class)
                    if spec.priority_class
                    else None
                ),
            ),
            pytorch_replica_specs=replicas,
        ),
    )


def manifest(spec: TrainingJobSpec) -> dict[str, Any]:
    """The PyTorchJob as the JSON sent to the API server."""
    return pod.to_dict(build(spec))


def retried(exit_code: int | None) -> bool:
    """Whether the operator re-creates a Failed pod whose training container exited so
    (``ExitCode``): 128-255, and no exit code at all (a pod evicted before its container
    ended), which the operator reads as 0xbeef (kubeflow/training-operator v1.9
    pkg/controller.v1/common/pod.go ReconcilePods, train_util.go IsRetryableExitCode)."""
    return exit_code is None or exit_code >= RETRYABLE


def warnings(spec: TrainingJobSpec) -> list[str]:
    """None: every field of the spec has its meaning on a PyTorchJob."""
    del spec
    return []


def backoff(spec: TrainingJobSpec) -> Backoff:
    """The backoff limit the train step enforces while it waits (the operator does not:
    kubeflow/trainer#2045): more than ``spec.backoff_limit`` retried pods fail the job."""
    return Backoff(spec.backoff_limit, retried)


def _replica(spec: TrainingJobSpec, count: int) -> models.KubeflowOrgV1ReplicaSpec:
    # A template each, so that editing one replica's template never changes the other's.
    return models.KubeflowOrgV1ReplicaSpec(
        replicas=count, restart_policy=RESTART_POLICY, template=_template(spec)
    )


def _template(spec: TrainingJobSpec) -> k8s.V1PodTemplateSpec:
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=spec.image,
        command=list(LAUNCHER),  # torchrun, exiting 2 for bad input and 128 to be retried
        args=list(spec.command),
        env=pod.container_env(spec),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=DEFAULT_PORT, protocol='TCP')],
        resources=pod.resources(spec),
        volume_mounts=pod.volume_mounts(spec),
    )
    # Kueue admits the job as a whole: its queue label belongs on the job, not the pods.
    labels = {k: v for k, v in spec.job_labels().items() if k != KUEUE_QUEUE_LABEL}
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels, annotations=spec.pod_annotations() or None),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=pod.volumes(spec),
            service_account_name=spec.service_account or None,
            # Training needs no Kubernetes API: no token in its pods, whatever the account.
            automount_service_account_token=False,
            node_selector=dict(spec.node_selector) or None,
            tolerations=pod.tolerations(spec),
            affinity=pod.affinity(spec),
            priority_class_name=spec.priority_class or None,
        ),
    )


def state(obj: dict[str, Any]) -> JobState:
    """Where a PyTorchJob stands, from its status conditions as the operator writes them.

    Succeeded and Failed are final and win; otherwise the most recent true
    condition (Created, Running, Restarting, Suspended); none yet: Pending.
    """
    conditions = [
        c
        for c in ((obj.get('status') or {}).get('conditions') or [])
        if c.get('status') == kf.CONDITION_STATUS_TRUE
    ]
    for final in (kf.JOB_CONDITION_FAILED, kf.JOB_CONDITION_SUCCEEDED):
        for condition in conditions:
            if condition.get('type') == final:
                return JobState.of(condition, succeeded=final == kf.JOB_CONDITION_SUCCEEDED)
    if not conditions:
        return JobState('Pending')
    return JobState.of(conditions[-1])


def log_pod_selector(name: str) -> str:
    """The Master pod: rank 0, whose log is the training log."""
    return f'training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master'


def pods_selector(name: str) -> str:
    return f'training.kubeflow.org/job-name={name}'
