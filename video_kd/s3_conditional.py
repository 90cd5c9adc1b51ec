"""Atomic create-if-absent on S3: conditional writes (``If-None-Match: *``).

"Never overwrite" used to be check-then-put: two writers that both saw no
object both wrote, and the later one silently replaced the earlier one's data
(two data preps given one run id; see issue 15).  A conditional write closes
that window on the server: PutObject, and CompleteMultipartUpload for large
files, carry ``If-None-Match: *``, so the server stores the object only if the
key is still free, and answers every other writer ``412 Precondition Failed``.
Exactly one writer wins, however many race.

Servers checked: the moto server the tests run (5.2.5: PutObject and
CompleteMultipartUpload both honour it, tested here with 20 concurrent
writers); AWS S3 (since August 2024) and MinIO document the same semantics
but were not reachable from here.  A server that rejects the header
(``501 NotImplemented``) or silently ignores it is detected once per process
and bucket by a probe (a throw-away key under ``.video-kd/probe/``, written
twice); such a server gets the documented fallback, check-then-put plus a
read-back of a per-writer token, which turns most lost races into an
``AlreadyExistsError`` but cannot close the window between two PUTs: a WARNING
says so.  ``VIDEO_KD_S3_CONDITIONAL_WRITES`` overrides the probe: ``on``
(trust the server), ``off`` (always the fallback), ``auto`` (the default).

boto3's managed transfer (s3transfer) has no argument for ``IfNoneMatch`` on
the completion of a multipart upload: an event hook adds it, only for the
uploads that asked for it (``_multipart``).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger('video_kd.s3')

MODE_ENV = 'VIDEO_KD_S3_CONDITIONAL_WRITES'
MODES = ('auto', 'on', 'off')
PROBE_PREFIX = '.video-kd/probe/'
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # below: one PutObject
PART_SIZE = 8 * 1024 * 1024  # parts and threads as s3transfer: same throughput (benchmarks)
MAX_PARTS = 10_000  # S3's limit
UPLOAD_THREADS = 10
WRITER_METADATA = 'video-kd-writer'
_CONFLICT_RETRIES = 3  # AWS answers 409 while another conditional write is in flight

_probed: dict[tuple[str, str], bool] = {}
_probe_lock = threading.Lock()


class AlreadyExistsError(Exception):
    """The key was taken: by an earlier object, or by a writer that won the race."""


class UnsupportedError(Exception):
    """The server refuses conditional writes."""


def error_code(exc: ClientError) -> str:
    """The S3 error code of a botocore ClientError (``PreconditionFailed``, ...)."""
    return exc.response.get('Error', {}).get('Code', '') or str(
        exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '')
    )


def _is_precondition_failed(exc: ClientError) -> bool:
    return error_code(exc) in ('PreconditionFailed', '412')


def _is_conflict(exc: ClientError) -> bool:
    return error_code(exc) in ('ConditionalRequestConflict', '409')


def _is_unsupported(exc: ClientError) -> bool:
    return error_code(exc) in ('NotImplemented', '501')


def mode() -> str:
    """``auto``, ``on`` or ``off``: from ``VIDEO_KD_S3_CONDITIONAL_WRITES``."""
    value = os.environ.get(MODE_ENV, 'auto').strip().lower() or 'auto'
    if value not in MODES:
        from video_kd.errors import UserError

        raise UserError(f'{MODE_ENV}={value!r}: expected one of {", ".join(MODES)}')
    return value


def supports_conditional_writes(client: BaseClient, bucket: str) -> bool:
    """Whether this server enforces ``If-None-Match: *`` (probed once per process and bucket)."""
    setting = mode()
    if setting != 'auto':
        return setting == 'on'
    cache_key = (client.meta.endpoint_url, bucket)
    with _probe_lock:
        if cache_key not in _probed:
            _probed[cache_key] = _probe(client, bucket)
            if not _probed[cache_key]:
                log.warning(
                    'S3 server %s does not enforce If-None-Match on bucket %s: "never '
                    'overwrite" falls back to check-then-put, which two concurrent writers '
                    'can still both pass (use a server with conditional writes: AWS S3, MinIO)',
                    client.meta.endpoint_url,
                    bucket,
                )
        return _probed[cache_key]


def _probe(client: BaseClient, bucket: str) -> bool:
    key = f'{PROBE_PREFIX}{uuid.uuid4().hex}'
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b'1', IfNoneMatch='*')
    except ClientError as exc:
        if _is_unsupported(exc) or error_code(exc) in ('InvalidArgument', '400'):
            return False
        raise
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b'2', IfNoneMatch='*')
    except ClientError as exc:
        if not _is_precondition_failed(exc):
            raise
        return True
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except ClientError:
            pass  # no delete permission: a 1-byte probe object stays behind
    return False  # the second write replaced the first: the header was ignored


def put_new(client: BaseClient, bucket: str, key: str, body: bytes, **extra) -> None:
    """Store ``body`` at ``key`` only if no object is there; else ``AlreadyExistsError``."""
    if not supports_conditional_writes(client, bucket):
        _fallback(
            client,
            bucket,
            key,
            lambda meta: client.put_object(
                Bucket=bucket, Key=key, Body=body, **_with_metadata(extra, meta)
            ),
        )
        return
    _conditional(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch='*', **extra)
    )


def upload_new(client: BaseClient, bucket: str, key: str, path: str | os.PathLike, **extra) -> None:
    """Upload a file to ``key`` only if no object is there; else ``AlreadyExistsError``.

    Files above ``MULTIPART_THRESHOLD`` go up in parts (in parallel, each part
    retried by botocore); the condition is on the completion, so a lost race
    leaves no object and no dangling upload behind.
    """
    path = Path(path)
    size = path.stat().st_size
    if size <= MULTIPART_THRESHOLD:
        with open(path, 'rb') as stream:
            put_new(client, bucket, key, stream.read(), **extra)
        return
    if _head_exists(client, bucket, key):  # do not send gigabytes only to lose
        raise AlreadyExistsError(key)
    if not supports_conditional_writes(client, bucket):
        _fallback(
            client,
            bucket,
            key,
            lambda meta: _multipart(
                client, bucket, key, path, size, _with_metadata(extra, meta), {}
            ),
        )
        return
    _conditional(lambda: _multipart(client, bucket, key, path, size, extra, {'IfNoneMatch': '*'}))


def _conditional(write: Callable[[], object]) -> None:
    for attempt in range(1, _CONFLICT_RETRIES + 1):
        try:
            write()
            return
        except ClientError as exc:
            if _is_precondition_failed(exc):
                raise AlreadyExistsError(str(exc)) from exc
            if _is_unsupported(exc):
                raise UnsupportedError(str(exc)) from exc
            if not _is_conflict(exc) or attempt == _CONFLICT_RETRIES:
                raise


def _with_metadata(extra: dict, metadata: dict[str, str]) -> dict:
    return {**extra, 'Metadata': {**extra.get('Metadata', {}), **metadata}}


def _head_exists(client: BaseClient, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in ('404', 'NoSuchKey', 'NotFound'):
            return False
        raise
    return True


def _fallback(
    client: BaseClient, bucket: str, key: str, write: Callable[[dict[str, str]], object]
) -> None:
    """Check, write with a token of ours, read the token back: loses most races, not all."""
    if _head_exists(client, bucket, key):
        raise AlreadyExistsError(key)
    token = uuid.uuid4().hex
    write({WRITER_METADATA: token})
    stored = client.head_object(Bucket=bucket, Key=key).get('Metadata', {})
    if stored.get(WRITER_METADATA) != token:
        raise AlreadyExistsError(f'{key} was written by another writer at the same time')


def part_size_for(size: int) -> int:
    """The part size: ``PART_SIZE``, or larger so that a file fits in S3's 10,000 parts."""
    return max(PART_SIZE, math.ceil(size / MAX_PARTS))


# (bucket, key) -> how many multipart uploads in flight must complete with If-None-Match
_conditional_completions: collections.Counter[tuple[str, str]] = collections.Counter()
_completions_lock = threading.Lock()


def _add_completion_condition(params: dict, **_) -> None:
    with _completions_lock:
        if _conditional_completions[(params.get('Bucket'), params.get('Key'))] > 0:
            params.setdefault('IfNoneMatch', '*')


def _multipart(
    client: BaseClient,
    bucket: str,
    key: str,
    path: Path,
    size: int,
    extra: dict,
    complete_extra: dict,
) -> None:
    """A multipart upload by s3transfer (boto3's managed transfer: parallel parts, aborted
    on failure); ``complete_extra`` reaches its CompleteMultipartUpload through an event
    hook, as s3transfer has no argument for it."""
    from s3transfer.manager import TransferConfig, TransferManager

    client.meta.events.register(
        'before-parameter-build.s3.CompleteMultipartUpload',
        _add_completion_condition,
        unique_id='video-kd-if-none-match',
    )
    config = TransferConfig(
        multipart_threshold=1,  # only large files come here: always in parts
        multipart_chunksize=part_size_for(size),
        max_request_concurrency=UPLOAD_THREADS,
    )
    conditional = bool(complete_extra.get('IfNoneMatch'))
    if conditional:
        with _completions_lock:
            _conditional_completions[(bucket, key)] += 1
    try:
        with TransferManager(client, config) as manager:
            manager.upload(str(path), bucket, key, extra_args=extra).result()
    finally:
        if conditional:
            with _completions_lock:
                _conditional_completions[(bucket, key)] -= 1
                if _conditional_completions[(bucket, key)] <= 0:
                    del _conditional_completions[(bucket, key)]
