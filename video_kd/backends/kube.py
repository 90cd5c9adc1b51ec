"""What both operator backends do with the Kubernetes API: create (or adopt / replace) the
job, follow its status with a watch, stream rank 0's log, explain a failure, delete the job,
and enforce a backoff limit the operator does not (``Backoff``: the PyTorchJob's).

Each backend supplies a ``JobKind`` (group, version, plural), the manifest and
a ``state`` function reading its operator's status conditions.  Errors the
user must fix (operator not installed, RBAC missing, an admission webhook
that refuses the job, Kueue queue missing, an old job that will not go) are
``ClusterError`` (a UserError: one line, exit status 2).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config, watch
from kubernetes.client.exceptions import ApiException

from video_kd.core.errors import UserError

log = logging.getLogger(__name__)
KUEUE_GROUP, KUEUE_VERSION = 'kueue.x-k8s.io', 'v1beta1'
DELETE_GRACE_S = 30
WATCH_WINDOW_S = 300  # one watch request; the loop re-watches until the job's deadline
REWATCH_PAUSE_S = 1.0  # least time between two pod watches (a watch that ended at once)
REPLACE_WAIT_S = 120  # how long a replace waits for the old job (and its pods) to go


class ClusterError(UserError):
    """The cluster lacks what the job needs (an operator, a permission, a queue)."""


class TrainingJobFailed(RuntimeError):
    """The training job failed; the message holds the operator's reason and the pods' exits."""

    def __init__(self, name: str, reason: str | None, message: str | None, detail: str = ''):
        text = f'{name} failed: {reason or "no reason given"}: {message or "no message"}'
        super().__init__(text + (f' ({detail})' if detail else ''))
        self.name, self.reason, self.message = name, reason, message


class StepTerminated(SystemExit):
    """The step pod got SIGTERM (KFP run cancelled, pod evicted): clean up and go."""


@dataclass(frozen=True)
class JobKind:
    group: str
    version: str
    plural: str
    kind: str
    operator: str  # what to install when the API is missing
    container: str  # the training container, whose log is streamed
    # Create the job with strict server-side field validation (a field the installed CRD
    # lacks is refused, not silently dropped), and what to tell the user when it is: ''
    # keeps the API server's default (unknown fields dropped with a warning).
    strict_fields_hint: str = ''

    @property
    def resource(self) -> str:
        return f'{self.plural}.{self.group}'


@dataclass(frozen=True)
class JobState:
    """Where a job stands: a condition type (or 'Pending'), its reason and message."""

    type: str
    reason: str | None = None
    message: str | None = None
    succeeded: bool = False
    failed: bool = False

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    @classmethod
    def of(cls, condition: dict[str, Any], succeeded: bool = False) -> JobState:
        kind = condition.get('type') or 'Unknown'
        return cls(
            kind,
            condition.get('reason'),
            condition.get('message'),
            succeeded=succeeded,
            failed=kind == 'Failed',
        )


@dataclass(frozen=True)
class Backoff:
    """A backoff limit the train step enforces itself while it waits: more than ``limit``
    of the job's pods (told apart by UID: the operator re-creates a pod under the same
    name) ended Failed with an exit code ``retried(code)`` says the operator restarts
    (``None``: no exit code, e.g. evicted before its container ended), and the job fails."""

    limit: int
    retried: Callable[[int | None], bool]


class RetriedPods:
    """The job's pods that failed and were retried, counted against a ``Backoff``."""

    def __init__(self, backoff: Backoff, container: str):
        self.backoff, self.container = backoff, container
        self.failed: dict[str, str] = {}  # pod UID -> 'pod-x: exit 137 (OOMKilled)'
        self.last = ''

    def add(self, pod: Any) -> bool:
        """Count a pod (a V1Pod from a list or watch) if it is a retried failure not yet
        counted; whether it was."""
        if not pod.status or pod.status.phase != 'Failed':
            return False
        code, reason = None, (pod.status.reason or 'no exit code')
        for status in pod.status.container_statuses or []:
            term = status.state and status.state.terminated
            if status.name == self.container and term:
                code, reason = term.exit_code, term.reason or 'Error'
        key = pod.metadata.uid or f'{pod.metadata.namespace}/{pod.metadata.name}'
        if key in self.failed or not self.backoff.retried(code):
            return False
        exit_text = f'exit {code}' if code is not None else 'no exit code'
        self.last = self.failed[key] = f'{pod.metadata.name}: {exit_text} ({reason})'
        return True

    @property
    def exceeded(self) -> bool:
        return len(self.failed) > self.backoff.limit

    def message(self) -> str:
        return (
            f'{len(self.failed)} training pods failed with an exit status the operator retries, '
            f'more than the backoff limit of {self.backoff.limit} (the last: {self.last})'
        )


def api_client() -> k8s.ApiClient:
    """In-cluster credentials (the step pod), else the kubeconfig (a laptop)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return k8s.ApiClient()


def explain(
    exc: ApiException, verb: str, resource: str, namespace: str, hint: str
) -> UserError | None:
    """One line for an API error the user must fix (403, 404); None for any other.

    A 403 is either RBAC (the verb is missing: name it) or a validating admission
    webhook that denied the object (the operator's own rules: pass its message on).
    """
    if exc.status == 403:
        denial = _webhook_denial(_status_message(exc))
        if denial:
            return ClusterError(
                f'the cluster refused to {verb} {resource} in namespace {namespace}: {denial}'
            )
        return ClusterError(
            f'forbidden: this pod\'s ServiceAccount may not "{verb}" {resource} in namespace '
            f"{namespace}: grant it (the chart's Role does, rbac.create=true)"
        )
    if exc.status != 404:
        return None
    kind = _status_kind(exc)
    if kind == 'namespaces':
        return ClusterError(f'namespace {namespace} does not exist')
    if not kind:
        # No such group/version/resource: '404 page not found', or a Status naming no kind
        # ('the server could not find the requested resource').  A missing object names its kind.
        return ClusterError(f'the cluster has no {resource} API: {hint}')
    return None


def _status(exc: ApiException) -> dict[str, Any]:
    """The API server's Status object of an error response ({} if the body is not one)."""
    try:
        body = json.loads(exc.body or '{}')
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _status_kind(exc: ApiException) -> str:
    return (_status(exc).get('details') or {}).get('kind') or ''


def _status_message(exc: ApiException) -> str:
    return str(_status(exc).get('message') or exc.reason or '')


def _unknown_fields(exc: ApiException) -> list[str]:
    """The fields a strict create was refused for: the 400 of fieldValidation=Strict
    ('<Kind> in version "<v>" cannot be handled as a <Kind>: strict decoding error: unknown
    field "spec.x", unknown field "spec.y"'); [] for any other error."""
    if exc.status != 400:
        return []
    message = _status_message(exc)
    if 'strict decoding error' not in message and 'unknown field' not in message:
        return []
    return re.findall(r'unknown field "([^"]+)"', message)


def _webhook_denial(message: str) -> str:
    """'admission webhook "<name>" denied the request: <why>' out of a 403's message, on one
    line ('' when the 403 is not a webhook's: k8s.io/apiserver webhook/errors ToStatusErr)."""
    start = message.find('admission webhook ')
    if start < 0 or 'denied the request' not in message[start:]:
        return ''
    return ' '.join(message[start:].split())


class ClusterJob:
    """One training job on the cluster, from creation to deletion."""

    def __init__(
        self,
        kind: JobKind,
        manifest: dict[str, Any],
        state: Callable[[dict[str, Any]], JobState],
        log_selector: str,
        pods_selector: str,
        api: k8s.ApiClient | None = None,
        backoff: Backoff | None = None,
    ):
        self.kind, self.manifest, self.state = kind, manifest, state
        self.log_selector, self.pods_selector = log_selector, pods_selector
        self.backoff = backoff  # None: the operator enforces the job's restarts itself
        self.name = manifest['metadata']['name']
        self.namespace = manifest['metadata']['namespace']
        self.api = api or api_client()
        self.objects = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)

    # ----------------------------------------------------------------- create
    @contextlib.contextmanager
    def _explained(self, verb: str) -> Iterator[None]:
        """Inside it, an API error on the job's resource the user must fix is one clear line."""
        try:
            yield
        except ApiException as exc:
            unknown = _unknown_fields(exc)
            if unknown:
                raise ClusterError(
                    f"the cluster's {self.kind.resource} API has no field "
                    f'{", ".join(unknown)} (an older {self.kind.kind} CRD): '
                    f'{self.kind.strict_fields_hint or "update " + self.kind.operator}'
                ) from exc
            hint = f'install {self.kind.operator}, or choose another training_backend'
            error = explain(exc, verb, self.kind.resource, self.namespace, hint)
            if error:
                raise error from exc
            raise

    def _crd_call(self, verb: str, method: str, *args, **kwargs):
        """A call on the job's custom resource; 403/404 become one clear line."""
        fn = getattr(self.objects, method)
        base = (self.kind.group, self.kind.version, self.namespace, self.kind.plural)
        with self._explained(verb):
            return fn(*base, *args, **kwargs)

    def check_queue(self, queue: str) -> None:
        """A Kueue LocalQueue that does not exist leaves the job pending forever: refuse it."""
        if not queue:
            return
        try:
            self.objects.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, self.namespace, 'localqueues', queue
            )
        except ApiException as exc:
            resource = f'localqueues.{KUEUE_GROUP}'
            if exc.status == 404 and _status_kind(exc) == 'localqueues':
                raise ClusterError(
                    f'Kueue queue {queue!r} does not exist in namespace {self.namespace} '
                    '(kubectl get localqueues)'
                ) from exc
            hint = 'install Kueue, or leave the queue name empty'
            error = explain(exc, 'get', resource, self.namespace, hint)
            if error:
                raise error from exc
            raise

    def _create(self) -> None:
        strict = {'field_validation': 'Strict'} if self.kind.strict_fields_hint else {}
        self._crd_call('create', 'create_namespaced_custom_object', self.manifest, **strict)

    def submit(self) -> str:
        """Create the job; on 409 adopt a running one of the same spec, replace anything else.

        Returns 'created', 'adopted' or 'replaced'.
        """
        try:
            self._create()
            log.info('created %s %s/%s', self.kind.kind, self.namespace, self.name)
            return 'created'
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self._crd_call('get', 'get_namespaced_custom_object', self.name)
        found = self.state(existing)
        same = _spec_hash(existing) == _spec_hash(self.manifest)
        # A job another Workflow owns would go with that Workflow: not this run's to adopt.
        same_owner = _owners(existing) == _owners(self.manifest)
        if same and same_owner and not found.finished:
            log.info(
                'adopting the running %s %s/%s of this run (%s): a re-run of the step follows it',
                self.kind.kind,
                self.namespace,
                self.name,
                found.type,
            )
            return 'adopted'
        why = 'finished' if found.finished else 'built from other settings'
        if same and not same_owner and not found.finished:
            why = "owned by another run's Workflow"
        log.warning(
            'replacing %s %s/%s (%s, %s)',
            self.kind.kind,
            self.namespace,
            self.name,
            why,
            found.type,
        )
        self.delete(wait=True)
        try:
            self._create()
        except ApiException as exc:
            if exc.status != 409:
                raise
            raise self._still_there() from exc  # someone re-created it meanwhile
        return 'replaced'

    # ----------------------------------------------------------------- follow
    def states(self, timeout: float) -> Iterator[JobState]:
        """The job's states as the operator writes them, from the API's watch (no polling)."""
        deadline = time.monotonic() + timeout
        selector = f'metadata.name={self.name}'
        while time.monotonic() < deadline:
            window = int(max(1, min(WATCH_WINDOW_S, deadline - time.monotonic())))
            stream = self._watch(selector, window)
            seen = False
            for event in stream:
                seen = True
                if event['type'] == 'DELETED':
                    raise self._gone()
                yield self.state(event['object'])
            if not seen and not self.exists():
                raise self._gone()  # deleted between two watches
        raise TimeoutError(
            f'{self.kind.kind} {self.namespace}/{self.name} did not finish within {timeout:.0f}s'
        )

    def exists(self) -> bool:
        try:
            self._crd_call('get', 'get_namespaced_custom_object', self.name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _gone(self) -> TrainingJobFailed:
        return TrainingJobFailed(self.name, 'Deleted', 'the job was deleted before it finished')

    def wait(self, timeout: float) -> JobState:
        """Follow the job to its end, streaming rank 0's log; raise TrainingJobFailed on failure
        (the operator's, or more retried pods than the ``backoff`` allows).

        The job's watch and the pods' watch each run in a thread and report here, so
        whichever ends the job first is acted on at once."""
        logs = threading.Thread(target=self.stream_logs, args=(timeout,), daemon=True)
        logs.start()
        reports: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        followers = [self._follow_states] + ([self._count_retries] if self.backoff else [])
        for follow in followers:
            threading.Thread(target=follow, args=(timeout, reports, stop), daemon=True).start()
        last = None
        try:
            while True:
                try:  # a short wait, so that SIGTERM's handler runs promptly
                    kind, value = reports.get(timeout=0.5)
                except queue.Empty:
                    continue
                if kind == 'error':
                    raise value
                if kind == 'backoff':
                    raise TrainingJobFailed(
                        self.name, 'BackoffLimitExceeded', value, self.pod_exits()
                    )
                current = value
                if current != last:
                    log.info(
                        '%s %s: %s %s',
                        self.kind.kind,
                        self.name,
                        current.type,
                        current.message or '',
                    )
                    last = current
                if current.failed:
                    raise TrainingJobFailed(
                        self.name, current.reason, current.message, self.pod_exits()
                    )
                if current.succeeded:
                    logs.join(timeout=10)
                    return current
        finally:
            stop.set()

    def _follow_states(self, timeout: float, reports: queue.Queue, stop: threading.Event) -> None:
        """states() into ``reports`` until the job finishes; its error, if it raises one."""
        try:
            for current in self.states(timeout):
                if stop.is_set():
                    return
                reports.put(('state', current))
                if current.finished:
                    return
        except Exception as exc:
            reports.put(('error', exc))

    def _count_retries(self, timeout: float, reports: queue.Queue, stop: threading.Event) -> None:
        """Watch the job's pods and count those that failed and are retried; past the backoff
        limit, report it.  A missing pods permission is one line (the limit cannot be kept
        without it); any other watch error is logged and the watch resumed."""
        assert self.backoff is not None
        retried = RetriedPods(self.backoff, self.kind.container)
        version = None
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            watcher = watch.Watch()
            kwargs: dict[str, Any] = {
                'label_selector': self.pods_selector,
                'timeout_seconds': int(max(1, min(WATCH_WINDOW_S, deadline - started))),
            }
            if version:
                kwargs['resource_version'] = version
            try:
                for event in watcher.stream(
                    self.core.list_namespaced_pod, self.namespace, **kwargs
                ):
                    if stop.is_set():
                        return
                    pod = event['object']
                    version = (pod.metadata and pod.metadata.resource_version) or version
                    if not retried.add(pod):
                        continue
                    log.warning(
                        '%s %s: %s, retried by the operator (%d of the backoff limit %d)',
                        self.kind.kind,
                        self.name,
                        retried.last,
                        len(retried.failed),
                        self.backoff.limit,
                    )
                    if retried.exceeded:
                        reports.put(('backoff', retried.message()))
                        return
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: watch afresh
                    version = None
                    continue
                error = explain(exc, 'watch', 'pods', self.namespace, '')
                if exc.status == 403 and error:
                    reports.put(('error', error))
                    return
                log.warning('watching the training pods: %s', str(exc).splitlines()[0])
            except Exception as exc:  # a connection cut: watch again
                log.warning('watching the training pods: %s', str(exc).splitlines()[0])
            if time.monotonic() - started < REWATCH_PAUSE_S:
                stop.wait(REWATCH_PAUSE_S)

    def stream_logs(self, timeout: float) -> None:
        """Wait for rank 0's pod to start, then copy its log to ours line by line."""
        try:
            pod_name = self._first_started_pod(timeout)
            if not pod_name:
                return
            response = self.core.read_namespaced_pod_log(
                pod_name,
                self.namespace,
                container=self.kind.container,
                follow=True,
                _preload_content=False,
            )
            for raw in response.stream():
                for line in raw.decode(errors='replace').splitlines():
                    log.info('[%s] %s', pod_name, line)
        except Exception as exc:  # logs are a convenience: never fail the step over them
            log.warning('could not stream the training log: %s', str(exc).splitlines()[0])

    def _first_started_pod(self, timeout: float) -> str | None:
        stream = watch.Watch().stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.log_selector,
            timeout_seconds=int(max(1, min(timeout, 24 * 3600))),
        )
        for event in stream:
            pod = event['object']
            if pod.status and pod.status.phase in ('Running', 'Succeeded', 'Failed'):
                return pod.metadata.name
        return None

    def pod_exits(self) -> str:
        """Each terminated training container's exit code and reason, e.g. 'pod-x: exit 2 (Error)'."""
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.pods_selector)
        except ApiException:
            return ''
        exits = []
        for item in pods.items:
            for status in (item.status and item.status.container_statuses) or []:
                term = (status.state and status.state.terminated) or (
                    status.last_state and status.last_state.terminated
                )
                if status.name == self.kind.container and term and term.exit_code:
                    exits.append(f'{item.metadata.name}: exit {term.exit_code} ({term.reason})')
        return '; '.join(exits)

    # ----------------------------------------------------------------- delete
    def delete(self, wait: bool = False) -> None:
        """Delete the job and (foreground) its pods; a job already gone is fine."""
        body = k8s.V1DeleteOptions(
            propagation_policy='Foreground', grace_period_seconds=DELETE_GRACE_S
        )
        try:
            self.objects.delete_namespaced_custom_object(
                self.kind.group,
                self.kind.version,
                self.namespace,
                self.kind.plural,
                self.name,
                body=body,
            )
        except ApiException as exc:
            if exc.status == 404:
                return  # already gone
            error = explain(exc, 'delete', self.kind.resource, self.namespace, '')
            if error:
                raise error from exc
            raise
        log.info('deleted %s %s/%s', self.kind.kind, self.namespace, self.name)
        if wait and not self._wait_gone(REPLACE_WAIT_S):
            raise self._still_there()

    def _still_there(self) -> ClusterError:
        return ClusterError(
            f'{self.kind.kind} {self.namespace}/{self.name} of an earlier attempt was deleted '
            f'but is still there after {REPLACE_WAIT_S}s (its pods still terminating, or a '
            f'finalizer): re-run the step once `kubectl -n {self.namespace} get '
            f'{self.kind.resource} {self.name}` finds nothing'
        )

    def _watch(self, field_selector: str, timeout: int) -> Iterator[dict[str, Any]]:
        """The API's watch of this kind of job in the namespace (events as dicts); a missing
        watch verb or API is one clear line, like every other call on the job."""
        stream = watch.Watch().stream(
            self.objects.list_namespaced_custom_object,
            self.kind.group,
            self.kind.version,
            self.namespace,
            self.kind.plural,
            field_selector=field_selector,
            timeout_seconds=timeout,
        )
        with self._explained('watch'):
            yield from stream

    def _wait_gone(self, timeout: int) -> bool:
        """Until the API no longer has the job (a foreground delete waits for its pods);
        whether it is gone."""
        if not self.exists():
            return True
        for event in self._watch(f'metadata.name={self.name}', timeout):
            if event['type'] == 'DELETED':
                return True
        return not self.exists()

    def run(self, timeout: float, queue: str = '') -> JobState:
        """Submit, follow and always delete the job (success, failure, SIGTERM)."""
        self.check_queue(queue)
        with deleted_at_exit(self):
            self.submit()
            return self.wait(timeout)


def _owners(obj: dict[str, Any]) -> list[str]:
    """The uids of the object's owners (sorted; [] for none)."""
    refs = (obj.get('metadata') or {}).get('ownerReferences') or []
    return sorted(ref.get('uid', '') for ref in refs)


def _spec_hash(obj: dict[str, Any]) -> str:
    return ((obj.get('metadata') or {}).get('annotations') or {}).get('video-kd/spec-sha256', '')


@contextlib.contextmanager
def deleted_at_exit(job: ClusterJob) -> Iterator[None]:
    """Delete the job when the block ends, however it ends, SIGTERM included.

    KFP cancels a run by deleting its pods: the step pod gets SIGTERM and
    its grace period; the handler turns it into ``StepTerminated`` so the
    ``finally`` deletes the job and its GPUs go back to the cluster.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        try:
            job.delete()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: Any) -> None:
    raise StepTerminated(128 + signum)
