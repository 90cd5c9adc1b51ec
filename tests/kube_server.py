"""A small Kubernetes API server on 127.0.0.1 for the backend tests.

No cluster can run here, so the real ``kubernetes`` client talks HTTP to
this: custom objects (create / get / delete / watch, with the 404 a missing
CRD gives, the 403 RBAC gives, the 403 of a validating admission webhook
that denies the object, the 400 strict field validation gives for a field an
older CRD lacks and the 409 a duplicate name gives), pods
(list / watch by label selector) and pod logs.  A job's status comes from a
script of conditions, written the way the operators write them, played on
its watch (a number in the script: a pause of that many seconds), once per
created job: a watch that ends and resumes from its resourceVersion goes on
where the last one stopped.  As a real API server, objects carry
resourceVersions, a watch from an old version replays what happened since,
and one from a compacted version gets a 410 Gone ERROR event.  Faults a long
watch meets: ``CUT`` in a script ends the connection mid-stream, ``GONE``
cuts it and compacts the history (the resumed watch gets 410), ``DELETE``
deletes the job (someone else), ``VANISH`` does that unseen (the
connection cut first), and ``watch_faults`` answers the next
watches of a resource with an HTTP error each (429 with ``retry_after``, 500,
503).  A pod watch gives the pods as ADDED, then ``pod_events`` (type, pod)
as the operator's re-creating a failed pod makes them: the same name, a new UID.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client as k8s

CRDS = {
    'kubeflow.org/v1/pytorchjobs',
    'trainer.kubeflow.org/v1alpha1/trainjobs',
    'kueue.x-k8s.io/v1beta1/localqueues',
}
HOLD = 'hold'  # a script step: keep the watch open (the job runs) until the job is deleted
CUT = 'cut'  # a script step: the connection ends mid-stream (API server restart, idle timeout)
GONE = 'gone'  # a script step: CUT, and the history compacted (a resumed watch gets 410)
DELETE = 'delete'  # a script step: someone else deletes the job
VANISH = 'vanish'  # a script step: someone deletes the job, and the connection ends (CUT) first
WATCH_MAX_S = 10  # the longest one watch request is held open
_OBJ = re.compile(r'^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$')
_POD = re.compile(r'^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+?)(/log)?)?$')
_ONE_POD = re.compile(r'^/api/v1/namespaces/([^/]+)/pods/([^/]+)$')  # get pod (RBAC-checked)


def status(code: int, reason: str, message: str, kind: str = '', **details: str) -> dict:
    details = {'kind': kind, **details} if kind else {}
    return {
        'kind': 'Status',
        'apiVersion': 'v1',
        'status': 'Failure',
        'message': message,
        'reason': reason,
        'details': details,
        'code': code,
    }


class FakeKube:
    def __init__(self):
        self.crds = set(CRDS)
        self.namespaces = {'ml'}
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.scripts: dict[str, list] = {}  # job name -> conditions lists (or HOLD) per watch
        self.cursor: dict[str, int] = {}  # job name -> the next script step (0 on each create)
        self.version = 0  # the last resourceVersion given
        self.compacted = 0  # a watch from an older resourceVersion gets 410 Gone
        self.history: dict[tuple[str, str, str], list[tuple[int, str, dict]]] = {}
        # plural -> HTTP statuses, one answered to each of the next watches of that resource
        self.watch_faults: dict[str, list[int]] = {}
        self.retry_after = '0.2'  # a 429's Retry-After (seconds)
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural)
        # plural -> (webhook name, rules): a validating admission webhook on create; the rules
        # return what they refuse in the object ([] admits it)
        self.admission: dict[str, tuple[str, Callable[[dict], list[str]]]] = {}
        self.lingering: set[str] = set()  # jobs a DELETE only marks (pods still terminating)
        # plural -> the spec fields the installed CRD version has (an older operator's): a
        # create with fieldValidation=Strict naming another is refused with the API server's
        # 400, without it the field is dropped (the default, 'Warn')
        self.spec_fields: dict[str, set[str]] = {}
        self.field_validation: list[str] = []  # each create's fieldValidation ('' if none)
        self.pods: list[dict] = []
        self.pod_events: list[tuple[str, dict]] = []  # played on every pod watch, after pods
        self.logs: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.watches: list[dict] = []  # each watch's query parameters
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def api(self) -> k8s.ApiClient:
        config = k8s.Configuration()
        config.host = self.url
        return k8s.ApiClient(config)

    def verbs(self, plural: str) -> list[str]:
        return [verb for verb, path in self.calls if f'/{plural}' in path]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _send(self, code: int, body, content_type='application/json'):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str):
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                verb = method
                if method == 'GET' and query.get('watch') in ('True', 'true', '1'):
                    verb = 'WATCH'
                fake.calls.append((verb, url.path))
                if verb == 'WATCH':
                    fake.watches.append({'path': url.path, **query})
                length = int(self.headers.get('Content-Length') or 0)
                body = json.loads(self.rfile.read(length) or b'null') if length else None
                if match := _OBJ.match(url.path):
                    return fake._objects(self, verb, *match.groups(), body=body, query=query)
                if verb == 'GET' and (match := _ONE_POD.match(url.path)):
                    return fake._one_pod(self, *match.groups())
                if match := _POD.match(url.path):
                    return fake._pods(self, verb, *match.groups(), query=query)
                return self._send(404, b'404 page not found', 'text/plain')

            def do_GET(self):
                self._route('GET')

            def do_POST(self):
                self._route('POST')

            def do_DELETE(self):
                self._route('DELETE')

        return Handler

    # ------------------------------------------------------------- objects
    def _objects(self, h, verb, group, version, ns, plural, name, body, query):
        if f'{group}/{version}/{plural}' not in self.crds:
            # what the API server answers for a group/version/resource it does not serve
            msg = 'the server could not find the requested resource'
            return h._send(404, status(404, 'NotFound', msg))
        rbac_verb = {'POST': 'create', 'GET': 'get', 'DELETE': 'delete', 'WATCH': 'watch'}[verb]
        if (rbac_verb, plural) in self.forbidden:
            # what RBAC answers (apierrors.NewForbidden)
            msg = (
                f'{plural}.{group} is forbidden: User "system:serviceaccount:{ns}:video-kd" '
                f'cannot {rbac_verb} resource "{plural}" in API group "{group}" in the '
                f'namespace "{ns}"'
            )
            return h._send(403, status(403, 'Forbidden', msg, plural, group=group))
        if ns not in self.namespaces:
            return h._send(
                404, status(404, 'NotFound', f'namespaces "{ns}" not found', 'namespaces')
            )
        if verb == 'POST':
            self.field_validation.append(query.get('fieldValidation', ''))
        if verb == 'POST' and plural in self.spec_fields:
            known = self.spec_fields[plural]
            unknown = [f for f in body.get('spec') or {} if f not in known]
            if unknown and query.get('fieldValidation') == 'Strict':
                return h._send(400, strict_decoding_error(body, unknown))
            body = {**body, 'spec': {k: v for k, v in body['spec'].items() if k in known}}
        if verb == 'POST' and plural in self.admission:
            webhook, rules = self.admission[plural]
            refused = rules(body)
            if refused:
                return h._send(403, webhook_denial(group, plural, body, webhook, refused))
        if verb == 'POST':
            key = (plural, ns, body['metadata']['name'])
            with self.lock:
                if key in self.objects:
                    msg = f'{plural}.{group} "{key[2]}" already exists'
                    return h._send(409, status(409, 'AlreadyExists', msg, plural))
                self.cursor[key[2]] = 0
                self.history[key] = []
                body = self.put(key, body, 'ADDED')
            return h._send(201, body)
        if verb == 'WATCH':
            faults = self.watch_faults.get(plural)
            if faults:
                return self._fault(h, faults.pop(0))
            wanted = query.get('fieldSelector', '').removeprefix('metadata.name=')
            return self._watch(h, (plural, ns, wanted), plural, query)
        key = (plural, ns, name)
        if key not in self.objects:
            msg = f'{plural}.{group} "{name}" not found'
            return h._send(404, status(404, 'NotFound', msg, plural))
        if verb == 'DELETE':
            with self.lock:
                # a foreground delete whose pods still terminate only marks the job
                lingers = name in self.lingering
                obj = self.mark_deleting(key) if lingers else self.remove(key)
            return h._send(200, obj)
        return h._send(200, self.objects[key])

    # ------------------------------------------------------------- changes, as history
    def put(self, key, obj, kind='MODIFIED') -> dict:
        """Store the object under a new resourceVersion and note the change."""
        self.version += 1
        meta = {**(obj.get('metadata') or {}), 'resourceVersion': str(self.version)}
        obj = {**obj, 'metadata': meta}
        self.objects[key] = obj
        self.history.setdefault(key, []).append((self.version, kind, obj))
        return obj

    def remove(self, key) -> dict:
        """Delete the object (its DELETED event carries a new resourceVersion)."""
        obj = self.objects.pop(key)
        self.version += 1
        obj = {**obj, 'metadata': {**obj['metadata'], 'resourceVersion': str(self.version)}}
        self.history.setdefault(key, []).append((self.version, 'DELETED', obj))
        return obj

    def mark_deleting(self, key) -> dict:
        """What a delete does to an object with finalizers, or whose pods still terminate."""
        obj = self.objects[key]
        meta = {**(obj.get('metadata') or {}), 'deletionTimestamp': '2026-01-01T00:00:00Z'}
        return self.put(key, {**obj, 'metadata': meta})

    def _fault(self, h, code: int):
        reason = {429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable'}
        body = json.dumps(status(code, reason.get(code, 'Error'), f'fault {code}')).encode()
        h.send_response(code)
        h.send_header('Content-Type', 'application/json')
        h.send_header('Content-Length', str(len(body)))
        if code == 429:
            h.send_header('Retry-After', self.retry_after)
        h.end_headers()
        h.wfile.write(body)

    def _watch(self, h, key, plural, query):
        """Replay the changes since the watch's resourceVersion (none given: the object as
        ADDED), then play the job's script, then hold until the object goes or time is up."""
        try:
            self._play(h, key, plural, query)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went (the step ended, or it stopped watching)

    def _play(self, h, key, plural, query):

        h.send_response(200)
        h.send_header('Content-Type', 'application/json')
        h.send_header('Transfer-Encoding', 'chunked')
        h.end_headers()

        def event(kind, obj):
            line = json.dumps({'type': kind, 'object': obj}).encode() + b'\n'
            h.wfile.write(f'{len(line):x}\r\n'.encode() + line + b'\r\n')
            h.wfile.flush()

        since = int(query.get('resourceVersion') or 0)
        end = time.monotonic() + min(float(query.get('timeoutSeconds') or 1), WATCH_MAX_S)
        if since and since < self.compacted:  # what etcd's compaction makes the API server say
            gone = status(410, 'Expired', f'too old resource version: {since} ({self.compacted})')
            event('ERROR', gone)
            h.wfile.write(b'0\r\n\r\n')
            return
        last = self.objects.get(key)
        if not since:
            since = self.version
            if last is not None:
                if 'resourceVersion' not in (last.get('metadata') or {}):  # placed by a test
                    last = self.put(key, last)
                since = int(last['metadata']['resourceVersion'])
                event('ADDED', last)
        script = self.scripts.get(key[2], []) if plural != 'localqueues' else []
        while time.monotonic() < end:
            for version, kind, obj in list(self.history.get(key, [])):
                if version > since:
                    event(kind, obj)
                    since, last = version, obj
                    if kind == 'DELETED':
                        h.wfile.write(b'0\r\n\r\n')
                        return
            if key not in self.objects:  # popped by a test: no history
                if last is not None:
                    event('DELETED', last)
                break
            step_no = self.cursor.get(key[2], 0)
            if step_no >= len(script):
                time.sleep(0.05)  # the job runs: hold the watch open
                continue
            self.cursor[key[2]] = step_no + 1
            step = script[step_no]
            if isinstance(step, (int, float)):
                time.sleep(step)
            elif step == HOLD:
                pass  # the end of the script holds too
            elif step in (CUT, GONE, VANISH):
                if step == GONE:
                    self.compacted = self.version + 1
                if step == VANISH:
                    self.remove(key)
                h.connection.shutdown(socket.SHUT_RDWR)  # no final chunk: ended prematurely
                h.close_connection = True
                return
            elif step == DELETE:
                self.remove(key)
            else:
                self.put(key, {**self.objects[key], 'status': {'conditions': step}})
        h.wfile.write(b'0\r\n\r\n')

    # ------------------------------------------------------------- pods
    def _pods(self, h, verb, ns, pod_name, is_log, query):
        if pod_name and is_log:  # the previous run of a restarted container: '<pod>/previous'
            previous = query.get('previous') in ('true', 'True')
            text = self.logs.get(pod_name + '/previous' if previous else pod_name, '')
            return h._send(200, text.encode(), 'text/plain')
        if pod_name:
            found = [p for p in self.pods if p['metadata']['name'] == pod_name]
            if not found:
                return h._send(404, status(404, 'NotFound', f'pods "{pod_name}" not found', 'pods'))
            return h._send(200, found[-1])
        rbac_verb = 'watch' if verb == 'WATCH' else 'list'
        if (rbac_verb, 'pods') in self.forbidden:
            msg = (
                f'pods is forbidden: User "system:serviceaccount:{ns}:video-kd" cannot '
                f'{rbac_verb} resource "pods" in API group "" in the namespace "{ns}"'
            )
            return h._send(403, status(403, 'Forbidden', msg, 'pods'))
        wanted = dict(p.split('=', 1) for p in query.get('labelSelector', '').split(',') if p)

        def selected(p):
            return (
                p['metadata']['namespace'] == ns
                and wanted.items() <= (p['metadata'].get('labels') or {}).items()
            )

        pods = [p for p in self.pods if selected(p)]
        if verb != 'WATCH':
            return h._send(
                200, {'kind': 'PodList', 'apiVersion': 'v1', 'metadata': {}, 'items': pods}
            )
        faults = self.watch_faults.get('pods')
        if faults:
            return self._fault(h, faults.pop(0))
        events = [('ADDED', p) for p in pods] + [e for e in self.pod_events if selected(e[1])]
        lines = b''.join(
            json.dumps({'type': kind, 'object': p}).encode() + b'\n' for kind, p in events
        )
        return h._send(200, lines)

    def _one_pod(self, h, ns, name):
        if ('get', 'pods') in self.forbidden:
            msg = (
                f'pods "{name}" is forbidden: User "system:serviceaccount:{ns}:video-kd" cannot '
                f'get resource "pods" in API group "" in the namespace "{ns}"'
            )
            return h._send(403, status(403, 'Forbidden', msg, 'pods'))
        for p in self.pods:
            if p['metadata']['namespace'] == ns and p['metadata']['name'] == name:
                return h._send(200, p)
        return h._send(404, status(404, 'NotFound', f'pods "{name}" not found', 'pods'))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def strict_decoding_error(body: dict, unknown: list[str]) -> dict:
    """What the API server answers a create with fieldValidation=Strict whose object has
    fields the CRD's schema lacks (k8s.io/apiserver handlers: the decoder's strict error,
    wrapped as '<Kind> in version "<v>" cannot be handled as a <Kind>: ...')."""
    kind, version = body['kind'], body['apiVersion'].rsplit('/', 1)[-1]
    fields = ', '.join(f'unknown field "spec.{f}"' for f in unknown)
    text = (
        f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding '
        f'error: {fields}'
    )
    return status(400, 'BadRequest', text)


def webhook_denial(group: str, plural: str, body: dict, webhook: str, refused: list[str]) -> dict:
    """What the API server answers when a validating webhook denies an object: the webhook's
    (controller-runtime admission.Denied) 403, wrapped by k8s.io/apiserver's
    webhook/errors ToStatusErr: '<resource> "<name>" is forbidden: admission webhook
    "<webhook>" denied the request: <the webhook's message>'."""
    name = body['metadata']['name']
    # a field.ErrorList's aggregate: one error alone, several in brackets
    message = refused[0] if len(refused) == 1 else '[' + ', '.join(refused) + ']'
    text = (
        f'{plural}.{group} "{name}" is forbidden: admission webhook "{webhook}" denied the '
        f'request: {message}'
    )
    return status(403, 'Forbidden', text, plural, group=group, name=name)


def pod(
    name: str,
    labels: dict,
    phase='Running',
    container='pytorch',
    exit_code=None,
    reason=None,
    uid=None,
    restarts=0,
):
    """A pod as the API returns it, with the training container's state (``restarts``: a
    container restarted in place, its last run ended with exit 1)."""
    state = {'running': {}}
    if exit_code is not None:
        state = {'terminated': {'exitCode': exit_code, 'reason': reason or 'Error'}}
    last = {'terminated': {'exitCode': 1, 'reason': 'Error'}} if restarts else {}
    return {
        'apiVersion': 'v1',
        'kind': 'Pod',
        'metadata': {'name': name, 'namespace': 'ml', 'labels': labels, 'uid': uid or name},
        'status': {
            'phase': phase,
            'containerStatuses': [
                {
                    'name': container,
                    'ready': False,
                    'restartCount': restarts,
                    'image': 'img',
                    'imageID': '',
                    'state': state,
                    'lastState': last,
                }
            ],
        },
    }
