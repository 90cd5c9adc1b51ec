"""video_kd.storage.s3 against a real S3 server (moto, as a subprocess)."""

from __future__ import annotations

import hashlib
import socket

import pytest

from video_kd.core.errors import UserError
from video_kd.storage import s3


def test_refuses_to_overwrite(bucket, tmp_path):
    uri = f's3://{bucket}/kd/run/train/log.txt'
    first, second = tmp_path / 'a', tmp_path / 'b'
    first.write_text('first')
    second.write_text('second')
    s3.upload_file(first, uri)

    with pytest.raises(s3.ObjectExistsError, match='refusing to overwrite'):
        s3.upload_file(second, uri)
    assert s3.download_file(uri, tmp_path / 'got').read_text() == 'first'

    s3.upload_file(second, uri, overwrite=True)
    assert s3.download_file(uri, tmp_path / 'got').read_text() == 'second'


def test_dir_round_trip_and_listing(bucket, tmp_path):
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    (src / 'a.txt').write_text('a')
    (src / 'sub' / 'b.txt').write_text('b')
    prefix = f's3://{bucket}/kd/run/data'

    uris = s3.upload_dir(src, prefix)

    assert uris == [f'{prefix}/a.txt', f'{prefix}/sub/b.txt']
    assert s3.list_uris(prefix) == uris
    assert s3.exists(uris[1]) and not s3.exists(f'{prefix}/nope')
    paths = s3.download_dir(prefix, tmp_path / 'dst')
    relative = sorted(p.relative_to(tmp_path / 'dst').as_posix() for p in paths)
    assert relative == ['a.txt', 'sub/b.txt']
    assert (tmp_path / 'dst' / 'sub' / 'b.txt').read_text() == 'b'


def test_missing_object_and_bucket_name_the_uri(bucket, tmp_path):
    with pytest.raises(s3.ObjectNotFoundError, match=f's3://{bucket}/nope.bin: no such object'):
        s3.download_file(f's3://{bucket}/nope.bin', tmp_path / 'x')
    assert not (tmp_path / 'x').exists()
    assert list(tmp_path.iterdir()) == []  # no partial download left behind
    with pytest.raises(s3.BucketNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        s3.list_uris('s3://no-such-bucket/prefix')
    with pytest.raises(s3.ObjectNotFoundError, match='no objects under'):
        s3.download_dir(f's3://{bucket}/empty', tmp_path / 'd')


def test_missing_credentials_fail_before_any_network_call(monkeypatch):
    monkeypatch.delenv('AWS_ACCESS_KEY_ID', raising=False)
    monkeypatch.delenv('AWS_SECRET_ACCESS_KEY', raising=False)
    monkeypatch.setenv('S3_ENDPOINT_URL', 'http://127.0.0.1:9')

    def no_network(*args, **kwargs):
        raise AssertionError('network used before the credential check')

    monkeypatch.setattr(socket, 'create_connection', no_network)
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    with pytest.raises(s3.MissingCredentialsError) as info:
        s3.exists('s3://bucket/key')
    message = str(info.value)
    assert 'AWS_ACCESS_KEY_ID' in message and 'AWS_SECRET_ACCESS_KEY' in message
    assert 'Kubernetes Secret' in message
    assert isinstance(info.value, UserError)  # one line, exit status 2 in every entry point


def test_client_uses_endpoint_region_and_path_style(s3_env, monkeypatch):
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'eu-west-1')
    client = s3.s3_client()
    assert client.meta.endpoint_url == s3_env
    assert client.meta.region_name == 'eu-west-1'
    assert client.meta.config.s3['addressing_style'] == 'path'
    assert client.meta.config.retries == {'mode': 'standard', 'total_max_attempts': 3}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (5.0, 20.0)


def test_stream_client_follows_the_one_policy(s3_env, monkeypatch):
    # regression: the streaming client read VIDEO_KD_S3_ATTEMPTS (8) and a 30 s read
    # timeout once at import (its retry log lines: tests/test_s3_faults.py)
    from video_kd.storage import s3_fileio
    from video_kd.storage.s3_policy import MAX_ATTEMPTS_ENV, READ_TIMEOUT_ENV

    monkeypatch.setenv(MAX_ATTEMPTS_ENV, '4')
    monkeypatch.setenv(READ_TIMEOUT_ENV, '7')
    client = s3_fileio.stream_client()
    assert client.meta.config.retries == {'mode': 'standard', 'total_max_attempts': 4}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (5.0, 7.0)
    assert client.meta.config.max_pool_connections == s3_fileio.POOL_CONNECTIONS
    assert client is not s3.s3_client()  # its own connection pool, the same policy
    assert s3_fileio.stream_client() is client  # one per process, shared by its threads
    monkeypatch.setenv(READ_TIMEOUT_ENV, '9')
    assert s3_fileio.stream_client().meta.config.read_timeout == 9.0


def test_a_forked_process_builds_its_own_s3_client(s3_env):
    import multiprocessing

    parent = s3.s3_client()
    with multiprocessing.get_context('fork').Pool(1) as pool:
        assert pool.apply(_s3_client_id) != id(parent)
    assert s3.s3_client() is parent


def _s3_client_id() -> int:
    return id(s3.s3_client())


def test_aws_endpoint_url_is_the_fallback(s3_env, monkeypatch):
    monkeypatch.delenv('S3_ENDPOINT_URL')
    monkeypatch.setenv('AWS_ENDPOINT_URL', s3_env)
    assert s3.s3_client().meta.endpoint_url == s3_env


def test_uri_helpers():
    assert s3.parse_s3_uri('s3://b/k/x.pth') == ('b', 'k/x.pth')
    assert s3.parse_s3_uri('s3://b') == ('b', '')
    assert s3.join_uri('s3://b/', '/p/', '', 'x') == 's3://b/p/x'
    for bad in ('http://b/k', 's3:///k'):
        with pytest.raises(ValueError):
            s3.parse_s3_uri(bad)


def test_sha256_file_streams(tmp_path):
    path = tmp_path / 'big'
    data = bytes(range(256)) * 10_000  # > one 1 MiB chunk
    path.write_bytes(data)
    assert s3.sha256_file(path) == hashlib.sha256(data).hexdigest()
