"""What both operator backends do with the Kubernetes API: create (or adopt / replace) the
job, follow its status with a watch, stream rank 0's log, save every pod's log to the run,
explain a failure, delete the job, and enforce a backoff limit the operator does not
(``Backoff``: the PyTorchJob's).

Following a job lasts days, so it outlives the control plane's routine events: each watch
resumes from the last resourceVersion it saw, a 410 Gone (that version compacted away) starts
over from the current state, and transient API errors (a connection cut, a timeout, 429 after
its Retry-After, 500/502/503/504) are retried with a doubling pause for at most
``VIDEO_KD_WATCH_RETRY_S`` seconds of continuous failure (``WATCH_RETRY_S``).  Only a
definitive answer ends the step and deletes the job: the job's own Succeeded/Failed (its
deadline included), the job deleted by someone else, the backoff limit, SIGTERM.  Past the
retry budget the step exits (``SupervisionLost``, status 75) and leaves the job running: a
retry of the step adopts it.

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
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config, watch
from kubernetes.client.exceptions import ApiException

from video_kd.backends.spec import RELEASE_LABEL, RUN_ID_ANNOTATION
from video_kd.core.errors import TEMPORARY_FAILURE, UserError
from video_kd.runs import RunLayout, publish
from video_kd.storage import s3

log = logging.getLogger(__name__)
KUEUE_GROUP, KUEUE_VERSION = 'kueue.x-k8s.io', 'v1beta1'
DELETE_GRACE_S = 30
WATCH_WINDOW_S = 300  # one watch request; the loop re-watches until the job's deadline
REWATCH_PAUSE_S = 1.0  # least time between two pod watches (a watch that ended at once)
REPLACE_WAIT_S = 120  # how long a replace waits for the old job (and its pods) to go
# Continuous failure of the API the step rides out while it follows a job (an API server
# upgrade, a load balancer's restart); env VIDEO_KD_WATCH_RETRY_S overrides it.
WATCH_RETRY_S = 900.0
WATCH_BACKOFF_S = (
    1.0,
    30.0,
)  # first and longest pause between tries (env: VIDEO_KD_WATCH_BACKOFF_S)
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
LOG_SAVE_WAIT_S = 15  # how long the step waits for the logs of ended pods before it goes on
FAILURES_NAMED = 4  # a failure's line names the last few failed pods (a line, not a page)
RELIST = {'type': 'RELIST'}  # a watch starts over from the current state (after a 410 Gone)


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


class SupervisionLost(UserError):
    """The API kept failing for longer than the retry budget: the step stops following the job
    and leaves it running (status 75: a retry of the step adopts the job)."""

    exit_status = TEMPORARY_FAILURE


def retry_settings() -> tuple[float, float]:
    """(budget, first pause) in seconds: VIDEO_KD_WATCH_RETRY_S, VIDEO_KD_WATCH_BACKOFF_S."""
    try:
        budget = float(os.environ.get('VIDEO_KD_WATCH_RETRY_S', WATCH_RETRY_S))
        first = float(os.environ.get('VIDEO_KD_WATCH_BACKOFF_S', WATCH_BACKOFF_S[0]))
    except ValueError as exc:
        raise ClusterError(
            f'VIDEO_KD_WATCH_RETRY_S and VIDEO_KD_WATCH_BACKOFF_S are seconds: {exc}'
        ) from exc
    return budget, first


def transient(exc: BaseException) -> bool:
    """Whether an API call's error passes by itself: a connection reset or cut mid-stream,
    a timeout, 429 (throttled), 500/502/503/504 (an API server or its balancer restarting)."""
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUSES or not exc.status  # 0: a TLS error
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def _retry_after(exc: BaseException) -> float | None:
    """The seconds a 429's (or 503's) Retry-After asks for; None if it has none."""
    value = (getattr(exc, 'headers', None) or {}).get('Retry-After')
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the doubling pause instead
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0]}' if text else type(exc).__name__


class ApiRetry:
    """Retries of the API calls that follow a job: a pause that doubles (up to
    ``WATCH_BACKOFF_S[1]``), one log line per retry, for at most the budget of continuous
    failure; past it, ``SupervisionLost``.  Any success resets it.  A 429 or 503 with a
    Retry-After is first retried by the client's urllib3 (3 times, after the time the server
    asks for); after those, here too the server's Retry-After is the pause."""

    def __init__(self, what: str, stop: threading.Event | None = None):
        self.what, self.stop = what, stop or threading.Event()
        self.budget, self.first = retry_settings()
        self.pause, self.since = self.first, None  # type: float, float | None

    def ok(self) -> None:
        self.pause, self.since = self.first, None

    def failed(self, exc: BaseException) -> None:
        """Wait before the next try, or raise SupervisionLost past the budget."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        failing = now - self.since
        if failing >= self.budget:
            raise SupervisionLost(
                f'{self.what}: the Kubernetes API kept failing for {failing:.0f}s, past the '
                f'retry budget of {self.budget:.0f}s (VIDEO_KD_WATCH_RETRY_S; the last: '
                f'{_first_line(exc)}): the job is left running, and a retry of the step '
                'adopts it'
            ) from exc
        asked = _retry_after(exc)
        pause = min(self.pause if asked is None else asked, self.budget - failing)
        log.warning(
            '%s: %s; retrying in %.1fs (failing for %.0fs of the %.0fs allowed)',
            self.what,
            _first_line(exc),
            pause,
            failing,
            self.budget,
        )
        self.pause = min(self.pause * 2, WATCH_BACKOFF_S[1])
        self.stop.wait(pause)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, tried again while it fails transiently."""
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not transient(exc):
                    raise
                self.failed(exc)
                continue
            self.ok()
            return result


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
        layout: RunLayout | None = None,
    ):
        self.kind, self.manifest, self.state = kind, manifest, state
        self.log_selector, self.pods_selector = log_selector, pods_selector
        self.backoff = backoff  # None: the operator enforces the job's restarts itself
        self.name = manifest['metadata']['name']
        self.namespace = manifest['metadata']['namespace']
        self.api = api or api_client()
        self.objects = k8s.CustomObjectsApi(self.api)
        self.core = k8s.CoreV1Api(self.api)
        self.foreign = False  # the name is taken by another release's job: never delete it
        self.pod_logs = PodLogs(self, layout)  # layout None: the logs are not saved

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
        retry = ApiRetry(f'{verb} {self.kind.kind} {self.namespace}/{self.name}')
        with self._explained(verb):
            return retry.call(fn, *base, *args, **kwargs)

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
        self._refuse_another_releases(existing)
        if (existing.get('metadata') or {}).get('deletionTimestamp'):
            # Being deleted (a cleanup just before this re-run): adopting it would follow a job
            # that is about to vanish; wait it out and start afresh.
            log.info(
                'waiting for %s %s/%s, which is being deleted, to go before creating it afresh',
                self.kind.kind,
                self.namespace,
                self.name,
            )
            return self._recreate()
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
        self.delete()
        return self._recreate()

    def _recreate(self) -> str:
        """Create the job once the old one of the same name is gone."""
        if not self._wait_gone(REPLACE_WAIT_S):
            raise self._still_there()
        try:
            self._create()
        except ApiException as exc:
            if exc.status != 409:
                raise
            raise self._still_there() from exc  # someone re-created it meanwhile
        return 'replaced'

    def _refuse_another_releases(self, existing: dict[str, Any]) -> None:
        """A job of this name that another release made (an explicit run id reused in
        another release of this namespace) is neither adopted nor replaced: one line, and
        ``delete`` leaves it alone."""
        ours, theirs = _release(self.manifest), _release(existing)
        if ours == theirs:
            return
        self.foreign = True
        run_id = self.manifest['metadata'].get('annotations', {}).get(RUN_ID_ANNOTATION, '')
        raise ClusterError(
            f'{self.kind.kind} {self.namespace}/{self.name} (run id {run_id!r}) belongs to '
            f'release {theirs or "(none)"!r}, not to this one ({ours or "(none)"!r}): the run '
            'id is taken in this namespace; start this run with another run_id (nothing '
            'was deleted)'
        )

    # ----------------------------------------------------------------- follow
    def states(self, timeout: float, stop: threading.Event | None = None) -> Iterator[JobState]:
        """The job's states as the operator writes them, from the API's watch (no polling),
        riding out the API's transient failures (``_events``)."""
        retry = ApiRetry(f'following {self.kind.kind} {self.namespace}/{self.name}', stop)
        events = self._events(
            self.objects.list_namespaced_custom_object,
            self.kind.group,
            self.kind.version,
            self.namespace,
            self.kind.plural,
            retry=retry,
            deadline=time.monotonic() + timeout,
            field_selector=f'metadata.name={self.name}',
        )
        with self._explained('watch'):
            for event in events:
                if event is RELIST:
                    if not retry.call(self.exists):
                        raise self._gone()  # deleted while the watch was away
                    continue
                if event['type'] == 'DELETED':
                    raise self._gone()
                yield self.state(event['object'])
        if stop is None or not stop.is_set():
            raise TimeoutError(
                f'{self.kind.kind} {self.namespace}/{self.name} did not finish within '
                f'{timeout:.0f}s'
            )

    def _events(
        self, list_fn: Callable[..., Any], *args: Any, retry: ApiRetry, deadline: float, **selector
    ) -> Iterator[dict[str, Any]]:
        """The events of a watch that lasts until ``deadline`` (or ``retry.stop``): each request
        resumes from the last resourceVersion seen; a 410 Gone (that version compacted away)
        starts over from the current state, announced by ``RELIST``; transient errors are
        retried (``retry``, which raises SupervisionLost past its budget); any other is raised."""
        version = None
        while not retry.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            watcher = watch.Watch()
            kwargs = {
                **selector,
                'timeout_seconds': int(max(1, min(WATCH_WINDOW_S, deadline - started))),
            }
            if version:
                kwargs['resource_version'] = version
            try:
                for event in watcher.stream(list_fn, *args, **kwargs):
                    retry.ok()
                    version = watcher.resource_version or version
                    yield event
                retry.ok()
            except ApiException as exc:
                if exc.status == 410:
                    log.info(
                        '%s: resourceVersion %s expired (410): from the start', retry.what, version
                    )
                    version = None
                    yield RELIST
                    continue
                if not transient(exc):
                    raise
                retry.failed(exc)
                continue
            except Exception as exc:  # a connection cut mid-stream, a timeout
                if not transient(exc):
                    raise
                retry.failed(exc)
                continue
            if time.monotonic() - started < REWATCH_PAUSE_S:  # a watch that ended at once
                retry.stop.wait(REWATCH_PAUSE_S)

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
        """Follow the job to its end, streaming rank 0's log and saving every pod's; raise
        TrainingJobFailed on failure (the operator's, or more retried pods than the ``backoff``
        allows), naming the failed pods, their exits and their logs.

        The job's watch and the pods' watch each run in a thread and report here, so
        whichever ends the job first is acted on at once."""
        reports: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        for follow in (self._follow_states, self._follow_pods):
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
                    raise self._failed('BackoffLimitExceeded', value)
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
                    raise self._failed(current.reason, current.message)
                if current.succeeded:
                    return current
        finally:
            stop.set()

    def _failed(self, reason: str | None, message: str | None) -> TrainingJobFailed:
        """The failure, once the pods' logs are saved: its line names where they are."""
        self.pod_logs.save(running_too=True)
        detail = self.pod_logs.failures() or self.pod_exits()
        return TrainingJobFailed(self.name, reason, message, detail)

    def _follow_states(self, timeout: float, reports: queue.Queue, stop: threading.Event) -> None:
        """states() into ``reports`` until the job finishes; its error, if it raises one."""
        try:
            for current in self.states(timeout, stop):
                if stop.is_set():
                    return
                reports.put(('state', current))
                if current.finished:
                    return
        except Exception as exc:
            reports.put(('error', exc))

    def _follow_pods(self, timeout: float, reports: queue.Queue, stop: threading.Event) -> None:
        """Watch the job's pods: follow each one's log (``PodLogs``) and, with a ``backoff``,
        count those that failed and are retried; past the limit, report it.  Without the
        pods' watch the limit cannot be kept: its error is reported then (one line for a
        missing permission); otherwise only the logs are missed, and it is logged."""
        retried = RetriedPods(self.backoff, self.kind.container) if self.backoff else None
        what = f'watching the pods of {self.kind.kind} {self.namespace}/{self.name}'
        events = self._events(
            self.core.list_namespaced_pod,
            self.namespace,
            retry=ApiRetry(what, stop),
            deadline=time.monotonic() + timeout,
            label_selector=self.pods_selector,
        )
        try:
            for event in events:
                if event is RELIST:
                    continue  # pods are told apart by UID: seeing one again changes nothing
                pod = event['object']
                self.pod_logs.seen(pod)
                if retried is None or not retried.add(pod):
                    continue
                log.warning(
                    '%s %s: %s, retried by the operator (%d of the backoff limit %d)',
                    self.kind.kind,
                    self.name,
                    retried.last,
                    len(retried.failed),
                    retried.backoff.limit,
                )
                if retried.exceeded:
                    reports.put(('backoff', retried.message()))
                    return
        except Exception as exc:
            error = isinstance(exc, ApiException) and explain(
                exc, 'watch', 'pods', self.namespace, ''
            )
            if retried is not None:
                reports.put(('error', error or exc))
            else:
                log.warning('%s: %s (pod logs not followed)', what, _first_line(exc))

    def list_pods(self) -> list[Any]:
        try:
            return self.core.list_namespaced_pod(
                self.namespace, label_selector=self.pods_selector
            ).items
        except (ApiException, urllib3.exceptions.HTTPError):
            return []

    def pod_exits(self) -> str:
        """Each terminated training container's exit code and reason, e.g. 'pod-x: exit 2 (Error)'."""
        exits = []
        for item in self.list_pods():
            code, reason = terminated(item, self.kind.container)
            if code:
                exits.append(f'{item.metadata.name}: exit {code} ({reason})')
        return '; '.join(exits)

    # ----------------------------------------------------------------- delete
    def delete(self) -> None:
        """Delete the job and (foreground) its pods; a job already gone is fine."""
        if self.foreign:
            return  # another release's job, of the same name: not ours to delete
        body = k8s.V1DeleteOptions(
            propagation_policy='Foreground', grace_period_seconds=DELETE_GRACE_S
        )
        retry = ApiRetry(f'deleting {self.kind.kind} {self.namespace}/{self.name}')
        try:
            retry.call(
                self.objects.delete_namespaced_custom_object,
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
        """Submit, follow and delete the job once it ends (success, failure, SIGTERM), its
        pods' logs saved first; a lost API (``SupervisionLost``) leaves it running."""
        self.check_queue(queue)
        with deleted_at_exit(self):
            self.submit()
            try:
                return self.wait(timeout)
            except SupervisionLost:
                # the job goes on: a running pod's log is saved whole by the step that adopts it
                self.pod_logs.save(running_too=False)
                raise
            finally:
                self.pod_logs.save(running_too=True)  # nothing left to do after the above
                self.pod_logs.close()


def _release(obj: dict[str, Any]) -> str:
    return ((obj.get('metadata') or {}).get('labels') or {}).get(RELEASE_LABEL, '')


def _owners(obj: dict[str, Any]) -> list[str]:
    """The uids of the object's owners (sorted; [] for none)."""
    refs = (obj.get('metadata') or {}).get('ownerReferences') or []
    return sorted(ref.get('uid', '') for ref in refs)


def _spec_hash(obj: dict[str, Any]) -> str:
    return ((obj.get('metadata') or {}).get('annotations') or {}).get('video-kd/spec-sha256', '')


def terminated(pod: Any, container: str) -> tuple[int | None, str]:
    """The exit code and reason of a V1Pod's training container, if it has ended (its last
    run, if it was restarted and runs again); (None, '') if not."""
    for status in (pod.status and pod.status.container_statuses) or []:
        term = (status.state and status.state.terminated) or (
            status.last_state and status.last_state.terminated
        )
        if status.name == container and term:
            return term.exit_code, term.reason or 'Error'
    return None, ''


def _restarts(pod: Any, container: str) -> int:
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name == container:
            return status.restart_count or 0
    return 0


def _ended(pod: Any, container: str) -> bool:
    """Whether the pod's training container has ended for good (the pod Succeeded or Failed,
    or the container terminated and not restarted)."""
    if pod.status and pod.status.phase in ('Succeeded', 'Failed'):
        return True
    for status in (pod.status and pod.status.container_statuses) or []:
        if status.name == container and status.state and status.state.terminated:
            return True
    return False


@dataclass
class PodLog:
    """One pod's log (a re-created pod keeps its name, not its UID: a log each)."""

    name: str
    uid: str
    path: Path
    echo: bool  # rank 0: copied into the step's log as it comes
    exit_code: int | None = None
    reason: str = ''
    uri: str = ''  # where it was saved
    saving: bool = False
    previous: set[int] = field(default_factory=set)  # restarts whose run's log is saved
    started: threading.Event = field(default_factory=threading.Event)  # its log is coming
    ended: threading.Event = field(default_factory=threading.Event)
    saved: threading.Event = field(default_factory=threading.Event)


class PodLogs:
    """Every training pod's log, recreated pods included: followed while the pod runs (rank 0's
    copied into the step's log), read whole once its container ends, and saved to
    ``<run>/train/logs/<pod>.<uid8>.log`` (recorded in the run manifest) as soon as the pod
    ends, and for pods still running, before the job is deleted."""

    def __init__(self, job: ClusterJob, layout: RunLayout | None):
        self.job, self.layout = job, layout
        self.echo_labels = dict(p.split('=', 1) for p in job.log_selector.split(',') if '=' in p)
        self._dir: Path | None = None  # made when the first pod is followed
        self.pods: dict[str, PodLog] = {}  # by UID
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.closed = False

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix='video-kd-pod-logs-'))
        return self._dir

    def seen(self, pod: Any) -> None:
        """A pod from the watch or a list: note its exit; follow its log once it has started."""
        meta, container = pod.metadata, self.job.kind.container
        if (
            self.closed
            or not pod.status
            or pod.status.phase not in ('Running', 'Succeeded', 'Failed')
        ):
            return
        uid = meta.uid or meta.name
        with self.lock:
            entry = self.pods.get(uid)
            if entry is None:
                labels = meta.labels or {}
                echo = bool(self.echo_labels) and self.echo_labels.items() <= labels.items()
                entry = PodLog(meta.name, uid, self.dir / f'{meta.name}.{uid[:8]}.log', echo)
                self.pods[uid] = entry
                threading.Thread(target=self._follow, args=(entry,), daemon=True).start()
        code, reason = terminated(pod, container)
        if code is not None:
            entry.exit_code, entry.reason = code, reason
        if _ended(pod, container):
            entry.ended.set()

    def _follow(self, entry: PodLog) -> None:
        """Copy the pod's log until its container ends (again after a cut connection: a follow
        starts from the log's beginning), then read it whole and save it; a restarted
        container's previous run is saved beside it (``_save_previous``)."""
        core, namespace = self.job.core, self.job.namespace
        container, echoed = self.job.kind.container, 0
        while True:
            try:
                echoed = self._stream(entry, echoed)
            except Exception as exc:  # a cut stream: look at the pod, then follow again
                log.debug('following the log of %s: %s', entry.name, _first_line(exc))
            entry.started.set()
            try:
                pod = core.read_namespaced_pod(entry.name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    break  # gone (a re-created pod's predecessor): keep what was followed
                pod = None  # the API is away: look again
            except Exception:
                pod = None
            if pod is not None:
                if pod.metadata.uid != entry.uid:
                    break  # the same name, another pod: this one is gone
                self._save_previous(entry, pod)
                if _ended(pod, container):
                    self.seen(pod)
                    self._read_whole(entry)
                    break
            if self.stop.wait(REWATCH_PAUSE_S):
                return  # the step ends: save() takes what was followed
        entry.ended.set()
        self._save(entry)

    def _read_whole(self, entry: PodLog, previous: bool = False, path: Path | None = None) -> bool:
        """The ended container's whole log (``previous``: the run before its restart) into
        its file; whether it could be read."""
        try:
            response = self.job.core.read_namespaced_pod_log(
                entry.name,
                self.job.namespace,
                container=self.job.kind.container,
                previous=previous,
                _preload_content=False,
            )
            (path or entry.path).write_bytes(response.data)
        except Exception as exc:
            log.debug('reading the log of %s: %s', entry.name, _first_line(exc))
            return False
        return True

    def _save_previous(self, entry: PodLog, pod: Any) -> None:
        """A container restarted in place (restartCount n): its run n-1's log, which the
        kubelet keeps until the next restart, to ``<pod>.<uid8>.restart<n-1>.log``."""
        restarts = _restarts(pod, self.job.kind.container)
        if not restarts or restarts - 1 in entry.previous:
            return
        entry.previous.add(restarts - 1)
        path = self.dir / f'{entry.name}.{entry.uid[:8]}.restart{restarts - 1}.log'
        if self._read_whole(entry, previous=True, path=path):
            self._publish(entry, path)

    def _stream(self, entry: PodLog, echoed: int) -> int:
        """Follow the pod's log into its file; rank 0's lines past ``echoed`` into ours."""
        response = self.job.core.read_namespaced_pod_log(
            entry.name,
            self.job.namespace,
            container=self.job.kind.container,
            follow=True,
            _preload_content=False,
        )
        count, pending = 0, b''
        with entry.path.open('wb') as out:
            for chunk in response.stream():
                out.write(chunk)
                out.flush()
                entry.started.set()
                if not entry.echo:
                    continue
                *lines, pending = (pending + chunk).split(b'\n')
                for line in lines:
                    count += 1
                    if count > echoed:
                        log.info('[%s] %s', entry.name, line.decode(errors='replace'))
        return max(count, echoed)

    def _save(self, entry: PodLog) -> None:
        """Upload the pod's log into the run (once)."""
        with self.lock:
            if entry.saving:
                return
            entry.saving = True
        try:
            entry.uri = self._publish(entry, entry.path)
        finally:
            entry.saved.set()

    def _publish(self, entry: PodLog, path: Path) -> str:
        """``path`` as ``<run>/train/logs/<its name>``, recorded in the manifest; its URI ('' when
        not saved: no run, or S3 failed — a log is worth less than the training)."""
        if self.layout is None or not path.exists():
            return ''
        try:
            return publish(self.layout, 'train', path, 'logs', path.name).uri
        except (s3.S3Error, OSError) as exc:
            log.warning('could not save the log of %s: %s', entry.name, _first_line(exc))
            return ''

    def save(self, running_too: bool) -> None:
        """Save the logs not saved yet: those of ended pods (their reads given up to
        LOG_SAVE_WAIT_S), and with ``running_too`` what the running ones logged so far (the
        job is about to be deleted).  Once only."""
        if self.closed:
            return
        for pod in self.job.list_pods():  # the pods as they end, whatever the watch saw
            self.seen(pod)
        self.closed = True  # no pod followed from now on
        self.stop.set()
        deadline = time.monotonic() + LOG_SAVE_WAIT_S
        with self.lock:
            entries = list(self.pods.values())
        for entry in entries:
            wait_for = entry.saved if entry.ended.is_set() else entry.started
            wait_for.wait(max(0.0, deadline - time.monotonic()))
            if running_too or entry.ended.is_set():
                self._save(entry)

    def failures(self) -> str:
        """'<pod>: exit 137 (OOMKilled), log s3://.../train/logs/<pod>.<uid8>.log' for each
        pod whose training container failed."""
        found = []
        with self.lock:
            entries = list(self.pods.values())
        for entry in entries:
            if entry.exit_code:
                where = f', log {entry.uri}' if entry.uri else ''
                found.append(f'{entry.name}: exit {entry.exit_code} ({entry.reason}){where}')
        if len(found) <= FAILURES_NAMED:
            return '; '.join(found)
        earlier = len(found) - FAILURES_NAMED
        where = f' (logs in {self.layout.uri("train", "logs")}/)' if self.layout else ''
        return '; '.join(found[-FAILURES_NAMED:]) + f'; {earlier} earlier failures{where}'

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def deleted_at_exit(job: ClusterJob) -> Iterator[None]:
    """Delete the job when the block ends, however it ends, SIGTERM included — except when
    the step lost the API (``SupervisionLost``): the job is running, a retry adopts it.

    KFP cancels a run by deleting its pods: the step pod gets SIGTERM and
    its grace period; the handler turns it into ``StepTerminated`` so the
    ``finally`` deletes the job and its GPUs go back to the cluster.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    keep = False
    try:
        yield
    except SupervisionLost:
        keep = True
        raise
    finally:
        try:
            if keep:
                log.warning(
                    'left %s %s/%s running: a retry of the step adopts it',
                    job.kind.kind,
                    job.namespace,
                    job.name,
                )
            else:
                job.delete()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: Any) -> None:
    raise StepTerminated(128 + signum)
