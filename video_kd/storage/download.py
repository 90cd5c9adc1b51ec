"""Download the teacher checkpoint: verified, atomic, retried, cached in S3.

Teachers are large (hundreds of MB) and come from model zoos that are slow
or flaky, so:

* the file is streamed to a temporary name in ``dest_dir`` and renamed only
  after its SHA-256 matches, so a half-written or wrong file never carries
  the final name;
* connection errors and 5xx answers are retried with exponential backoff;
* with a known SHA-256 and a cache, the verified file is kept in S3 under its
  checksum and later runs copy it from there without touching the URL.

Sources: ``https://``, ``s3://``, ``file://`` and plain paths; plain ``http://`` only
from this machine (127.0.0.1, ``localhost``, ::1: a local mirror, the tests), as anyone on
the way could swap the weights of a download in clear.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, overload

from video_kd.core.checks import InvalidInputError, check_range, check_sha256
from video_kd.core.errors import UserError, run_cli, setup_logging
from video_kd.storage import s3

log = logging.getLogger('video_kd.storage.download')

CACHE_KIND = 'teacher'
# What a cache kind's file is, and where its sha256 is given (for the no-sha256 warning).
_PINNED_AS = {
    CACHE_KIND: ('the teacher', 'teacher_sha256 (--sha256)'),
    'pretrained': (
        "the student's ImageNet weights",
        'student_pretrained_sha256 (--student-pretrained-sha256)',
    ),
}
_CHUNK = 1024 * 1024
_MB = 1024 * 1024


class DownloadError(UserError, RuntimeError):
    """The checkpoint could not be fetched (one line, exit status 2)."""


class SourceNotFoundError(DownloadError, FileNotFoundError):
    """A local teacher file that does not exist."""


class ChecksumMismatchError(DownloadError):
    """The fetched file's SHA-256 is not the expected one."""

    def __init__(self, url: str, expected: str, got: str):
        super().__init__(
            f'SHA-256 mismatch for {url}: expected {expected}, got {got}; the file was discarded'
        )
        self.url, self.expected, self.got = url, expected, got


class ChangedSinceRecordedError(UserError):
    """An object read back whose sha256 is not the one recorded when it was stored."""

    def __init__(self, uri: str, got: str, recorded: str | None):
        super().__init__(
            f'{uri} changed since it was recorded: sha256 {got}, manifest says {recorded}'
        )


class ContentCache(Protocol):
    """Where content-addressed copies live (``video_kd.runs.RunLayout`` is one): storage
    knows the key scheme, not the run layout."""

    def cache_uri(self, kind: str, sha256: str, filename: str) -> str: ...


class _Retryable(Exception):
    """A failure worth another attempt (connection trouble, 5xx, short body)."""


@dataclass(frozen=True)
class Fetched:
    """A verified checkpoint on local disk, and whether it came from the S3 cache."""

    path: Path
    cache_hit: bool


def fetch_teacher(*args, **kwargs) -> Path:
    """``fetch`` returning only the path (the file is what most callers want)."""
    return fetch(*args, **kwargs).path


def fetch(
    url: str,
    dest_dir: str | os.PathLike,
    sha256: str | None = None,
    cache: ContentCache | str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress_every_mb: int = 64,
    cache_kind: str = CACHE_KIND,
    check: Callable[[Path], object] | None = None,
) -> Fetched:
    """Fetch ``url`` into ``dest_dir``; returns the file's path and whether the cache had it.

    ``sha256`` pins the content; without it the file is accepted as is (and
    cannot be cached).  ``cache`` is a ``ContentCache`` (a run's ``RunLayout``: its shared
    ``cache/`` directory) or an ``s3://`` cache root; the object lives at
    ``<root>/<cache_kind>/<sha256>/<filename>`` (``teacher``; ImageNet weights
    use ``pretrained``).  ``retries`` counts attempts after the first one, for
    HTTP(S) sources.  ``check(path)`` runs on the verified file before it is cached (and on
    a cache hit's copy): a file it refuses (raises) — a "teacher" with the right sha256 that
    does not fit the KD config — never reaches the cache that other runs share.
    """
    check_url(url)
    sha256 = _normalized_sha256(sha256)
    filename = _filename(url)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    cache_uri = (
        _cache_uri(cache, sha256, filename, cache_kind) if cache is not None and sha256 else None
    )
    if cache is not None and not sha256:
        log.warning(
            'no sha256 given for %s: the cache is keyed by checksum, so it is not used', url
        )

    if cache_uri and s3.exists(cache_uri):
        log.info('cache hit: %s (not downloading %s)', cache_uri, url)
        dest = fetch_atomically(
            cache_uri, dest_dir / filename, sha256, lambda tmp: s3.download_file(cache_uri, tmp)
        )
        if check:
            check(dest)
        return Fetched(_ready(dest), cache_hit=True)

    dest = _ready(
        fetch_atomically(
            url,
            dest_dir / filename,
            sha256,
            lambda tmp: _fetch_to(url, tmp, retries, timeout, backoff, progress_every_mb),
        )
    )
    if not sha256:
        what, option = _PINNED_AS.get(cache_kind, ('the file', 'its sha256'))
        log.warning(
            'no sha256 given for %s: pass the one logged above as %s to pin %s', url, option, what
        )
    if check:
        check(dest)  # before caching: a refused file is kept from the shared cache
    if cache_uri and cache is not None and sha256:  # as for cache_uri
        store_in_cache(dest, cache, sha256, cache_kind)
    return Fetched(dest, cache_hit=False)


def store_in_cache(
    path: Path, cache: ContentCache | str, sha256: str, cache_kind: str = CACHE_KIND
) -> str:
    """Keep ``path``, verified to have ``sha256``, in the S3 cache under that checksum
    (``<root>/<cache_kind>/<sha256>/<file name>``, where ``fetch`` looks); returns its URI.
    The upload is conditional: concurrent runs cache it once, and a copy already there is kept.
    """
    cache_uri = _cache_uri(cache, _normalized_sha256(sha256), path.name, cache_kind)
    try:
        s3.upload_file(path, cache_uri)
        log.info('cached %s at %s', path.name, cache_uri)
    except s3.ObjectExistsError:
        log.info('%s was already cached (by another run): kept', cache_uri)
    return cache_uri


def _ready(dest: Path) -> Path:
    log.info('checkpoint ready: %s (%.1f MB)', dest, dest.stat().st_size / _MB)
    return dest


@overload
def _normalized_sha256(sha256: str) -> str: ...
@overload
def _normalized_sha256(sha256: None) -> None: ...
def _normalized_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    return check_sha256(sha256, name='sha256', required=True)


def _filename(url: str) -> str:
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise InvalidInputError(f'cannot tell a file name from {url!r}')
    return name


def _cache_uri(cache: ContentCache | str, sha256: str, filename: str, kind: str) -> str:
    if not isinstance(cache, str):
        return cache.cache_uri(kind, sha256, filename)
    s3.parse_s3_uri(cache)  # fail early on a cache that is not an s3:// URI
    return s3.join_uri(cache, kind, sha256, filename)


def fetch_atomically(
    source: str, dest: Path, sha256: str | None, fetch: Callable[[Path], object]
) -> Path:
    """Run ``fetch(tmp_path)``, check the checksum, then rename onto ``dest``.

    Whatever goes wrong, the temporary file is removed: no file is left
    behind that a later step could mistake for the real one.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.', suffix='.part')
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fetch(tmp)
        got = s3.sha256_file(tmp)
        if sha256 and got != sha256:
            raise ChecksumMismatchError(source, sha256, got)
        log.info('%s: sha256 %s', source, got)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_to(
    url: str, tmp: Path, retries: int, timeout: float, backoff: float, progress_every_mb: int
) -> None:
    """Copy ``url`` into ``tmp``, whatever its scheme."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ('http', 'https'):
        _http_download(url, tmp, retries, timeout, backoff, progress_every_mb)
    elif scheme == 's3':
        s3.download_file(url, tmp)
    elif scheme in ('', 'file'):
        source = Path(
            urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
            if scheme == 'file'
            else url
        )
        if not source.is_file():
            raise SourceNotFoundError(f'teacher checkpoint not found: {source}')
        shutil.copyfile(source, tmp)
    else:
        check_url(url)


LOOPBACK_HOSTS = ('127.0.0.1', 'localhost', '::1')


def check_url(url: str, name: str = '') -> str:
    """A URL ``fetch`` can read (https://, s3://, file://, a local path, or http:// from this
    machine) and a file name can be told from; ``name`` (the parameter) leads the message."""
    parts = urllib.parse.urlsplit(url)
    lead = f'{name} ' if name else ''
    if parts.scheme not in ('http', 'https', 's3', 'file', ''):
        raise InvalidInputError(
            f'{lead}unsupported URL scheme {parts.scheme!r} in {url!r}; '
            'use https://, s3://, file:// or a local path'
        )
    if parts.scheme == 'http' and parts.hostname not in LOOPBACK_HOSTS:
        raise InvalidInputError(
            f'{lead}{url!r}: plain http:// is refused for weights (anyone on the way could '
            'swap them); use https://, s3:// or a local file'
        )
    _filename(url)
    return url


def _http_download(
    url: str, tmp: Path, retries: int, timeout: float, backoff: float, progress_every_mb: int
) -> None:
    """Stream ``url`` into ``tmp``, retrying connection errors and 5xx with backoff."""
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with open(tmp, 'wb') as out:
                _http_attempt(url, out, timeout, progress_every_mb)
            return
        except _Retryable as exc:
            if attempt == attempts:
                raise DownloadError(f'giving up on {url} after {attempts} attempts: {exc}') from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                'attempt %d/%d for %s failed (%s); retrying in %.1fs',
                attempt,
                attempts,
                url,
                exc,
                delay,
            )
            time.sleep(delay)


def _http_attempt(url: str, out: BinaryIO, timeout: float, progress_every_mb: int) -> None:
    """One GET; sorts failures into retryable and final ones."""
    request = urllib.request.Request(url, headers={'User-Agent': 'video-kd/0.1'})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            _copy_with_progress(url, response, out, response.length, progress_every_mb)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise _Retryable(f'HTTP {exc.code} {exc.reason}') from exc
        raise DownloadError(f'cannot download {url}: HTTP {exc.code} {exc.reason}') from exc
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _Retryable(str(getattr(exc, 'reason', exc))) from exc


def _copy_with_progress(
    url: str, response: BinaryIO, out: BinaryIO, total: int | None, progress_every_mb: int
) -> None:
    """Copy in chunks, logging MB, MB/s and the ETA every ``progress_every_mb`` MB."""
    start = time.monotonic()
    done, next_report = 0, progress_every_mb * _MB
    for chunk in iter(lambda: response.read(_CHUNK), b''):
        out.write(chunk)
        done += len(chunk)
        if done >= next_report:
            log.info('%s: %s', url, progress_line(done, total, time.monotonic() - start))
            next_report += progress_every_mb * _MB
    if total is not None and done != total:
        raise _Retryable(f'connection closed after {done} of {total} bytes')


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """``64 of 512 MB (12.5%), 8.0 MB/s, ETA 56 s`` (no ETA when the size is unknown)."""
    rate = done / max(elapsed, 1e-6)
    if not total:
        return f'{done / _MB:.0f} MB, {rate / _MB:.1f} MB/s'
    eta = (total - done) / max(rate, 1e-9)
    return (
        f'{done / _MB:.0f} of {total / _MB:.0f} MB ({100 * done / total:.1f}%), '
        f'{rate / _MB:.1f} MB/s, ETA {eta:.0f} s'
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m video_kd.storage.download``: fetch a teacher checkpoint, print its path."""
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.storage.download',
        description='Download a teacher checkpoint, verify its SHA-256 and move it into place '
        'atomically. With --cache, a verified copy is kept in S3 under its checksum '
        'and later calls copy it from there instead of the URL. S3 credentials come '
        'from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from '
        'S3_ENDPOINT_URL.',
        epilog='example: python -m video_kd.storage.download '
        'https://download.openmmlab.com/.../tsm_r50.pth --sha256 <64 hex> --dest ckpt/',
    )
    parser.add_argument('url', help='https://, s3://, file:// URL or local path')
    parser.add_argument('--sha256', help='expected SHA-256 (hex); strongly recommended')
    parser.add_argument('--dest', required=True, type=Path, help='directory to put the file in')
    parser.add_argument('--cache', help='s3:// cache root, e.g. s3://bucket/video-kd/cache')
    parser.add_argument('--retries', type=int, default=3, help='HTTP retries (default 3)')
    parser.add_argument(
        '--timeout',
        type=float,
        default=60.0,
        help='seconds to wait for the server on each read (default 60)',
    )
    args = parser.parse_args(argv)
    setup_logging()
    check_range('--retries', args.retries, 0)
    if not args.timeout > 0:
        raise InvalidInputError(f'--timeout must be > 0 seconds, got {args.timeout:g}')
    path = fetch_teacher(
        args.url,
        args.dest,
        sha256=args.sha256,
        cache=args.cache,
        retries=args.retries,
        timeout=args.timeout,
    )
    print(path)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` with every user error as one ``error: ...`` line and exit status 2."""
    return run_cli(main, argv)


if __name__ == '__main__':
    sys.exit(cli())


def fetch_verified(uri: str, dest: Path, sha256: str | None = None) -> Path:
    """Download one S3 object and check its checksum (from the manifest) if given.

    Atomic: a mismatching file never lands at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return fetch_atomically(uri, dest, sha256, lambda tmp: s3.download_file(uri, tmp))
    except ChecksumMismatchError as error:
        raise ChangedSinceRecordedError(uri, error.got, sha256) from error
