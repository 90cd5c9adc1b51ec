"""Private S3 servers for tests that stop, freeze or race them (not the session's one).

``MotoServer`` runs moto's S3 server as a subprocess the test owns: it can be
stopped, restarted on the same port, frozen with SIGSTOP (the process keeps
its socket, so connections are accepted by the kernel and never answered) and
thawed with SIGCONT.

``serial=True`` serves one request at a time.  moto 5.2.5 checks
``If-None-Match: *`` and then writes, without a lock (moto/s3/responses.py,
``put_object`` and the CompleteMultipartUpload branch of ``_key_response_post``),
so under its usual threaded server concurrent conditional writes can all pass
the check (measured: 5 of 6 concurrent 6 MiB multipart uploads "won"); AWS S3
and MinIO evaluate the condition atomically.  A serial moto does too, which is
what a test of the client's create-if-absent logic needs.

Run as a script, it is that serial server: ``python tests/s3_servers.py PORT``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3

ACCESS_KEY = 'video-kd-test-key'
SECRET_KEY = 'video-kd-test-secret'


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class MotoServer:
    """A moto S3 server subprocess on 127.0.0.1 that the test controls."""

    def __init__(self, log_dir: Path, serial: bool = False, port: int | None = None):
        self.log_dir = Path(log_dir)
        self.serial = serial
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        """Start (or restart, on the same port, with no objects) and wait until it answers."""
        if self.serial:
            command = [sys.executable, str(Path(__file__).resolve()), str(self.port)]
        else:
            command = [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f'moto-{self.port}.log', 'ab') as log_file:
            self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        self._wait_until_answers()
        return self

    def _wait_until_answers(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'moto server exited with {self.proc.returncode}')
            try:
                urllib.request.urlopen(self.endpoint + '/moto-api/', timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f'moto server did not answer at {self.endpoint}')

    def stop(self) -> None:
        """Terminate it: connections are then refused."""
        if self.proc and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it answers again, with every object it had."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def env(self) -> dict[str, str]:
        """The environment that points video_kd.s3 at this server."""
        return {
            'S3_ENDPOINT_URL': self.endpoint,
            'AWS_ACCESS_KEY_ID': ACCESS_KEY,
            'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
            'AWS_DEFAULT_REGION': 'us-east-1',
            'AWS_CONFIG_FILE': os.devnull,
            'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
        }

    def create_bucket(self, name: str) -> str:
        """Create a bucket with plain boto3 (no retries: the server must be up)."""
        boto3.client(
            's3',
            endpoint_url=self.endpoint,
            region_name='us-east-1',
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=name)
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_serially(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple('127.0.0.1', port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == '__main__':
    _serve_serially(int(sys.argv[1]))
