"""The object a run's training job is garbage-collected with: the run's Argo Workflow.

A job with an owner goes when its owner goes (Kubernetes' garbage collector), so a
training job never outlives its run, even when the train step's pod dies without
deleting it (node loss, OOM kill).  The owner is the run's Argo **Workflow**, not the
step pod:

- a KFP retry of the train step is a new pod of the same Workflow: the retried step
  finds the job still running and adopts it (``kube.ClusterJob.submit``); with the step
  pod as owner, the first attempt's pod going would take the job, days of training
  with it, the moment the retry starts;
- the Workflow lives as long as the run (KFP deletes it with the run, or once a finished
  run's TTL is over), so deleting a run in the KFP UI also deletes its job.

The step pod learns its own name from KFP's downward-API env var ``KFP_POD_NAME``,
reads its own pod (``get pods``, which the chart's Role already grants) and takes the
Workflow from the pod's ownerReference that Argo sets (``apiVersion argoproj.io/v1alpha1,
kind Workflow``, with the uid an ownerReference needs).  Without that reference, the
pod's ``workflows.argoproj.io/workflow`` label names the Workflow, whose uid a ``get
workflows`` gives.  No ``KFP_POD_NAME`` (``video-kd run-local``, a step run by hand
outside KFP): no owner, deliberately; the job then ends by its deadline and TTL.
An owner that cannot be found or read is one line (exit status 2) before anything is
created: a job without its owner could run unsupervised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from video_kd.backends.kube import ClusterError, api_client
from video_kd.backends.spec import current_namespace

log = logging.getLogger(__name__)
POD_NAME_ENV = 'KFP_POD_NAME'  # KFP's executor container: the downward API's metadata.name
WORKFLOW_LABEL = 'workflows.argoproj.io/workflow'
ARGO_GROUP, ARGO_VERSION, WORKFLOW_KIND = 'argoproj.io', 'v1alpha1', 'Workflow'


def step_owner(
    job_namespace: str,
    env: Mapping[str, str] | None = None,
    api: k8s.ApiClient | None = None,
    pod_namespace: str = '',
) -> dict[str, Any] | None:
    """The ownerReference of the run's Workflow for a job in ``job_namespace``; None
    outside a KFP step pod.  Raises ``ClusterError`` when it cannot be set."""
    env = os.environ if env is None else env
    pod_name = env.get(POD_NAME_ENV, '')
    if not pod_name:
        log.info('not in a KFP step pod (no %s): the training job has no owner', POD_NAME_ENV)
        return None
    pod_namespace = pod_namespace or current_namespace()
    if pod_namespace != job_namespace:
        # a namespaced owner must be in its dependent's namespace, else the garbage
        # collector treats it as absent and deletes the job at once
        raise ClusterError(
            f'the training job would run in namespace {job_namespace} but the run in '
            f'{pod_namespace}: Kubernetes garbage-collects a job only with an owner in its own '
            f'namespace (leave VIDEO_KD_NAMESPACE empty)'
        )
    api = api or api_client()
    pod = _read(lambda: k8s.CoreV1Api(api).read_namespaced_pod(pod_name, pod_namespace),
                'get', 'pods', pod_namespace)  # fmt: skip
    for ref in pod.metadata.owner_references or []:
        if ref.kind == WORKFLOW_KIND and ref.api_version.startswith(f'{ARGO_GROUP}/'):
            return reference(ref.api_version, ref.name, ref.uid)
    workflow = (pod.metadata.labels or {}).get(WORKFLOW_LABEL)
    if not workflow:
        raise ClusterError(
            f'step pod {pod_namespace}/{pod_name} belongs to no Argo Workflow (no '
            f'ownerReference, no {WORKFLOW_LABEL} label): the training job would have no owner'
        )
    objects = k8s.CustomObjectsApi(api)
    found = _read(
        lambda: objects.get_namespaced_custom_object(
            ARGO_GROUP, ARGO_VERSION, pod_namespace, 'workflows', workflow
        ),
        'get',
        f'workflows.{ARGO_GROUP}',
        pod_namespace,
    )
    return reference(f'{ARGO_GROUP}/{ARGO_VERSION}', workflow, found['metadata']['uid'])


def reference(api_version: str, name: str, uid: str) -> dict[str, Any]:
    """An ownerReference as the API takes it.  Not ``controller`` (the job has no
    controller of its own kind) nor ``blockOwnerDeletion`` (that needs update rights on the
    Workflow's finalizers, and the Workflow must not wait for the job's pods)."""
    ref = k8s.V1OwnerReference(api_version=api_version, kind=WORKFLOW_KIND, name=name, uid=uid)
    return k8s.ApiClient().sanitize_for_serialization(ref)


def _read(call: Callable[[], Any], verb: str, resource: str, namespace: str) -> Any:
    """The call's answer; a 403 or 404 is one line (a ClusterError)."""
    try:
        return call()
    except ApiException as exc:
        why = {
            403: f'forbidden: this pod\'s ServiceAccount may not "{verb}" {resource}',
            404: f'no such {resource}',
        }.get(exc.status or 0)
        if why is None:
            raise
        raise ClusterError(
            f"{why} in namespace {namespace}: the train step reads it to make the run's Argo "
            'Workflow own the training job, which must not run without an owner'
        ) from exc
