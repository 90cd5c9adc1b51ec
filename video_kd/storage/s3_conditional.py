"""Atomic create-if-absent and compare-and-swap on S3: conditional writes.

"Never overwrite" used to be check-then-put: two writers that both saw no
object both wrote, and the later one silently replaced the earlier one's data
(two data preps given one run id; see issue 15).  A conditional write closes
that window on the server: PutObject, and CompleteMultipartUpload for large
files, carry ``If-None-Match: *``, so the server stores the object only if the
key is still free, and answers every other writer ``412 Precondition Failed``.
Exactly one writer wins, however many race.

The one object a run rewrites, its manifest, is replaced compare-and-swap
(``replace``): ``If-Match`` on the ETag it was read with, so a writer that
read an older version is refused (``412``) and merges before trying again.

Servers checked: the moto server the tests run (5.2.5: PutObject and
CompleteMultipartUpload honour ``If-None-Match``, PutObject ``If-Match``;
tested here with 20 concurrent writers); AWS S3 (``If-None-Match`` since
August 2024, ``If-Match`` since November 2024) and MinIO document the same
semantics but were not reachable from here.  What a server enforces is found
once per process and bucket by a probe (a throw-away key under
``.video-kd/probe/``: written, then written again under each condition, which
must be refused, and under a true ``If-Match``, which must not).  A header the
server rejects (``501 NotImplemented``) or silently ignores gets the
documented fallback, with a WARNING:

* create-if-absent: check, put with a per-writer token, read the token back;
* compare-and-swap: compare the stored ETag, put, read the ETag back.

A writer that finds another one's write when it reads back reports the race
(``AlreadyExistsError``, ``ChangedError``: the manifest merges and saves
again), but the window between one writer's check and its PUT stays open: a
second writer that checked before the first one's PUT and puts after that
writer's read-back replaces it unseen (an object: the earlier bytes are
gone; the manifest: the earlier save's new entries are missing from it,
their objects stay in S3).  Run claims (``video_kd.runs.claim_run``) do not use this fallback: they
claim by ticket, which is safe on a strongly consistent server (see
``runs._claim_by_ticket``).  ``VIDEO_KD_S3_CONDITIONAL_WRITES`` overrides the
probe: ``on`` (trust the server), ``off`` (always the fallback), ``auto``
(the default).

boto3's managed transfer (s3transfer) has no argument for ``IfNoneMatch`` on
the completion of a multipart upload: an event hook adds it, only for the
uploads that asked for it (``_multipart``).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger('video_kd.storage.s3')

MODE_ENV = 'VIDEO_KD_S3_CONDITIONAL_WRITES'
MODES = ('auto', 'on', 'off')
PROBE_PREFIX = '.video-kd/probe/'
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # below: one PutObject
PART_SIZE = 8 * 1024 * 1024  # parts and threads as s3transfer: same throughput (benchmarks)
MAX_PARTS = 10_000  # S3's limit
UPLOAD_THREADS = 10
WRITER_METADATA = 'video-kd-writer'
_CONFLICT_RETRIES = 3  # AWS answers 409 while another conditional write is in flight
IF_NONE_MATCH = 'If-None-Match'
IF_MATCH = 'If-Match'

_probed: dict[tuple[str, str], frozenset[str]] = {}  # (endpoint, bucket) -> headers enforced
_probe_lock = threading.Lock()


class AlreadyExistsError(Exception):
    """The key was taken: by an earlier object, or by a writer that won the race."""


class UnsupportedError(Exception):
    """The server refuses conditional writes."""


class ChangedError(Exception):
    """A compare-and-swap lost: the object is not the version the writer read."""


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
        raise UserError(f'{MODE_ENV}={value!r}: expected one of {", ".join(MODES)}')
    return value


def supports_conditional_writes(client: BaseClient, bucket: str) -> bool:
    """Whether this server enforces ``If-None-Match: *`` (probed once per process and bucket)."""
    return enforces(client, bucket, IF_NONE_MATCH)


def enforces(client: BaseClient, bucket: str, header: str) -> bool:
    """Whether this server enforces ``header`` (``IF_NONE_MATCH``, ``IF_MATCH``) on PutObject."""
    setting = mode()
    if setting != 'auto':
        return setting == 'on'
    cache_key = (client.meta.endpoint_url, bucket)
    with _probe_lock:
        if cache_key not in _probed:
            _probed[cache_key] = _probe(client, bucket)
            for missing in sorted({IF_NONE_MATCH, IF_MATCH} - _probed[cache_key]):
                log.warning(
                    'S3 server %s does not enforce %s on bucket %s: %s falls back to '
                    'check-then-put, which two concurrent writers can still both pass (use a '
                    'server with conditional writes: AWS S3, MinIO)',
                    client.meta.endpoint_url,
                    missing,
                    bucket,
                    '"never overwrite"' if missing == IF_NONE_MATCH else 'saving the manifest',
                )
        return header in _probed[cache_key]


def _probe(client: BaseClient, bucket: str) -> frozenset[str]:
    """The conditions the server enforces, tried on a throw-away key."""
    key = f'{PROBE_PREFIX}{uuid.uuid4().hex}'
    etag = client.put_object(Bucket=bucket, Key=key, Body=b'1')['ETag']
    try:
        found = set()
        if _refused(lambda: client.put_object(Bucket=bucket, Key=key, Body=b'2', IfNoneMatch='*')):
            found.add(IF_NONE_MATCH)
        stale = '"00000000000000000000000000000000"'
        if _refused(
            lambda: client.put_object(Bucket=bucket, Key=key, Body=b'3', IfMatch=stale)
        ) and not _refused(
            lambda: client.put_object(Bucket=bucket, Key=key, Body=b'4', IfMatch=etag)
        ):
            found.add(IF_MATCH)
        return frozenset(found)
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except ClientError:
            pass  # no delete permission: a 1-byte probe object stays behind


def _refused(write: Callable[[], object]) -> bool:
    """Whether the server refused a conditional write (412); False when it wrote anyway
    (it ignores the header) or rejects the header itself (501, 400)."""
    try:
        write()
    except ClientError as exc:
        if _is_precondition_failed(exc):
            return True
        if _is_unsupported(exc) or error_code(exc) in ('InvalidArgument', '400'):
            return False
        raise
    return False


def replace(
    client: BaseClient, bucket: str, key: str, body: bytes, etag: str | None, **extra
) -> str | None:
    """Put ``body`` only if the object is still the version ``etag`` (None: still absent);
    returns the new ETag, or raises ``ChangedError`` and writes nothing."""
    header = IF_MATCH if etag else IF_NONE_MATCH
    if not enforces(client, bucket, header):
        return _replace_fallback(client, bucket, key, body, etag, **extra)
    condition = {'IfMatch': etag} if etag else {'IfNoneMatch': '*'}
    try:
        answer = client.put_object(Bucket=bucket, Key=key, Body=body, **condition, **extra)
    except ClientError as exc:
        if _is_precondition_failed(exc) or _is_conflict(exc):
            raise ChangedError(key) from exc
        if _is_unsupported(exc):
            raise UnsupportedError(str(exc)) from exc
        raise
    return answer.get('ETag')


def _replace_fallback(
    client: BaseClient, bucket: str, key: str, body: bytes, etag: str | None, **extra
) -> str | None:
    """Compare, put, read back: refuses a stale writer and reports most lost races,
    not all (see the module's docstring)."""
    if _stored_etag(client, bucket, key) != etag:
        raise ChangedError(key)
    written = client.put_object(Bucket=bucket, Key=key, Body=body, **extra).get('ETag')
    if _stored_etag(client, bucket, key) != written:
        raise ChangedError(f'{key} was replaced by another writer at the same time')
    return written


def _stored_etag(client: BaseClient, bucket: str, key: str) -> str | None:
    try:
        return client.head_object(Bucket=bucket, Key=key).get('ETag')
    except ClientError as exc:
        if error_code(exc) in ('404', 'NoSuchKey', 'NotFound'):
            return None
        raise


def delete_if_match(client: BaseClient, bucket: str, key: str, etag: str) -> None:
    """Delete ``key`` only if it is still the version ``etag``; else ``ChangedError``.

    ``If-Match`` on DeleteObject: moto 5.2.5 enforces it (tested), AWS S3
    documents it.  A server that rejects the header (``501``, ``400``) gets a
    plain delete: the caller has checked the object's content just before (a
    run claim: its owner token), and that check is then all that guards the
    delete; a server that ignores the header deletes unconditionally, the same.
    A missing object is no error (nothing to delete).
    """
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except ClientError as exc:
        if _is_precondition_failed(exc) or _is_conflict(exc):
            raise ChangedError(key) from exc
        if error_code(exc) in ('404', 'NoSuchKey', 'NotFound'):
            return
        if not (_is_unsupported(exc) or error_code(exc) in ('InvalidArgument', '400')):
            raise
        log.warning(
            'S3 server %s refuses If-Match on DeleteObject: deleting %s after an owner check',
            client.meta.endpoint_url,
            key,
        )
        client.delete_object(Bucket=bucket, Key=key)


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


def upload_etag(path: str | os.PathLike) -> str:
    """The ETag S3 gives a file that ``upload_new`` stored, without quotes: the MD5 of a
    single PUT, or the MD5 of the parts' MD5s and ``-<parts>`` for a multipart upload."""
    size = Path(path).stat().st_size
    if size <= MULTIPART_THRESHOLD:
        return _md5(path, 0, size).hex()
    part = part_size_for(size)
    digests = [_md5(path, offset, part) for offset in range(0, size, part)]
    return f'{_md5_of(b"".join(digests)).hex()}-{len(digests)}'


def _md5(path: str | os.PathLike, offset: int, length: int) -> bytes:
    """MD5 of ``length`` bytes of a file from ``offset`` (an ETag, not a security check)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as stream:
        stream.seek(offset)
        while length > 0 and (chunk := stream.read(min(length, 1024 * 1024))):
            digest.update(chunk)
            length -= len(chunk)
    return digest.digest()


def _md5_of(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


# (bucket, key) -> how many multipart uploads in flight must complete with If-None-Match
_conditional_completions: collections.Counter[tuple[str, str]] = collections.Counter()
_completions_lock = threading.Lock()


def _add_completion_condition(params: dict, **_) -> None:
    with _completions_lock:
        if _conditional_completions[(params.get('Bucket', ''), params.get('Key', ''))] > 0:
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
