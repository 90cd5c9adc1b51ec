"""Training as a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

Needs Kubeflow Trainer >= 2.2 (checked against v2.3.0).  Kubeflow 1.11 and 26.03
install Trainer v2.1.0 (kubeflow/website, releases/kubeflow-1.11.md and -26.03.md),
whose TrainJob has no ``runtimePatches``: there, install Trainer >= 2.2 or use
``training_backend=pytorchjob``.  The job is created with strict field validation, so
an older Trainer's API server refuses ``spec.runtimePatches`` (one line naming that
fix) instead of dropping it, and with it the PVC, ServiceAccount, tolerations and
Istio opt-out.  The TrainJob names the ``torch-distributed`` ClusterTrainingRuntime (or the
runtime the chart names) and gives numNodes, numProcPerNode,
resourcesPerNode, image, command and env (the S3 Secret references too); the
pod settings ``trainer`` has no field for (service account, node selector,
tolerations, affinity, volumes, pod annotations) go through
``spec.runtimePatches`` — the field Trainer v2.2+ has (v2.0 called it
podSpecOverrides, v2.1 podTemplateOverrides: not supported).  Trainer sets
the same torchrun env (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...), so
the container runs torchrun with no flags, as on a PyTorchJob, through
``python -m video_kd.backends.torchrun``: exit 2 for bad input (the chart runtime's
podFailurePolicy fails the job at once), 128 for anything to retry.

Built with the ``kubeflow-trainer-api`` models (the Trainer project's own).
"""

from __future__ import annotations

from typing import Any

from kubeflow_trainer_api import models as tm

from video_kd.backends import pod
from video_kd.backends.kube import JobKind, JobState
from video_kd.backends.spec import KUEUE_PRIORITY_LABEL, TrainingJobSpec
from video_kd.backends.torchrun import LAUNCHER

TRAINER_VERSION = '2.3'  # kubeflow-trainer-api release the models come from; runtimePatches: 2.2+
NODE = 'node'  # the torch runtime's replicated job and container
PATCH_MANAGER = 'video-kd.kubeflow.org/train-step'

KIND = JobKind(
    group='trainer.kubeflow.org',
    version='v1alpha1',
    plural='trainjobs',
    kind='TrainJob',
    operator='Kubeflow Trainer v2 (>= 2.2, TrainJob)',
    container=NODE,
    strict_fields_hint=(
        "this cluster's Trainer is older than 2.2 (Kubeflow 1.11 and 26.03 install v2.1.0, "
        'whose TrainJob has podTemplateOverrides instead of runtimePatches): install '
        'Kubeflow Trainer >= 2.2, or use training_backend=pytorchjob'
    ),
)


def build(spec: TrainingJobSpec) -> tm.TrainerV1alpha1TrainJob:
    """The TrainJob of a spec, as the Trainer API's model."""
    labels = spec.job_labels()
    if spec.priority_class:
        # Trainer's pod patch has no priorityClassName: Kueue's WorkloadPriorityClass label
        # (the chart's TrainingRuntime puts the class on the pods; see warnings()).
        labels[KUEUE_PRIORITY_LABEL] = spec.priority_class
    return tm.TrainerV1alpha1TrainJob(
        apiVersion=f'{KIND.group}/{KIND.version}',
        kind=KIND.kind,
        metadata=tm.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=spec.name,
            namespace=spec.namespace,
            labels=labels,
            annotations=spec.job_annotations(),
            ownerReferences=[
                tm.IoK8sApimachineryPkgApisMetaV1OwnerReference.from_dict(ref)
                for ref in spec.owner_references() or []
            ]
            or None,  # the run's Workflow (owner.py)
        ),
        spec=tm.TrainerV1alpha1TrainJobSpec(
            # Trainer fails the TrainJob past it (DeadlineExceeded) and deletes its JobSet.
            # A TrainJob has no ttlSecondsAfterFinished (v2.3): its owner removes it, and the
            # chart's runtime gives the JobSet (the pods) a TTL.
            activeDeadlineSeconds=spec.active_deadline_seconds,
            runtimeRef=tm.TrainerV1alpha1RuntimeRef(
                name=spec.trainjob_runtime, kind=spec.trainjob_runtime_kind
            ),
            trainer=_trainer(spec),
            runtimePatches=[_patch(spec)],
        ),
    )


def manifest(spec: TrainingJobSpec) -> dict[str, Any]:
    """The TrainJob as the JSON sent to the API server."""
    return build(spec).to_dict()


def _trainer(spec: TrainingJobSpec) -> tm.TrainerV1alpha1Trainer:
    # Every env var goes here, the Secret references included (trainer.env is a list of
    # corev1.EnvVar: valueFrom works).  Trainer v2.3 refuses env in a runtimePatches patch of
    # the node container: kubeflow/trainer v2.3.0 pkg/runtime/framework/plugins/jobset/jobset.go,
    # JobSet.Validate, lines 202-205 ("must not have envs for the dataset-initializer,
    # model-initializer, node containers").
    env = [pod.to_dict(e) for e in pod.container_env(spec)]
    return tm.TrainerV1alpha1Trainer(
        image=spec.image,
        command=list(LAUNCHER),  # torchrun, exiting 2 for bad input and 128 to be retried
        args=list(spec.command),
        env=[tm.IoK8sApiCoreV1EnvVar.from_dict(e) for e in env],
        numNodes=spec.num_nodes,
        numProcPerNode=spec.procs_per_node,
        resourcesPerNode=tm.IoK8sApiCoreV1ResourceRequirements.from_dict(
            pod.to_dict(pod.resources(spec))
        ),
    )


def _patch(spec: TrainingJobSpec) -> tm.TrainerV1alpha1RuntimePatch:
    """Pod settings for the runtime's 'node' job: what `trainer` has no field for."""
    pod_spec = {
        'serviceAccountName': spec.service_account or None,
        'nodeSelector': dict(spec.node_selector) or None,
        'tolerations': pod.to_dict(pod.tolerations(spec)),
        'affinity': pod.to_dict(pod.affinity(spec)),
        'volumes': pod.to_dict(pod.volumes(spec)),
        'containers': [
            # no env here: Trainer's webhook refuses it (see _trainer)
            {'name': NODE, 'volumeMounts': pod.to_dict(pod.volume_mounts(spec))}
        ],
    }
    template = {
        'metadata': {'annotations': spec.pod_annotations() or None},
        'spec': {k: v for k, v in pod_spec.items() if v is not None},
    }
    return tm.TrainerV1alpha1RuntimePatch.from_dict(
        {
            'manager': PATCH_MANAGER,
            'trainingRuntimeSpec': {
                'template': {
                    'spec': {
                        'replicatedJobs': [
                            {'name': NODE, 'template': {'spec': {'template': template}}}
                        ]
                    }
                }
            },
        }
    )


def warnings(spec: TrainingJobSpec) -> list[str]:
    """What the spec asks for that a TrainJob cannot carry (the train step logs them).

    Trainer v2.3's TrainJob has no restart or priority field, and its
    runtimePatches patch pod settings only (kubeflow/trainer v2.3.0
    pkg/apis/trainer/v1alpha1/trainjob_types.go: TrainJobSpec, PodSpecPatch):
    the runtime's JobSet failurePolicy decides the restarts, the runtime's pod
    template the priority class.
    """
    runtime = f'{spec.trainjob_runtime_kind} {spec.trainjob_runtime}'
    found = []
    if spec.trainjob_max_restarts is None:
        found.append(
            f'a TrainJob restarts as often as its runtime allows ({runtime}: '
            'failurePolicy.maxRestarts); backoff_limit_per_node '
            f'({spec.backoff_limit_per_node}) does not apply to it'
        )
    elif spec.trainjob_max_restarts != spec.backoff_limit_per_node:
        # A JobSet restarts all nodes once per incident; a PyTorchJob's backoff_limit counts
        # the failed pods (per node x nodes: every peer fails with the incident): both allow
        # backoff_limit_per_node incidents.
        found.append(
            f'this run asks for {spec.backoff_limit_per_node} restarts (backoff_limit_per_node, '
            f'one per incident), but a TrainJob cannot set its own: {runtime} allows '
            f"{spec.trainjob_max_restarts} (the chart's training.backoffLimitPerNode)"
        )
    if spec.priority_class and not spec.queue and spec.trainjob_runtime_kind != 'TrainingRuntime':
        found.append(
            f'priority class {spec.priority_class!r} has no effect on a TrainJob on {runtime} '
            "without a Kueue queue: it is only Kueue's label (use the chart's TrainingRuntime, "
            'which puts it on the pods)'
        )
    return found


def backoff(spec: TrainingJobSpec) -> None:
    """None: the train step counts no restarts of a TrainJob.  Its JobSet's controller
    enforces the runtime's ``failurePolicy.maxRestarts`` itself (it counts the restarts in
    the JobSet's status.restarts and fails the JobSet past them), unlike the Training
    Operator's backoffLimit under ExitCode (see pytorchjob.backoff)."""
    return None


def state(obj: dict[str, Any]) -> JobState:
    """Where a TrainJob stands: Trainer copies the JobSet's Completed / Failed condition as
    'Complete' / 'Failed'; before that, Created or Suspended, or nothing (Pending)."""
    conditions = [
        c for c in ((obj.get('status') or {}).get('conditions') or []) if c.get('status') == 'True'
    ]
    for condition in conditions:
        if condition.get('type') == 'Failed':
            return JobState.of(condition)
    for condition in conditions:
        if condition.get('type') == 'Complete':
            return JobState.of(condition, succeeded=True)
    if not conditions:
        return JobState('Pending')
    return JobState.of(conditions[-1])


def log_pod_selector(name: str) -> str:
    """Node 0 of the JobSet: rank 0, whose log is the training log."""
    return (
        f'jobset.sigs.k8s.io/jobset-name={name},'
        f'jobset.sigs.k8s.io/replicatedjob-name={NODE},batch.kubernetes.io/job-completion-index=0'
    )


def pods_selector(name: str) -> str:
    return f'jobset.sigs.k8s.io/jobset-name={name}'
