"""Object storage for pipeline artifacts: S3, MinIO or Ceph through boto3.

Every pipeline step hands its outputs to the next through a bucket, so this
module is the only place that talks to object storage.  Two rules shape it:

* Credentials come from the environment only (in a cluster, from a Kubernetes
  Secret mounted as env vars), never from function parameters, so they never
  end up in a KFP pipeline spec, a log line or a component's inputs.
* A run never overwrites another run's objects: ``upload_file`` refuses to
  replace an existing object unless told to, and every run writes under its
  own ``<prefix>/<run-id>/`` directory (see ``video_kd.runs``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from video_kd.errors import UserError

log = logging.getLogger(__name__)

ENDPOINT_ENV_VARS = ('S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL')
ACCESS_KEY_ENV = 'AWS_ACCESS_KEY_ID'
SECRET_KEY_ENV = 'AWS_SECRET_ACCESS_KEY'
SESSION_TOKEN_ENV = 'AWS_SESSION_TOKEN'
REGION_ENV = 'AWS_DEFAULT_REGION'
DEFAULT_REGION = 'us-east-1'

_CHUNK = 1024 * 1024
_NOT_FOUND_CODES = {'404', 'NoSuchKey', 'NotFound'}


class S3Error(UserError):
    """An object storage operation failed; the message names the URI."""


class MissingCredentialsError(S3Error):
    """The S3 credentials are not in the environment."""


class ObjectNotFoundError(S3Error):
    """The bucket, object or prefix does not exist."""


class BucketNotFoundError(ObjectNotFoundError):
    """The bucket does not exist."""


class ObjectExistsError(S3Error):
    """Refused to overwrite an existing object."""


def s3_client():
    """Build an S3 client from the environment alone.

    Fails before any network call when credentials are missing, so a
    misconfigured pod stops with a message that says where to look.
    """
    missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not os.environ.get(name)]
    if missing:
        raise MissingCredentialsError(
            f'S3 credentials are missing: set {" and ".join(missing)} in the environment. '
            'In the cluster they come from a Kubernetes Secret mounted as env vars '
            f'({ACCESS_KEY_ENV}, {SECRET_KEY_ENV}, optionally {SESSION_TOKEN_ENV}); '
            f'the endpoint comes from {ENDPOINT_ENV_VARS[0]} (unset means AWS).'
        )
    endpoint = next((os.environ[n] for n in ENDPOINT_ENV_VARS if os.environ.get(n)), None)
    return _cached_client(
        endpoint,
        os.environ[ACCESS_KEY_ENV],
        os.environ[SECRET_KEY_ENV],
        os.environ.get(SESSION_TOKEN_ENV) or None,
        os.environ.get(REGION_ENV) or DEFAULT_REGION,
    )


@functools.lru_cache(maxsize=4)
def _cached_client(
    endpoint: str | None, access_key: str, secret_key: str, session_token: str | None, region: str
):
    """One client per configuration: building one costs ~100 ms and clients are thread-safe."""
    config = Config(
        s3={'addressing_style': 'path'},  # MinIO and Ceph have no virtual-host buckets
        retries={'mode': 'standard', 'total_max_attempts': 5},
        connect_timeout=10,
        read_timeout=120,
        signature_version='s3v4',
    )
    return boto3.session.Session().client(
        's3',
        endpoint_url=endpoint,
        region_name=region,
        config=config,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
    )


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
def _errors(action: str, uri: str) -> Iterator[None]:
    """Turn botocore's errors into ones that name the URI and the cause."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get('Error', {}).get('Code', '')
        message = exc.response.get('Error', {}).get('Message', '')
        if code == 'NoSuchBucket':
            raise BucketNotFoundError(
                f'cannot {action} {uri}: bucket {parse_s3_uri(uri)[0]!r} does not exist'
            ) from exc
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFoundError(f'cannot {action} {uri}: no such object') from exc
        raise S3Error(f'cannot {action} {uri}: {code} {message}'.rstrip()) from exc
    except BotoCoreError as exc:
        raise S3Error(f'cannot {action} {uri}: {exc}') from exc


def exists(uri: str) -> bool:
    """True when an object is stored at ``uri`` (a missing bucket also reads as False)."""
    bucket, key = parse_s3_uri(uri)
    try:
        with _errors('check', uri):
            s3_client().head_object(Bucket=bucket, Key=key)
    except ObjectNotFoundError:
        return False
    return True


def upload_file(local: str | os.PathLike, uri: str, overwrite: bool = False) -> str:
    """Upload one file; refuse to replace an existing object unless ``overwrite``.

    Steps run one after another, so check-then-put is race-free enough here.
    """
    local = Path(local)
    if not local.is_file():
        raise FileNotFoundError(f'cannot upload {local} to {uri}: no such file')
    if not overwrite and exists(uri):
        raise ObjectExistsError(
            f'refusing to overwrite {uri}: a run never overwrites objects '
            'that already exist (pass overwrite=True to replace it on purpose)'
        )
    bucket, key = parse_s3_uri(uri)
    with _errors('upload to', uri):
        s3_client().upload_file(str(local), bucket, key)
    log.info('uploaded %s -> %s (%d bytes)', local, uri, local.stat().st_size)
    return uri


def download_file(uri: str, local: str | os.PathLike) -> Path:
    """Download one object, atomically: a half-written file never has the final name."""
    bucket, key = parse_s3_uri(uri)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f'.{local.name}.', suffix='.part')
    os.close(fd)
    try:
        with _errors('download', uri):
            s3_client().download_file(bucket, key, tmp)
        os.replace(tmp, local)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info('downloaded %s -> %s', uri, local)
    return local


def read_bytes(uri: str) -> bytes:
    """The content of one object; a missing bucket or object raises ``ObjectNotFoundError``."""
    bucket, key = parse_s3_uri(uri)
    with _errors('read', uri):
        return s3_client().get_object(Bucket=bucket, Key=key)['Body'].read()


def read_json(uri: str):
    """One JSON object from S3 (artifact metadata, manifests, claims)."""
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise S3Error(f'{uri} is not valid JSON: {exc}') from exc


def put_bytes(uri: str, body: bytes, content_type: str = 'application/octet-stream') -> str:
    """Write a small object, replacing what is there (only for objects a run rewrites)."""
    bucket, key = parse_s3_uri(uri)
    with _errors('write', uri):
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    return uri


def create_if_absent(uri: str, body: bytes) -> str:
    """Write a small object that must not exist yet (a run claim); ``ObjectExistsError`` if it does."""
    if exists(uri):
        raise ObjectExistsError(f'refusing to overwrite {uri}: it exists already')
    return put_bytes(uri, body, content_type='application/json')


def delete(uri: str) -> None:
    """Remove one object (only a run's own claim is ever deleted)."""
    bucket, key = parse_s3_uri(uri)
    with _errors('delete', uri):
        s3_client().delete_object(Bucket=bucket, Key=key)


def list_uris(prefix: str) -> list[str]:
    """URIs of all objects whose key starts with the prefix's key, sorted."""
    bucket, key = parse_s3_uri(prefix)
    uris = []
    with _errors('list', prefix):
        pages = s3_client().get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            uris.extend(f's3://{bucket}/{obj["Key"]}' for obj in page.get('Contents', []))
    return sorted(uris)


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
    """Hex SHA-256 of a file, read in chunks so multi-GB checkpoints fit in memory."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()
