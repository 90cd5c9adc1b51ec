"""A small KFP API server (v2beta1, multi-user) on 127.0.0.1 for the CLI's upload and schedule.

No KFP can run here, so the real ``kfp`` client talks HTTP to this: pipelines
(list, upload, upload a version, list versions), experiments (list, create) and
recurring runs (list, create, delete), with the authorization multi-user KFP
2.17.0 does — each call checked as (verb, resource, namespace) on
``pipelines.kubeflow.org`` against ``grants`` (what a SubjectAccessReview would
find in the caller's Roles).  The rules, from kubeflow/pipelines 2.17.0
backend/src/apiserver:

* common/const.go: the resources are pipelines, experiments, runs, jobs (a
  recurring run is a 'job'), ...; the verbs create, get, list, delete, ...
* server/pipeline_upload_server.go: an upload, of a pipeline or of a version, is
  'create pipelines' in the pipeline's namespace; none is checked for a shared
  (namespace-less) pipeline (canUploadVersionedPipeline);
* server/pipeline_server.go: listing pipelines or a pipeline's versions is 'list
  pipelines' in its namespace; reads of shared pipelines are not checked
  (canAccessPipeline); listing with a namespace lists that namespace's only;
* server/experiment_server.go: 'list' / 'create experiments' in the namespace; an
  empty namespace is refused in multi-user mode;
* server/job_server.go: 'list' / 'create' / 'delete jobs' in the experiment's
  namespace ("Recurring run cannot have an empty namespace in multi-user mode").
* server/run_server.go: 'create runs' / 'get runs' in the experiment's namespace;
  server/pipeline_server.go: getting a version of a namespaced pipeline is 'get
  pipelines' there.  A version keeps the uploaded spec; a run of a version resolves
  its parameters against that spec's defaults (runs end SUCCEEDED at once).
"""

from __future__ import annotations

import email
import json
import re
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = '/apis/v2beta1'


def uploaded_file(content_type: str, raw: bytes) -> bytes:
    """The 'uploadfile' part of a multipart/form-data body (what the kfp client sends)."""
    message = email.message_from_bytes(f'Content-Type: {content_type}\r\n\r\n'.encode() + raw)
    for part in message.get_payload():
        if part.get_param('name', header='content-disposition') == 'uploadfile':
            return part.get_payload(decode=True)
    raise AssertionError('no uploadfile in the upload')


def _stored_spec(package: bytes) -> dict:
    """A version's pipeline_spec as the API returns it: the IR, wrapped with the platform
    spec when the package has one (``{pipeline_spec, platform_spec}``)."""
    import yaml

    docs = list(yaml.safe_load_all(package))
    return docs[0] if len(docs) == 1 else {'pipeline_spec': docs[0], 'platform_spec': docs[1]}


class Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class FakeKFP:
    def __init__(self, multi_user: bool = True):
        self.multi_user = multi_user
        self.grants: set[tuple[str, str, str]] = set()  # (verb, resource, namespace)
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id -> its versions
        self.specs: dict[str, dict] = {}  # version id -> its stored pipeline spec
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.checks: list[tuple[str, str, str]] = []  # every authorization asked for
        self.uploads: list[bytes] = []  # the pipeline files uploaded, in order
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def authorize(self, verb: str, resource: str, namespace: str) -> None:
        if not self.multi_user:
            return
        if not namespace:
            raise Refused(
                400, f'a {resource} call cannot have an empty namespace in multi-user mode'
            )
        self.checks.append((verb, resource, namespace))
        if (verb, resource, namespace) not in self.grants:
            raise Refused(403, f'PermissionDenied: cannot {verb} {resource} in {namespace}')

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _serve(self, method: str) -> None:
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                raw = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                kind = self.headers.get('Content-Type', '')
                body = json.loads(raw) if raw and 'json' in kind else {}
                if kind.startswith('multipart/form-data'):
                    body = {'uploadfile': uploaded_file(kind, raw)}
                try:
                    code, answer = 200, fake.route(method, url.path, query, body)
                except Refused as refused:
                    code, answer = (
                        refused.code,
                        {'error': str(refused), 'code': 7, 'message': str(refused)},
                    )
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve('GET')

            def do_POST(self):
                self._serve('POST')

            def do_DELETE(self):
                self._serve('DELETE')

        return Handler

    # ------------------------------------------------------------------ the API
    def route(self, method: str, path: str, query: dict, body: dict) -> dict:
        path = path.removeprefix(API)
        if path == '/healthz':
            return {'multi_user': self.multi_user}
        if path == '/pipelines' and method == 'GET':
            return self.list_pipelines(query)
        if path == '/pipelines/upload':
            self.uploads.append(body['uploadfile'])
            return self.upload(query)
        if path == '/pipelines/upload_version':
            self.uploads.append(body['uploadfile'])
            return self.upload_version(query)
        if match := re.fullmatch(r'/pipelines/([^/]+)/versions', path):
            return self.list_versions(match[1], query)
        if match := re.fullmatch(r'/pipelines/([^/]+)/versions/([^/]+)', path):
            return self.get_version(match[1], match[2])
        if path == '/runs' and method == 'POST':
            return self.create_pipeline_run(body)
        if match := re.fullmatch(r'/runs/([^/]+)', path):
            return self.get_pipeline_run(match[1])
        if path == '/experiments':
            return self.list_experiments(query) if method == 'GET' else self.create_experiment(body)
        if path == '/recurringruns':
            return self.list_runs(query) if method == 'GET' else self.create_run(body)
        if (match := re.fullmatch(r'/recurringruns/([^/]+)', path)) and method == 'DELETE':
            return self.delete_run(match[1])
        raise Refused(404, f'no route {method} {path}')

    def _namespace(self, given: str) -> str:
        return given if self.multi_user else ''  # ResourceManager.ReplaceNamespace

    def list_pipelines(self, query: dict) -> dict:
        namespace = self._namespace(query.get('namespace', ''))
        if namespace:
            self.authorize('list', 'pipelines', namespace)
        wanted = json.loads(query.get('filter') or '{}').get('predicates') or []
        names = {p['string_value'] if 'string_value' in p else p['stringValue'] for p in wanted}
        found = [
            p
            for p in self.pipelines.values()
            if p['namespace'] == namespace and (not names or p['display_name'] in names)
        ]
        return {'pipelines': found, 'total_size': len(found)}

    def upload(self, query: dict) -> dict:
        namespace = self._namespace(query.get('namespace', ''))
        if namespace:
            self.authorize('create', 'pipelines', namespace)
        pipeline = {
            'pipeline_id': str(uuid.uuid4()),
            'display_name': query['name'],
            'namespace': namespace,
        }
        self.pipelines[pipeline['pipeline_id']] = pipeline
        self.versions[pipeline['pipeline_id']] = []
        self._add_version(pipeline['pipeline_id'], query['name'])
        return pipeline

    def upload_version(self, query: dict) -> dict:
        pipeline = self.pipelines[query['pipelineid']]
        if pipeline['namespace']:
            self.authorize('create', 'pipelines', pipeline['namespace'])
        return self._add_version(pipeline['pipeline_id'], query['name'])

    def _add_version(self, pipeline_id: str, name: str) -> dict:
        version = {
            'pipeline_id': pipeline_id,
            'pipeline_version_id': str(uuid.uuid4()),
            'display_name': name,
        }
        self.specs[version['pipeline_version_id']] = _stored_spec(self.uploads[-1])
        self.versions[pipeline_id].insert(0, version)  # newest first, as sort_by asks
        return version

    def list_versions(self, pipeline_id: str, query: dict) -> dict:
        namespace = self.pipelines[pipeline_id]['namespace']
        if namespace:
            self.authorize('list', 'pipelines', namespace)
        wanted = json.loads(query.get('filter') or '{}').get('predicates') or []
        names = {p.get('string_value', p.get('stringValue')) for p in wanted}
        found = [v for v in self.versions[pipeline_id] if not names or v['display_name'] in names]
        size = int(query.get('page_size') or 10)
        return {'pipeline_versions': found[:size], 'total_size': len(found)}

    def get_version(self, pipeline_id: str, version_id: str) -> dict:
        namespace = self.pipelines[pipeline_id]['namespace']
        if namespace:
            self.authorize('get', 'pipelines', namespace)
        (version,) = [
            v for v in self.versions[pipeline_id] if v['pipeline_version_id'] == version_id
        ]
        return {**version, 'pipeline_spec': self.specs[version_id]}

    def create_pipeline_run(self, body: dict) -> dict:
        namespace = self.experiments[body['experiment_id']]['namespace']
        self.authorize('create', 'runs', namespace)
        reference = body['pipeline_version_reference']
        spec = self.specs[reference['pipeline_version_id']]
        declared = spec.get('pipeline_spec', spec)['root']['inputDefinitions']['parameters']
        given = (body.get('runtime_config') or {}).get('parameters') or {}
        unknown = set(given) - set(declared)
        if unknown:
            raise Refused(400, f'unknown parameters {sorted(unknown)}')
        run = {
            **body,
            'run_id': str(uuid.uuid4()),
            'state': 'SUCCEEDED',
            'namespace': namespace,
            # what the run gets: the version's stored defaults, the given values over them
            'resolved_parameters': {
                **{k: p.get('defaultValue') for k, p in declared.items()},
                **given,
            },
        }
        self.runs[run['run_id']] = run
        return run

    def get_pipeline_run(self, run_id: str) -> dict:
        run = self.runs[run_id]
        self.authorize('get', 'runs', run['namespace'])
        return run

    def list_experiments(self, query: dict) -> dict:
        namespace = self._namespace(query.get('namespace', ''))
        self.authorize('list', 'experiments', namespace)
        wanted = json.loads(query.get('filter') or '{}').get('predicates') or []
        names = {p.get('string_value', p.get('stringValue')) for p in wanted}
        found = [
            e
            for e in self.experiments.values()
            if e['namespace'] == namespace and (not names or e['display_name'] in names)
        ]
        return {'experiments': found, 'total_size': len(found)}

    def create_experiment(self, body: dict) -> dict:
        namespace = self._namespace(body.get('namespace') or '')
        self.authorize('create', 'experiments', namespace)
        experiment = {
            'experiment_id': str(uuid.uuid4()),
            'display_name': body['display_name'],
            'namespace': namespace,
        }
        self.experiments[experiment['experiment_id']] = experiment
        return experiment

    def list_runs(self, query: dict) -> dict:
        namespace = self.experiments[query['experiment_id']]['namespace']
        self.authorize('list', 'jobs', namespace)
        found = [
            r for r in self.recurring_runs.values() if r['experiment_id'] == query['experiment_id']
        ]
        return {'recurringRuns': found, 'total_size': len(found)}

    def create_run(self, body: dict) -> dict:
        namespace = self.experiments[body['experiment_id']]['namespace']
        self.authorize('create', 'jobs', namespace)
        run = {**body, 'recurring_run_id': str(uuid.uuid4()), 'namespace': namespace}
        self.recurring_runs[run['recurring_run_id']] = run
        return run

    def delete_run(self, run_id: str) -> dict:
        self.authorize('delete', 'jobs', self.recurring_runs[run_id]['namespace'])
        del self.recurring_runs[run_id]
        return {}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
