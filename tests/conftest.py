"""Real servers on 127.0.0.1 for the tests: an S3 server (moto) and an HTTP file server.

No in-process mocks of boto3 or urllib: the code under test speaks real
HTTP to these servers, as it would to MinIO or a model zoo.
"""

from __future__ import annotations

import collections
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from s3_servers import ACCESS_KEY, SECRET_KEY

from video_kd.local_run import LocalS3, free_port  # noqa: F401  (free_port: for the tests)


@pytest.fixture(scope='session', autouse=True)
def session_tmpdir(tmp_path_factory):
    """The code under test and its subprocesses (torchrun, KFP's local runner) make their
    temporary files inside pytest's directory, which a green run removes."""
    path = tmp_path_factory.mktemp('tmpdir')
    patch = pytest.MonkeyPatch()
    patch.setenv('TMPDIR', str(path))
    patch.setattr(tempfile, 'tempdir', str(path))
    yield path
    patch.undo()


@pytest.fixture(scope='session')
def s3_server(tmp_path_factory):
    """Endpoint URL of a moto S3 server running as a subprocess for the whole session
    (the same harness as ``video-kd run-local``)."""
    with LocalS3(tmp_path_factory.mktemp('moto') / 'moto.log') as server:
        yield server.endpoint


@pytest.fixture(scope='session')
def image(tmp_path_factory) -> str:
    """The CPU image (tests/test_image*.py), built or reused from podman's layer cache once
    per session; skips (or fails, where CI requires containers) without a container engine."""
    import containers

    containers.require_engine()
    return containers.build_image(tmp_path_factory.mktemp('image') / 'build.log')


@pytest.fixture
def s3_env(monkeypatch, s3_server):
    """Point video_kd.storage.s3 at the test server with dummy credentials; returns the endpoint."""
    for name in ('AWS_ENDPOINT_URL', 'AWS_SESSION_TOKEN', 'AWS_PROFILE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('S3_ENDPOINT_URL', s3_server)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', ACCESS_KEY)
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', SECRET_KEY)
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'us-east-1')
    monkeypatch.setenv('AWS_CONFIG_FILE', os.devnull)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', os.devnull)
    return s3_server


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh, empty bucket on the test server (created with plain boto3)."""
    name = f'test-{uuid.uuid4().hex[:12]}'
    boto3.client(
        's3',
        endpoint_url=s3_env,
        region_name='us-east-1',
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=name)
    return name


class FileServer:
    """An HTTP server for files in ``root`` that counts requests and can fail on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: collections.Counter[str] = collections.Counter()
        self._failures: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        """URL of ``root/name``."""
        return f'http://127.0.0.1:{self._httpd.server_address[1]}/{name}'

    def fail_next(self, name: str, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``name`` with 503 Service Unavailable."""
        with self._lock:
            self._failures['/' + name] += times

    def _take_failure(self, path: str) -> bool:
        with self._lock:
            self.requests[path.lstrip('/')] += 1
            if self._failures[path] > 0:
                self._failures[path] -= 1
                return True
            return False

    def _handler(self):
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def do_GET(self):
                if server._take_failure(self.path):
                    self.send_error(503, 'injected failure')
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    """A FileServer on 127.0.0.1 serving a fresh temporary directory."""
    root = tmp_path / 'www'
    root.mkdir()
    with FileServer(root) as server:
        yield server


# --------------------------------------------------------------------------- KD core
# A tiny real dataset and a tiny trained teacher, made once per session: generated
# MP4 files decoded by decord, a TSM-ResNet50 trained by the mmengine Runner.
TINY_DATA = dict(num_classes=3, train_per_class=4, val_per_class=2, num_frames=12, size=64)
TINY_TRAIN = [
    '--cfg-options',
    'train_dataloader.batch_size=4',
    'val_dataloader.batch_size=4',
    'train_dataloader.num_workers=0',
    'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.persistent_workers=False',
]


def run_module(
    module: str, *args: str, cwd=None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m module args...` as a user would run it; output captured as text."""
    return subprocess.run(
        [sys.executable, '-m', module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope='session')
def kd_data(tmp_path_factory) -> Path:
    from video_kd.data.dataset import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp('kd') / 'data', **TINY_DATA)


@pytest.fixture(scope='session')
def tiny_teacher(kd_data, tmp_path_factory) -> Path:
    """A tsm_r50_tiny checkpoint trained for one epoch on kd_data."""
    work_dir = tmp_path_factory.mktemp('teacher')
    result = run_module(
        'video_kd.distill.train',
        'tsm_r50_tiny',
        '--work-dir',
        work_dir,
        '--data-root',
        kd_data,
        '--max-epochs',
        1,
        *TINY_TRAIN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir / 'epoch_1.pth'
