"""The training pod's pieces, as typed ``kubernetes.client`` models, shared by both operators.

Both the Training Operator (PyTorchJob) and Trainer v2 (TrainJob) run the
same container: ``torchrun`` + the spec's command, the S3 settings as env,
credentials by reference to the Secret, /dev/shm as memory and the PVC.
"""

from __future__ import annotations

from typing import Any

from kubeflow.training.api_client import ApiClient
from kubeflow.training.utils.utils import FakeResponse
from kubernetes import client as k8s

from video_kd.backends.spec import TrainingJobSpec

SHM_VOLUME = 'dshm'
PVC_VOLUME = 'cache'


def to_dict(model: Any) -> Any:
    """A model as the JSON the API server takes (camelCase keys, no None values)."""
    return ApiClient().sanitize_for_serialization(model)


def from_dict(data: Any, klass: str) -> Any:
    """A JSON object (e.g. a chart value) as the named model, e.g. 'V1Affinity'."""
    return ApiClient().deserialize(FakeResponse(data), klass)


def container_env(spec: TrainingJobSpec) -> list[k8s.V1EnvVar]:
    """Plain env vars (sorted, so the manifest is stable), then the Secret references."""
    plain = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(spec.env.items())]
    refs = [
        k8s.V1EnvVar(
            name=ref.name,
            value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(
                    name=ref.secret, key=ref.key, optional=ref.optional
                )
            ),
        )
        for ref in spec.secret_env
    ]
    return plain + refs


def resources(spec: TrainingJobSpec) -> k8s.V1ResourceRequirements:
    """Requests and limits from the chart, with the GPUs under the cluster's resource name."""
    return k8s.V1ResourceRequirements(
        requests=spec.requests() or None, limits=spec.limits() or None
    )


def volumes(spec: TrainingJobSpec) -> list[k8s.V1Volume]:
    # DataLoader workers pass batches through /dev/shm; a pod's default is 64 MiB.
    found = [k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium='Memory'))]
    if spec.pvc:
        found.append(
            k8s.V1Volume(
                name=PVC_VOLUME,
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=spec.pvc
                ),
            )
        )
    return found


def volume_mounts(spec: TrainingJobSpec) -> list[k8s.V1VolumeMount]:
    mounts = [k8s.V1VolumeMount(name=SHM_VOLUME, mount_path='/dev/shm')]
    if spec.pvc:
        mounts.append(k8s.V1VolumeMount(name=PVC_VOLUME, mount_path=spec.pvc_mount))
    return mounts


def tolerations(spec: TrainingJobSpec) -> list[k8s.V1Toleration] | None:
    return [from_dict(dict(t), 'V1Toleration') for t in spec.tolerations] or None


def affinity(spec: TrainingJobSpec) -> k8s.V1Affinity | None:
    return from_dict(dict(spec.affinity), 'V1Affinity') if spec.affinity else None
