"""video_kd.storage.download against a real HTTP file server and a real S3 server."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading

import pytest

from video_kd.core.errors import UserError
from video_kd.runs import RunLayout
from video_kd.storage import download, s3
from video_kd.storage.download import (
    ChecksumMismatchError,
    DownloadError,
    fetch_teacher,
    progress_line,
)

CONTENT = b'teacher-weights-' * 4096
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def served(http_server):
    (http_server.root / 'tsm_teacher.pth').write_bytes(CONTENT)
    return http_server


def test_http_download_with_checksum(served, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='video_kd.storage.download')
    path = fetch_teacher(
        served.url('tsm_teacher.pth'), tmp_path / 'ckpt', sha256=SHA.upper(), progress_every_mb=0
    )
    assert path == tmp_path / 'ckpt' / 'tsm_teacher.pth'
    assert path.read_bytes() == CONTENT
    assert list(path.parent.iterdir()) == [path]
    assert 'MB/s' in caplog.text


def test_wrong_checksum_fails_and_leaves_no_file(served, tmp_path):
    url = served.url('tsm_teacher.pth')
    with pytest.raises(ChecksumMismatchError) as info:
        fetch_teacher(url, tmp_path / 'ckpt', sha256='0' * 64)
    assert info.value.expected == '0' * 64 and info.value.got == SHA
    assert url in str(info.value) and SHA in str(info.value)
    assert list((tmp_path / 'ckpt').iterdir()) == []


def test_retries_after_503(served, tmp_path, caplog):
    served.fail_next('tsm_teacher.pth')
    path = fetch_teacher(served.url('tsm_teacher.pth'), tmp_path, sha256=SHA, backoff=0.01)
    assert path.read_bytes() == CONTENT
    assert served.requests['tsm_teacher.pth'] == 2
    assert 'HTTP 503' in caplog.text


def test_gives_up_after_retries(served, tmp_path):
    served.fail_next('tsm_teacher.pth', times=3)
    with pytest.raises(DownloadError, match='after 3 attempts: HTTP 503'):
        fetch_teacher(served.url('tsm_teacher.pth'), tmp_path / 'd', retries=2, backoff=0.01)
    assert served.requests['tsm_teacher.pth'] == 3
    assert list((tmp_path / 'd').iterdir()) == []


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match='HTTP 404'):
        fetch_teacher(http_server.url('missing.pth'), tmp_path, backoff=0.01)
    assert http_server.requests['missing.pth'] == 1


def test_cache_hit_skips_the_url(served, bucket, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='video_kd.storage.download')
    layout = RunLayout(bucket, 'video-kd', 'run-a')
    url = served.url('tsm_teacher.pth')

    fetch_teacher(url, tmp_path / 'first', sha256=SHA, cache=layout)
    assert s3.exists(layout.cache_uri('teacher', SHA, 'tsm_teacher.pth'))
    (served.root / 'tsm_teacher.pth').unlink()  # the URL is dead from now on

    other_run = RunLayout(bucket, 'video-kd', 'run-b')
    path = fetch_teacher(url, tmp_path / 'second', sha256=SHA, cache=other_run)

    assert path.read_bytes() == CONTENT
    assert served.requests['tsm_teacher.pth'] == 1
    assert 'cache hit' in caplog.text


def test_cache_root_given_as_uri(served, bucket, tmp_path):
    root = f's3://{bucket}/video-kd/cache'
    fetch_teacher(served.url('tsm_teacher.pth'), tmp_path, sha256=SHA, cache=root)
    assert s3.exists(f'{root}/teacher/{SHA}/tsm_teacher.pth')


def test_s3_source(bucket, tmp_path):
    src = tmp_path / 'teacher.pth'
    src.write_bytes(CONTENT)
    uri = f's3://{bucket}/zoo/teacher.pth'
    s3.upload_file(src, uri)
    path = fetch_teacher(uri, tmp_path / 'dest', sha256=SHA)
    assert path.read_bytes() == CONTENT


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / 'zoo' / 'teacher.pth'
    src.parent.mkdir()
    src.write_bytes(CONTENT)
    assert fetch_teacher(str(src), tmp_path / 'a', sha256=SHA).read_bytes() == CONTENT
    assert fetch_teacher(src.as_uri(), tmp_path / 'b', sha256=SHA).read_bytes() == CONTENT
    with pytest.raises(DownloadError, match='checkpoint not found'):
        fetch_teacher(str(tmp_path / 'nope.pth'), tmp_path / 'c')


def test_bad_sha256_is_rejected_before_download(http_server, tmp_path):
    for bad in ('abc', 'z' * 64):
        with pytest.raises(UserError, match='is not a SHA-256: expected 64 hex digits'):
            fetch_teacher(http_server.url('x.pth'), tmp_path, sha256=bad)
    assert http_server.requests['x.pth'] == 0


def test_download_errors_are_user_errors(tmp_path):
    assert issubclass(DownloadError, UserError)
    for url, match in (
        (str(tmp_path / 'nope.pth'), 'teacher checkpoint not found: .*nope.pth'),
        ('ftp://zoo/t.pth', "unsupported URL scheme 'ftp' in 'ftp://zoo/t.pth'"),
        ('https://zoo/', "cannot tell a file name from 'https://zoo/'"),
    ):
        with pytest.raises(UserError, match=match):
            fetch_teacher(url, tmp_path / 'd')


def test_concurrent_runs_cache_the_teacher_once(served, bucket, tmp_path):
    # regression: two runs fetching one teacher both saw no cache entry; the second
    # upload then failed with "refusing to overwrite" and so did its step
    layout = RunLayout(bucket, 'video-kd', 'run-race')
    url = served.url('tsm_teacher.pth')
    barrier, errors = threading.Barrier(8), []

    def fetch(i: int) -> None:
        barrier.wait()
        try:
            fetch_teacher(url, tmp_path / f'run-{i}', sha256=SHA, cache=layout)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    cache_uri = layout.cache_uri('teacher', SHA, 'tsm_teacher.pth')
    assert s3.read_bytes(cache_uri) == CONTENT
    assert s3.list_uris(cache_uri.rsplit('/', 1)[0] + '/') == [cache_uri]


def test_progress_line_has_rate_and_eta():
    mb = 1024 * 1024
    assert progress_line(64 * mb, 512 * mb, 8.0) == '64 of 512 MB (12.5%), 8.0 MB/s, ETA 56 s'
    assert progress_line(64 * mb, None, 8.0) == '64 MB, 8.0 MB/s'


def test_cli(served, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'video_kd.storage.download',
            served.url('tsm_teacher.pth'),
            '--sha256',
            SHA,
            '--dest',
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / 'tsm_teacher.pth')

    bad = subprocess.run(
        [
            sys.executable,
            '-m',
            'video_kd.storage.download',
            served.url('tsm_teacher.pth'),
            '--sha256',
            '1' * 64,
            '--dest',
            str(tmp_path / 'bad'),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.splitlines()[-1].startswith('error: SHA-256 mismatch')
    assert 'Traceback' not in bad.stderr


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (['--sha256', 'g' * 64], "error: sha256 'ggg"),
        (['--retries', '-1'], 'error: --retries must be >= 0, got -1'),
        (['--timeout', '0'], 'error: --timeout must be > 0 seconds, got 0'),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, expected):
    # in-process (a subprocess costs ~8 s of imports here; test_cli runs the real one)
    code = download.cli(['https://zoo/t.pth', '--dest', str(tmp_path / 'dest'), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(expected) and err.count('\n') == 1, err
    assert list(tmp_path.iterdir()) == []


def test_cli_help():
    proc = subprocess.run(
        [sys.executable, '-m', 'video_kd.storage.download', '--help'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert '--sha256' in proc.stdout and '--cache' in proc.stdout
