"""Object storage for pipeline artifacts: S3, MinIO or Ceph through boto3.

Every pipeline step hands its outputs to the next through a bucket, so this
module is the only place that talks to object storage.  Two rules shape it:

* Credentials come from the environment only (in a cluster, from a Kubernetes
  Secret mounted as env vars), never from function parameters, so they never
  end up in a KFP pipeline spec, a log line or a component's inputs.
* A run never overwrites another run's objects: ``upload_file`` refuses to
  replace an existing object unless told to, and every run writes under its
  own ``<prefix>/<run-id>/`` directory (see ``video_kd.runs``).  "Refuses" is
  atomic: the write itself is conditional (``video_kd.storage.s3_conditional``), so
  of many concurrent writers of one key exactly one wins.

Timeouts and retries are the one policy of ``video_kd.storage.s3_policy``, for this
module's client and for the data loaders' streaming one (``video_kd.storage.s3_fileio``)
alike; every failure goes through one mapping (``errors``) to an ``S3Error``
(a ``UserError``: one line, exit status 2), ``S3UnavailableError`` (exit
status 75: it passes) when the server could not be reached, reset the
connection, stopped answering, or answered 5xx / 429 to every attempt.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from video_kd.core.errors import TEMPORARY_FAILURE, UserError
from video_kd.storage import s3_conditional, s3_policy
from video_kd.storage.s3_policy import S3Policy

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

ENDPOINT_ENV_VARS = ('S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL')
ACCESS_KEY_ENV = 'AWS_ACCESS_KEY_ID'
SECRET_KEY_ENV = 'AWS_SECRET_ACCESS_KEY'
SESSION_TOKEN_ENV = 'AWS_SESSION_TOKEN'
REGION_ENV = 'AWS_DEFAULT_REGION'
DEFAULT_REGION = 'us-east-1'

_CHUNK = 1024 * 1024
_NOT_FOUND_CODES = {'404', 'NoSuchKey', 'NotFound'}
# How a response body fails midway: a stall, a reset, a connection closed early.
_BODY_ERRORS = (ReadTimeoutError, ResponseStreamingError, IncompleteReadError)


class S3Error(UserError, RuntimeError):
    """An object storage operation failed; the message names the URI."""


class MissingCredentialsError(S3Error):
    """The S3 credentials are not in the environment."""


class ObjectNotFoundError(S3Error):
    """The bucket, object or prefix does not exist."""


class BucketNotFoundError(ObjectNotFoundError):
    """The bucket does not exist."""


class ObjectExistsError(S3Error):
    """Refused to overwrite an existing object."""


class ObjectChangedError(S3Error):
    """A compare-and-swap write lost: the object changed since it was read."""


class S3UnavailableError(S3Error):
    """The server refused the connection, reset it, did not answer or answered 5xx / 429
    (after the retries): an outage, never a verdict on the object."""

    exit_status = TEMPORARY_FAILURE  # not bad input: a training pod's launcher retries it


def s3_client() -> BaseClient:
    """This process's S3 client, built from the environment alone.

    Fails before any network call when credentials are missing, so a
    misconfigured pod stops with a message that says where to look.  One per
    process: a forked worker (data prep's validators and encoders) must not use
    its parent's connection pool.
    """
    return _cached_client(os.getpid(), *client_settings())


def client_settings() -> tuple[str | None, str, str, str | None, str, S3Policy]:
    """What a client is built from: endpoint, credentials, region (the environment) and
    the policy; raises ``MissingCredentialsError`` first."""
    missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not os.environ.get(name)]
    if missing:
        raise MissingCredentialsError(
            f'S3 credentials are missing: set {" and ".join(missing)} in the environment. '
            'In the cluster they come from a Kubernetes Secret mounted as env vars '
            f'({ACCESS_KEY_ENV}, {SECRET_KEY_ENV}, optionally {SESSION_TOKEN_ENV}); '
            f'the endpoint comes from {ENDPOINT_ENV_VARS[0]} (unset means AWS).'
        )
    return (
        _endpoint(),
        os.environ[ACCESS_KEY_ENV],
        os.environ[SECRET_KEY_ENV],
        os.environ.get(SESSION_TOKEN_ENV) or None,
        os.environ.get(REGION_ENV) or DEFAULT_REGION,
        S3Policy.from_env(),
    )


def _endpoint() -> str | None:
    """The S3 endpoint URL from the environment; None means AWS."""
    return next((os.environ[n] for n in ENDPOINT_ENV_VARS if os.environ.get(n)), None)


@functools.lru_cache(maxsize=4)
def _cached_client(pid: int, *settings: Any) -> BaseClient:
    """One client per process and configuration: building one costs ~100 ms and clients
    are thread-safe."""
    return build_client(*settings, max_pool_connections=32)  # parallel parts, racing writers


def build_client(
    endpoint: str | None,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    region: str,
    policy: S3Policy,
    **config: Any,
) -> BaseClient:
    """A new client with the policy applied (``client_settings()`` gives the arguments);
    ``config``: more ``botocore.config.Config`` options (the pool size)."""
    client = boto3.session.Session().client(
        's3',
        endpoint_url=endpoint,
        region_name=region,
        config=policy.botocore_config(
            s3={'addressing_style': 'path'},  # MinIO and Ceph have no virtual-host buckets
            signature_version='s3v4',
            **config,
        ),
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
    )
    s3_policy.install(client)
    return client


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may help: the server was unreachable, stalled or answered
    5xx / 429 past the retries (``S3UnavailableError``, as ``errors`` maps them)."""
    if isinstance(error, S3UnavailableError):
        return True
    cause = error.__cause__
    return isinstance(error, S3Error) and isinstance(cause, ClientError) and _overloaded(cause)


def _overloaded(error: ClientError) -> bool:
    """A 5xx or 429 answer: the kind botocore retried before giving up."""
    status = error.response.get('ResponseMetadata', {}).get('HTTPStatusCode') or 0
    return status >= 500 or status == 429


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); the key may be empty."""
    if not uri.startswith('s3://'):
        raise ValueError(f'not an s3:// URI: {uri!r}')
    bucket, _, key = uri[len('s3://') :].partition('/')
    if not bucket:
        raise ValueError(f'no bucket in S3 URI: {uri!r}')
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """Join URI parts with single slashes, ignoring empty parts."""
    pieces = [base.rstrip('/')] + [p.strip('/') for p in parts if p.strip('/')]
    return '/'.join(pieces)


@contextlib.contextmanager
def errors(action: str, uri: str) -> Iterator[None]:
    """The one mapping of botocore's errors to ``S3Error``s that name the URI and the cause:
    ``S3UnavailableError`` when the server was unreachable, reset or stalled, or answered
    5xx / 429 to every attempt (an outage, not a bad request)."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get('Error', {}).get('Code', '')
        message = exc.response.get('Error', {}).get('Message', '')
        # a HEAD answers a bare 404 for a missing bucket too: only then ask about the bucket
        if code == 'NoSuchBucket' or (code in ('404', 'NotFound') and _bucket_missing(uri)):
            raise BucketNotFoundError(
                f'cannot {action} {uri}: bucket {parse_s3_uri(uri)[0]!r} does not exist'
            ) from exc
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFoundError(f'cannot {action} {uri}: no such object') from exc
        line = f'cannot {action} {uri}: {code} {message}'.rstrip()
        if _overloaded(exc):  # botocore retried it: the server is out, not the request bad
            raise S3UnavailableError(f'{line} (after {_max_attempts()} attempts)') from exc
        raise S3Error(line) from exc
    # refused, reset, timed out; a body cut short
    except (EndpointConnectionError, HTTPClientError, IncompleteReadError) as exc:
        raise S3UnavailableError(_unavailable_message(action, uri, exc)) from exc
    except BotoCoreError as exc:
        raise S3Error(f'cannot {action} {uri}: {exc}') from exc


def _unavailable_message(action: str, uri: str, exc: BotoCoreError) -> str:
    policy = S3Policy.from_env()
    endpoint = _endpoint() or 'AWS S3'
    if isinstance(exc, ReadTimeoutError):
        why = f'the S3 server at {endpoint} did not answer within {policy.read_timeout:g} s'
    elif isinstance(exc, (ConnectionClosedError, IncompleteReadError)):
        why = f'the S3 server at {endpoint} closed the connection'
    elif isinstance(exc, HTTPClientError):
        why = f'the connection to the S3 server at {endpoint} failed ({exc})'
    else:
        why = f'cannot connect to the S3 server at {endpoint}'
    return (
        f'cannot {action} {uri}: {why} ({policy.max_attempts} attempts); '
        f'check {ENDPOINT_ENV_VARS[0]} and that the server is up'
    )


def _max_attempts() -> int:
    return S3Policy.from_env().max_attempts


def _bucket_missing(uri: str) -> bool:
    """A HEAD answers a bare 404 for a missing bucket too: ask about the bucket itself."""
    bucket = parse_s3_uri(uri)[0]
    try:
        s3_client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        return exc.response.get('Error', {}).get('Code', '') in _NOT_FOUND_CODES | {'NoSuchBucket'}
    except BotoCoreError:
        return False
    return False


def ensure_bucket(bucket: str) -> None:
    """Create ``bucket`` unless it exists (the local demo's server starts empty)."""
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def exists(uri: str) -> bool:
    """True when an object is stored at ``uri``; a missing bucket raises ``BucketNotFoundError``."""
    bucket, key = parse_s3_uri(uri)
    try:
        with errors('check', uri):
            s3_client().head_object(Bucket=bucket, Key=key)
    except BucketNotFoundError:
        raise
    except ObjectNotFoundError:
        return False
    return True


def upload_file(local: str | os.PathLike, uri: str, overwrite: bool = False) -> str:
    """Upload one file; refuse to replace an existing object unless ``overwrite``.

    Without ``overwrite`` the write is conditional (``If-None-Match: *``): of
    several concurrent uploads to one key exactly one succeeds, the others
    raise ``ObjectExistsError`` and nothing of theirs is stored.
    """
    local = Path(local)
    if not local.is_file():
        raise FileNotFoundError(f'cannot upload {local} to {uri}: no such file')
    bucket, key = parse_s3_uri(uri)
    with errors('upload to', uri):
        if overwrite:
            s3_client().upload_file(str(local), bucket, key)
        else:
            _create(uri, lambda: s3_conditional.upload_new(s3_client(), bucket, key, local))
    log.info('uploaded %s -> %s (%d bytes)', local, uri, local.stat().st_size)
    return uri


def create_if_absent(
    uri: str, body: bytes | str, content_type: str = 'application/octet-stream'
) -> bool:
    """Store a small object only if ``uri`` is free; False when an object is already there.

    Atomic (one conditional PutObject): of concurrent callers exactly one
    gets True.  What run claims (``run.json``) and cache shards are made with.
    """
    bucket, key = parse_s3_uri(uri)
    data = body.encode() if isinstance(body, str) else body
    try:
        with errors('create', uri):
            _create(
                uri,
                lambda: s3_conditional.put_new(
                    s3_client(), bucket, key, data, ContentType=content_type
                ),
            )
    except ObjectExistsError:
        return False
    log.debug('created %s (%d bytes)', uri, len(data))  # callers log what it means
    return True


def _create(uri: str, write: Callable[[], object]) -> None:
    try:
        write()
    except s3_conditional.AlreadyExistsError as exc:
        raise ObjectExistsError(
            f'refusing to overwrite {uri}: a run never overwrites objects '
            'that already exist (pass overwrite=True to replace it on purpose)'
        ) from exc
    except s3_conditional.UnsupportedError as exc:
        raise _conditional_refused('create', uri, 'If-None-Match') from exc


def delete(uri: str, if_match: str | None = None) -> None:
    """Remove one object (run claims that produced nothing); a missing object is no error.

    ``if_match`` (the ETag it was read with): delete only that version, else
    ``ObjectChangedError`` (a conditional delete where the server has one; on
    one that rejects the header the caller's own check is all there is, see
    ``s3_conditional.delete_if_match``).
    """
    bucket, key = parse_s3_uri(uri)
    with errors('delete', uri):
        if if_match is None:
            s3_client().delete_object(Bucket=bucket, Key=key)
        else:
            try:
                s3_conditional.delete_if_match(s3_client(), bucket, key, if_match)
            except s3_conditional.ChangedError as exc:
                raise ObjectChangedError(f'{uri} changed since it was read') from exc
    log.info('deleted %s', uri)


def conditional_writes(uri: str) -> bool:
    """Whether the server of ``uri``'s bucket enforces ``If-None-Match: *`` (the probe of
    ``s3_conditional``, or ``VIDEO_KD_S3_CONDITIONAL_WRITES``)."""
    bucket, _ = parse_s3_uri(uri)
    with errors('probe', uri):
        return s3_conditional.supports_conditional_writes(s3_client(), bucket)


def download_file(uri: str, local: str | os.PathLike) -> Path:
    """Download one object, atomically: a half-written file never has the final name."""
    bucket, key = parse_s3_uri(uri)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f'.{local.name}.', suffix='.part')
    os.close(fd)
    try:
        with errors('download', uri):
            s3_client().download_file(bucket, key, tmp)
        os.replace(tmp, local)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info('downloaded %s -> %s', uri, local)
    return local


def fetch(uri: str, client: BaseClient | None = None, **params: Any) -> tuple[bytes, dict]:
    """GET one object (``params``: a ``Range``...): its whole body and the response.

    botocore retries a GET until its headers arrive; a body that then fails
    midway (a reset, a server that stops answering) is outside its retries.
    Such a GET is sent again here, within the same number of attempts in all
    (``s3_policy.continuing``), so a read gives up within the policy's
    ``request_budget_s()`` like any request, with ``S3UnavailableError``.
    """
    bucket, key = parse_s3_uri(uri)
    client = client or s3_client()
    limit = client.meta.config.retries['total_max_attempts']
    used = 0
    while True:
        with errors('read', uri), s3_policy.continuing(used):
            answer = client.get_object(Bucket=bucket, Key=key, **params)
            used += 1 + answer['ResponseMetadata'].get('RetryAttempts', 0)
            try:
                return answer['Body'].read(), answer
            except _BODY_ERRORS as exc:
                if used >= limit:
                    raise
                s3_policy.log_retry('GET', uri, used + 1, exc)
        time.sleep(s3_policy.backoff_s(used))


def read_bytes(uri: str) -> bytes:
    """The content of one object; a missing bucket or object raises ``ObjectNotFoundError``."""
    return fetch(uri)[0]


def read_json(uri: str) -> Any:
    """One JSON object from S3 (artifact metadata, manifests, claims)."""
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise S3Error(f'{uri} is not valid JSON: {exc}') from exc


def read_versioned(uri: str) -> tuple[bytes, str | None]:
    """An object's content and its ETag (for a compare-and-swap ``put_bytes``)."""
    body, answer = fetch(uri)
    return body, answer.get('ETag')


def put_bytes(
    uri: str,
    body: bytes,
    content_type: str = 'application/octet-stream',
    if_match: str | None = None,
    if_absent: bool = False,
) -> str | None:
    """Write a small object that a run rewrites (its manifest); returns the new ETag.

    ``if_match`` (the ETag it was read with) or ``if_absent`` make the write a
    compare-and-swap (``s3_conditional.replace``): when another writer got
    there first, ``ObjectChangedError`` is raised and nothing is written.  On
    a server without ``If-Match`` / ``If-None-Match`` that is the documented
    fallback, which narrows the race but cannot close it.
    """
    bucket, key = parse_s3_uri(uri)
    with errors('write', uri):
        client = s3_client()
        if not (if_match or if_absent):
            return client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=content_type
            ).get('ETag')
        try:
            return s3_conditional.replace(
                client, bucket, key, body, if_match, ContentType=content_type
            )
        except s3_conditional.ChangedError as exc:
            raise ObjectChangedError(f'{uri} changed since it was read') from exc
        except s3_conditional.UnsupportedError as exc:
            header = 'If-Match' if if_match else 'If-None-Match'
            raise _conditional_refused('write', uri, header) from exc


def _conditional_refused(action: str, uri: str, header: str) -> S3Error:
    return S3Error(
        f'cannot {action} {uri}: the S3 server refuses conditional writes ({header}); '
        f'set {s3_conditional.MODE_ENV}=off to use the check-then-put fallback'
    )


def holds_file(uri: str, local: str | os.PathLike) -> bool:
    """Whether the object at ``uri`` has the bytes of ``local`` (size, then ETag).

    The ETag is computed as this module uploads (one PUT or parts of
    ``s3_conditional.part_size_for``); a server whose ETags are not MD5s
    (SSE-KMS) answers False, never a wrong True.
    """
    bucket, key = parse_s3_uri(uri)
    with errors('check', uri):
        head = s3_client().head_object(Bucket=bucket, Key=key)
    if head.get('ContentLength') != Path(local).stat().st_size:
        return False
    return head.get('ETag', '').strip('"') == s3_conditional.upload_etag(local)


def list_uris(prefix: str) -> list[str]:
    """URIs of all objects whose key starts with the prefix's key, sorted."""
    bucket, key = parse_s3_uri(prefix)
    uris: list[str] = []
    with errors('list', prefix):
        pages = s3_client().get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            uris.extend(f's3://{bucket}/{obj["Key"]}' for obj in page.get('Contents', []))
    return sorted(uris)


def list_dirs(prefix: str) -> list[str]:
    """The "directories" directly under ``prefix`` (S3's CommonPrefixes with ``/``): the
    URIs, without their trailing slash, sorted."""
    bucket, key = parse_s3_uri(prefix)
    key = key.rstrip('/') + '/' if key else ''
    found: list[str] = []
    with errors('list', prefix):
        pages = (
            s3_client()
            .get_paginator('list_objects_v2')
            .paginate(Bucket=bucket, Prefix=key, Delimiter='/')
        )
        for page in pages:
            found += [
                f's3://{bucket}/{p["Prefix"].rstrip("/")}' for p in page.get('CommonPrefixes', [])
            ]
    return sorted(found)


READ_MANY_WORKERS = 32  # the shared client's connection pool (``_cached_client``)


def read_many(uris: list[str], workers: int | None = None) -> dict[str, bytes | None]:
    """Many small objects at once (records, manifests): parallel GETs on one shared client;
    a missing object is None.  Thousands of runs' records in seconds, not minutes."""
    client = s3_client()  # one client, shared by the threads (botocore clients are thread-safe)

    def read(uri: str) -> bytes | None:
        try:
            return fetch(uri, client)[0]
        except BucketNotFoundError:
            raise
        except ObjectNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers or READ_MANY_WORKERS)) as pool:
        return dict(zip(uris, pool.map(read, uris), strict=True))


def upload_dir(local_dir: str | os.PathLike, uri_prefix: str, overwrite: bool = False) -> list[str]:
    """Upload every file under ``local_dir``, keeping relative paths; returns the URIs."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f'cannot upload {local_dir} to {uri_prefix}: no such directory')
    files = sorted(p for p in local_dir.rglob('*') if p.is_file())
    return [
        upload_file(p, join_uri(uri_prefix, p.relative_to(local_dir).as_posix()), overwrite)
        for p in files
    ]


def download_dir(uri_prefix: str, local_dir: str | os.PathLike) -> list[Path]:
    """Download every object under ``uri_prefix/`` into ``local_dir``; returns the paths.

    An empty prefix is an error: a step that expects inputs there would
    otherwise go on with nothing.
    """
    prefix = uri_prefix.rstrip('/') + '/'
    uris = list_uris(prefix)
    if not uris:
        raise ObjectNotFoundError(f'no objects under {prefix}')
    local_dir = Path(local_dir).resolve()
    paths = []
    for uri in uris:
        target = (local_dir / uri[len(prefix) :]).resolve()
        if not target.is_relative_to(local_dir):
            raise S3Error(f'refusing to download {uri} outside {local_dir}')
        paths.append(download_file(uri, target))
    return paths


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints fit in memory.

    Remembered per (path, inode, size, mtime): a checkpoint is published,
    compared with the manifest and recorded, and hashing a 500 MB file three
    times cost seconds per epoch.  A rewritten file has a new mtime.
    """
    stat = os.stat(path)
    fingerprint = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if fingerprint in _hash_memo:
            return _hash_memo[fingerprint]
    digest = _hash_stream(path)
    with _hash_lock:
        _hash_memo[fingerprint] = digest
        while len(_hash_memo) > _HASH_MEMO_SIZE:
            _hash_memo.pop(next(iter(_hash_memo)))
    return digest


_HASH_MEMO_SIZE = 256
_hash_memo: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def _hash_stream(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()
