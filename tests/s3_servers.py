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
import sys
from pathlib import Path

import boto3

from video_kd.local_run import LocalS3, free_port

ACCESS_KEY = 'video-kd-test-key'
SECRET_KEY = 'video-kd-test-secret'


class MotoServer(LocalS3):
    """The local S3 server (``video_kd.local_run.LocalS3``) that a test controls: served
    one request at a time if asked, frozen and thawed, with the tests' credentials."""

    def __init__(self, log_dir: Path, serial: bool = False, port: int | None = None):
        port = port or free_port()
        super().__init__(Path(log_dir) / f'moto-{port}.log', port)
        self.serial = serial

    def command(self) -> list[str]:
        if self.serial:
            return [sys.executable, str(Path(__file__).resolve()), str(self.port)]
        return super().command()

    def stop(self) -> None:
        """Terminate it (a frozen one too): connections are then refused."""
        if self.proc and self.proc.poll() is None:
            self.thaw()
        super().stop()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it answers again, with every object it had."""
        os.kill(self.proc.pid, signal.SIGCONT)

    def env(self) -> dict[str, str]:
        """The environment that points video_kd.storage.s3 at this server."""
        return {
            'S3_ENDPOINT_URL': self.endpoint,
            'AWS_ACCESS_KEY_ID': ACCESS_KEY,
            'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
            'AWS_DEFAULT_REGION': 'us-east-1',
            'AWS_CONFIG_FILE': os.devnull,
            'AWS_SHARED_CREDENTIALS_FILE': os.devnull,
        }

    def client(self):
        """A plain boto3 client for this server (not the code under test's)."""
        return boto3.client(
            's3',
            endpoint_url=self.endpoint,
            region_name='us-east-1',
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket with plain boto3 (no retries: the server must be up)."""
        self.client().create_bucket(Bucket=name)
        return name


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
