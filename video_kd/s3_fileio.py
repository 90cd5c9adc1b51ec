"""An mmengine file backend for ``s3://``: MMAction2 reads videos straight from S3.

MMAction2's ``DecordInit`` fetches a video's bytes through mmengine's
``FileClient`` and decodes them from memory, and ``VideoDataset`` reads its
list file through ``mmengine.fileio``; both look backends up by name or by
URI prefix.  Registering this backend under both registries for ``s3`` lets a
config name ``s3://`` lists and video prefixes, so a training pod or the
evaluate step reads each video when the data loader needs it instead of
downloading the dataset first: a pod's disk use no longer grows with the
number of videos.

Why boto3 (through ``video_kd.s3``'s environment rules) and not an S3
data-loading library: the loader already runs N worker processes, each asking
for one whole small object at a time, which is exactly a GET; the libraries
(s3torchconnector, fsspec/s3fs) add a dependency, their own credential
lookup, and nothing this access pattern needs.  What matters is measured in
``benchmarks/data_scale.py``.

Data loader workers are forked: a boto3 client (its connection pool) must not
be shared across processes, so each process builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from mmengine.fileio import FileClient, register_backend
from mmengine.fileio.backends import BaseStorageBackend

from video_kd import s3

if TYPE_CHECKING:
    from botocore.client import BaseClient

BACKEND_NAME = 'video_kd_s3'
# One GET in flight per loader worker and a few for threads of the same process
# (the validator's prefetching): 16 connections per process is more than enough.
POOL_CONNECTIONS = int(os.environ.get('VIDEO_KD_S3_POOL', '16'))
# botocore's "standard" mode retries 5xx, throttling (503 SlowDown) and
# timeouts with exponential backoff and jitter; 8 attempts ride out ~1 min.
MAX_ATTEMPTS = int(os.environ.get('VIDEO_KD_S3_ATTEMPTS', '8'))
READ_TIMEOUT = float(os.environ.get('VIDEO_KD_S3_READ_TIMEOUT', '30'))

_clients: dict[tuple, object] = {}
_lock = threading.Lock()


def stream_client() -> BaseClient:
    """This process's S3 client for streaming reads (built once per process and endpoint).

    Credentials and endpoint follow ``video_kd.s3`` (the environment only);
    ``s3.s3_client()`` is called first so missing credentials fail with its message.
    """
    base = s3.s3_client()
    key = (os.getpid(), base.meta.endpoint_url, os.environ[s3.ACCESS_KEY_ENV], MAX_ATTEMPTS)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        for stale in [k for k in _clients if k[0] != key[0]]:
            del _clients[stale]  # a forked child drops its parent's clients
        if key not in _clients:  # another thread may have built it while this one waited
            _clients[key] = _build_client(base)
        return _clients[key]


def _build_client(base: BaseClient) -> BaseClient:
    """Like ``s3.s3_client()`` (same endpoint, region, env credentials), sized for streaming."""
    config = Config(
        s3={'addressing_style': 'path'},
        retries={'mode': 'standard', 'total_max_attempts': MAX_ATTEMPTS},
        max_pool_connections=POOL_CONNECTIONS,
        connect_timeout=10,
        read_timeout=READ_TIMEOUT,
        signature_version='s3v4',
        tcp_keepalive=True,
    )
    return boto3.session.Session().client(
        's3',
        endpoint_url=base.meta.endpoint_url,
        region_name=base.meta.region_name,
        config=config,
        aws_access_key_id=os.environ[s3.ACCESS_KEY_ENV],
        aws_secret_access_key=os.environ[s3.SECRET_KEY_ENV],
        aws_session_token=os.environ.get(s3.SESSION_TOKEN_ENV) or None,
    )


@contextmanager
def storage_errors(uri: str, action: str = 'read') -> Iterator[None]:
    """botocore errors (after its retries) -> one line that names the object."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get('Error', {}).get('Code', '')
        if code in ('NoSuchKey', '404', 'NotFound'):
            raise s3.ObjectNotFoundError(
                f'cannot {action} {uri}: no such object (listed when the dataset was prepared: '
                'was it deleted or renamed since?)'
            ) from exc
        if code == 'NoSuchBucket':
            raise s3.BucketNotFoundError(f'cannot {action} {uri}: no such bucket') from exc
        message = exc.response.get('Error', {}).get('Message', '')
        raise s3.S3Error(
            f'cannot {action} {uri}: {code} {message} (after {MAX_ATTEMPTS} attempts)'.strip()
        ) from exc
    except BotoCoreError as exc:
        raise s3.S3Error(f'cannot {action} {uri}: {exc} (after {MAX_ATTEMPTS} attempts)') from exc


def get_object_bytes(uri: str, byte_range: str | None = None) -> bytes:
    """The bytes of one object (or of ``bytes=a-b`` of it), with retries."""
    bucket, key = s3.parse_s3_uri(uri)
    extra = {'Range': byte_range} if byte_range else {}
    with storage_errors(uri):
        response = stream_client().get_object(Bucket=bucket, Key=key, **extra)
        return response['Body'].read()


class S3Backend(BaseStorageBackend):
    """Read-only ``s3://`` access for mmengine's fileio and the legacy FileClient."""

    def __init__(self, **_unused) -> None:  # FileClient passes the transform's kwargs on
        pass

    def get(self, filepath: str | Path) -> bytes:
        return get_object_bytes(str(filepath))

    def get_text(self, filepath: str | Path, encoding: str = 'utf-8') -> str:
        return self.get(filepath).decode(encoding)

    def exists(self, filepath: str | Path) -> bool:
        bucket, key = s3.parse_s3_uri(str(filepath))
        try:
            with storage_errors(str(filepath)):
                stream_client().head_object(Bucket=bucket, Key=key)
        except s3.ObjectNotFoundError:
            return False
        return True

    def isfile(self, filepath: str | Path) -> bool:
        return self.exists(filepath)

    def join_path(self, filepath: str | Path, *filepaths: str | Path) -> str:
        return s3.join_uri(str(filepath), *(str(p) for p in filepaths))


def register() -> None:
    """Make ``s3://`` paths (and ``io_backend='video_kd_s3'``) use this backend.

    Idempotent; ``force`` replaces mmengine's default ``s3`` mapping (Petrel,
    SenseTime's internal store).
    """
    register_backend(BACKEND_NAME, S3Backend, force=True, prefixes='s3')
    FileClient.register_backend(BACKEND_NAME, S3Backend, force=True, prefixes='s3')
