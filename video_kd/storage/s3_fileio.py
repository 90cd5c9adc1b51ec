"""An mmengine file backend for ``s3://``: MMAction2 reads videos straight from S3.

MMAction2's ``DecordInit`` fetches a video's bytes through mmengine's
``FileClient`` and decodes them from memory, and ``VideoDataset`` reads its
list file through ``mmengine.fileio``; both look backends up by name or by
URI prefix.  Registering this backend under both registries for ``s3`` lets a
config name ``s3://`` lists and video prefixes, so a training pod or the
evaluate step reads each video when the data loader needs it instead of
downloading the dataset first: a pod's disk use no longer grows with the
number of videos.

Why boto3 (through ``video_kd.storage.s3``'s environment rules) and not an S3
data-loading library: the loader already runs N worker processes, each asking
for one whole small object at a time, which is exactly a GET; the libraries
(s3torchconnector, fsspec/s3fs) add a dependency, their own credential
lookup, and nothing this access pattern needs.  What matters is measured in
``benchmarks/data_scale.py``.

Faults are handled by the project's one policy (``video_kd.storage.s3_policy``: its
timeouts, attempts, backoff and retry log lines), and reported through
``video_kd.storage.s3``'s one mapping (``S3UnavailableError`` when the server was
unreachable or stalled), with the object's name.  A body that fails midway
is fetched again within the same attempts (``s3.fetch``), so a frozen server
ends a read within ``S3Policy.request_budget_s()`` (63 s by default).

Data loader workers are forked: a boto3 client (its connection pool) must not
be shared across processes, so each process builds its own on first use; the
threads of a process share it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mmengine.fileio import FileClient, register_backend
from mmengine.fileio.backends import BaseStorageBackend

from video_kd.storage import s3

if TYPE_CHECKING:
    from botocore.client import BaseClient

BACKEND_NAME = 'video_kd_s3'
# One GET in flight per loader worker and a few for threads of the same process
# (the validator's prefetching): 16 connections per process is more than enough.
POOL_CONNECTIONS = int(os.environ.get('VIDEO_KD_S3_POOL', '16'))

_clients: dict[tuple, BaseClient] = {}
_lock = threading.Lock()


def stream_client() -> BaseClient:
    """This process's S3 client for streaming reads (one per process and configuration).

    Built like ``s3.s3_client()`` (the environment's endpoint and credentials,
    the fault policy), with its own connection pool sized for the data loader;
    missing credentials fail with ``s3``'s message.
    """
    settings = s3.client_settings()
    key = (os.getpid(), *settings)
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        for stale in [k for k in _clients if k[0] != key[0]]:
            del _clients[stale]  # a forked child drops its parent's clients
        if key not in _clients:  # another thread may have built it while this one waited
            _clients[key] = s3.build_client(
                *settings, max_pool_connections=POOL_CONNECTIONS, tcp_keepalive=True
            )
        return _clients[key]


@contextmanager
def storage_errors(uri: str, action: str = 'read') -> Iterator[None]:
    """``s3.errors`` (botocore's errors, after the policy's retries, as one line naming the
    object); a listed object that is gone says what probably happened."""
    try:
        with s3.errors(action, uri):
            yield
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError as exc:
        if action != 'read':
            raise
        raise s3.ObjectNotFoundError(
            f'{exc} (listed when the dataset was prepared: was it deleted or renamed since?)'
        ) from exc.__cause__


def get_object_bytes(uri: str, byte_range: str | None = None) -> bytes:
    """The bytes of one object (or of ``bytes=a-b`` of it), with the policy's retries."""
    extra = {'Range': byte_range} if byte_range else {}
    with storage_errors(uri):
        return s3.fetch(uri, stream_client(), **extra)[0]


def list_objects(prefix_uri: str, recursive: bool = True) -> Iterator[tuple[str, str, int]]:
    """``(key relative to the prefix, ETag, size)`` of every object under an ``s3://`` prefix
    (only those directly inside it when not ``recursive``), on this process's client."""
    bucket, key = s3.parse_s3_uri(prefix_uri.rstrip('/') + '/')
    extra = {} if recursive else {'Delimiter': '/'}
    with storage_errors(prefix_uri, 'list'):
        pages = stream_client().get_paginator('list_objects_v2')
        for page in pages.paginate(Bucket=bucket, Prefix=key, **extra):
            for obj in page.get('Contents', []):
                yield obj['Key'][len(key) :], obj['ETag'].strip('"'), obj['Size']


def peek(prefix_uri: str, limit: int = 100) -> tuple[list[str], list[str]]:
    """``(folders, files)`` directly inside an ``s3://`` prefix, from one listing page of at
    most ``limit`` entries: a look at what is there, not an inventory."""
    folders, files, _ = list_page(prefix_uri, limit)
    return folders, files


def list_page(prefix_uri: str, limit: int = 1000) -> tuple[list[str], list[str], bool]:
    """``(folders, files, complete)`` directly inside an ``s3://`` prefix, from one listing
    request (``Delimiter='/'``) of at most ``limit`` entries; ``complete``: the page holds
    everything there (S3 returned no continuation)."""
    bucket, key = s3.parse_s3_uri(prefix_uri.rstrip('/') + '/')
    with storage_errors(prefix_uri, 'list'):
        page = stream_client().list_objects_v2(
            Bucket=bucket, Prefix=key, Delimiter='/', MaxKeys=limit
        )
    folders = [p['Prefix'][len(key) :].rstrip('/') for p in page.get('CommonPrefixes', [])]
    files = [obj['Key'][len(key) :] for obj in page.get('Contents', [])]
    return folders, files, not page.get('IsTruncated', False)


def put_object_bytes(uri: str, body: bytes) -> None:
    """Write a small object (overwriting), on this process's client."""
    bucket, key = s3.parse_s3_uri(uri)
    with storage_errors(uri, 'write'):
        stream_client().put_object(Bucket=bucket, Key=key, Body=body)


def delete_object(uri: str) -> None:
    """Delete one object, on this process's client."""
    bucket, key = s3.parse_s3_uri(uri)
    with storage_errors(uri, 'delete'):
        stream_client().delete_object(Bucket=bucket, Key=key)


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
