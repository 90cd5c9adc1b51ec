"""The one S3 fault policy: timeouts, retries with backoff, a log line per retry.

Every S3 request of the project goes through a client configured here (the
step's client, ``video_kd.storage.s3.s3_client``, and the data loaders' streaming
client, ``video_kd.storage.s3_fileio.stream_client``), so a misbehaving server is
handled the same way in every step and in the training pods:

* a connection that cannot be opened fails after ``connect_timeout`` s;
* a server that accepted the connection but does not answer fails after
  ``read_timeout`` s without a byte (a frozen MinIO, a black-holed route);
* both, and 5xx / throttling answers, are retried by botocore's ``standard``
  mode (exponential backoff with jitter, at most 20 s between attempts) up to
  ``max_attempts`` attempts in all, each retry logged as a WARNING;
* a GET whose body stops midway (a reset, a server that stalls after the
  headers) is outside botocore's retries: ``video_kd.storage.s3.fetch`` sends it again,
  and ``continuing`` makes those attempts count against the same total;
* after that the request fails with one line naming the cause.

So one request gives up within ``request_budget_s()`` seconds; with the
defaults (5 s connect, 20 s read, 3 attempts) that is 3 x 20 + 1 + 2 = 63 s.
That is also the bound on an outage in the data path: the first video read
it fails stops the data loader (training, validation, evaluation:
``video_kd.data.data_stream``) or data prep's check (``video_kd.data.data_check``)
with exit status 75; an outage is never counted as unreadable data.
A multipart upload that fails is aborted (s3transfer cleans up its parts):
that abort is one attempt with a read timeout of at most ``ABORT_TIMEOUT_S``,
``abort_budget_s()`` = 5 s, instead of another full request budget.
Uploads that must not be lost (checkpoints) are retried once more as a whole
by ``retry_call`` for ``retry_window`` s (see ``video_kd.distill.s3_hook``), which
bounds the time until a clear error at ``failure_bound_s()`` = 45 + 63 + 5 =
113 s (<= 2 min), multipart checkpoints included.

The environment may tighten or loosen it (the tests shorten it so a stalled
server fails in seconds): ``VIDEO_KD_S3_CONNECT_TIMEOUT``,
``VIDEO_KD_S3_READ_TIMEOUT``, ``VIDEO_KD_S3_MAX_ATTEMPTS``,
``VIDEO_KD_S3_RETRY_WINDOW``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.config import Config

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest
    from botocore.client import BaseClient

log = logging.getLogger('video_kd.storage.s3')

T = TypeVar('T')

CONNECT_TIMEOUT_ENV = 'VIDEO_KD_S3_CONNECT_TIMEOUT'
READ_TIMEOUT_ENV = 'VIDEO_KD_S3_READ_TIMEOUT'
MAX_ATTEMPTS_ENV = 'VIDEO_KD_S3_MAX_ATTEMPTS'
RETRY_WINDOW_ENV = 'VIDEO_KD_S3_RETRY_WINDOW'

# botocore's standard mode: delay = random(0, 1) * 2 ** (attempt - 1), capped at 20 s
_MAX_BACKOFF_S = 20.0
# A failed multipart upload's abort is a courtesy to the bucket (no orphaned parts):
# one attempt, answered within this (or the read timeout, if shorter).
ABORT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class S3Policy:
    """How long to wait for an S3 server and how often to try again."""

    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_attempts: int = 3
    retry_window: float = 45.0  # how long retry_call starts new attempts of a whole upload

    @classmethod
    def from_env(cls) -> S3Policy:
        """The defaults, with any ``VIDEO_KD_S3_*`` override from the environment."""
        default = cls()
        return cls(
            connect_timeout=_env_number(CONNECT_TIMEOUT_ENV, default.connect_timeout, 0.1),
            read_timeout=_env_number(READ_TIMEOUT_ENV, default.read_timeout, 0.1),
            max_attempts=int(_env_number(MAX_ATTEMPTS_ENV, default.max_attempts, 1)),
            retry_window=_env_number(RETRY_WINDOW_ENV, default.retry_window, 0),
        )

    def botocore_config(self, **extra) -> Config:
        """The client configuration that applies this policy to every request."""
        return Config(
            retries={'mode': 'standard', 'total_max_attempts': self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            **extra,
        )

    def request_budget_s(self) -> float:
        """Worst case for one request to fail: every attempt times out, plus the backoffs."""
        waits = sum(min(2.0**i, _MAX_BACKOFF_S) for i in range(self.max_attempts - 1))
        return self.max_attempts * max(self.connect_timeout, self.read_timeout) + waits

    @property
    def abort_timeout(self) -> float:
        """The read timeout of the one attempt to abort a failed multipart upload."""
        return min(ABORT_TIMEOUT_S, self.read_timeout)

    def abort_budget_s(self) -> float:
        """Worst case for that abort: it connects or it waits for an answer, once."""
        return max(self.connect_timeout, self.abort_timeout)

    def failure_bound_s(self) -> float:
        """Worst case for ``retry_call`` to give up: its window plus one last attempt, whose
        failed request may be followed by the abort of its multipart upload."""
        return self.retry_window + self.request_budget_s() + self.abort_budget_s()


def backoff_s(failed_attempts: int) -> float:
    """botocore's standard backoff after ``failed_attempts`` attempts: random, capped."""
    return random.random() * min(2.0 ** (failed_attempts - 1), _MAX_BACKOFF_S)


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, '').strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UserError(f'{name}={raw!r}: expected a number >= {minimum:g}')
    return value


def install(client: BaseClient) -> None:
    """Apply the parts of the policy that a botocore ``Config`` cannot express to ``client``:
    a WARNING per retry (with its cause), attempts shared with ``continuing``, and the
    short single-attempt abort of a failed multipart upload."""
    client.meta.events.register_first('needs-retry.s3', _stop_when_spent)
    client.meta.events.register('needs-retry.s3', _remember_cause)
    client.meta.events.register('before-send.s3', _log_retry)
    client.meta.events.register('before-call.s3.AbortMultipartUpload', _short_abort)


_continued = threading.local()


@contextlib.contextmanager
def continuing(attempts_used: int) -> Iterator[None]:
    """Requests of this thread inside the block continue an operation that already made
    ``attempts_used`` attempts (a GET whose body failed midway, sent again): botocore
    stops retrying them at the client's total, and logs their attempt numbers."""
    previous = getattr(_continued, 'attempts', 0)
    _continued.attempts = attempts_used
    try:
        yield
    finally:
        _continued.attempts = previous


def _stop_when_spent(
    attempts: int = 1,
    operation: Any = None,
    request_dict: dict[str, Any] | None = None,
    **_: Any,
) -> bool | None:
    # Registered first: False ends the retries; None leaves the decision to botocore.
    if getattr(operation, 'name', '') == 'AbortMultipartUpload':
        return False  # cleanup after a failure: one short attempt (_short_abort)
    used = getattr(_continued, 'attempts', 0)
    config = (request_dict or {}).get('context', {}).get('client_config')
    limit = (getattr(config, 'retries', None) or {}).get('total_max_attempts')
    if used and limit and attempts + used >= limit:
        return False
    return None


def _short_abort(context: dict[str, Any] | None = None, **_: Any) -> None:
    # botocore (1.44, the pinned version) reads a per-request read timeout from the request
    # context; one that does not still makes a single attempt (_stop_when_spent).
    if context is not None and context.get('client_config') is not None:
        read_timeout = context['client_config'].read_timeout
        context['read_timeout'] = min(ABORT_TIMEOUT_S, read_timeout)


def _remember_cause(
    request_dict: dict[str, Any] | None = None,
    response: tuple[Any, dict[str, Any] | None] | None = None,
    caught_exception: Exception | None = None,
    **_: Any,
) -> None:
    # Runs before botocore decides; the cause is logged only if a retry is actually sent.
    if request_dict is None:
        return
    if caught_exception is not None:
        cause = f'{type(caught_exception).__name__}: {caught_exception}'
    elif response is not None:
        status = response[0].status_code
        code = (response[1] or {}).get('Error', {}).get('Code', '')
        cause = f'HTTP {status} {code}'.rstrip()
    else:
        return
    request_dict['context']['video_kd_cause'] = cause


def _log_retry(request: AWSPreparedRequest | None = None, **_: Any) -> None:
    context = getattr(request, 'context', None) or {}
    attempt = context.get('retries', {}).get('attempt', 1)
    if attempt > 1 and request is not None:  # no request, no context: attempt 1
        log_retry(
            request.method,
            request.url.split('?', 1)[0],
            attempt + getattr(_continued, 'attempts', 0),
            context.get('video_kd_cause', 'an error'),
        )


def log_retry(method: str, url: str, attempt: int, cause: str | BaseException) -> None:
    """The WARNING of every retried S3 request: method, URL, attempt number, cause."""
    if isinstance(cause, BaseException):
        cause = f'{type(cause).__name__}: {cause}'
    log.warning('S3 %s %s: retrying (attempt %d) after %s', method, url, attempt, cause)


def retry_call(
    fn: Callable[[], T],
    what: str,
    is_retryable: Callable[[BaseException], bool],
    policy: S3Policy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` again while its failure is retryable and the retry window is open.

    For work that must survive a storage outage of up to ~a minute (a
    checkpoint upload): botocore already retried each request, this retries
    the whole operation.  Gives up with the last error within
    ``policy.failure_bound_s()`` seconds of the first call.
    """
    policy = policy or S3Policy.from_env()
    start = time.monotonic()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            elapsed = time.monotonic() - start
            if not is_retryable(exc) or elapsed >= policy.retry_window:
                raise
            delay = min(2.0**attempt, max(policy.retry_window - elapsed, 0.0), _MAX_BACKOFF_S)
            log.warning(
                '%s failed (%s); trying again in %.0f s (attempt %d, %.0f s of %.0f s retry window)',
                what,
                exc,
                delay,
                attempt + 1,
                elapsed,
                policy.retry_window,
            )
            sleep(delay)
            attempt += 1
