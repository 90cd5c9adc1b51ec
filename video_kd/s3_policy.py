"""The one S3 fault policy: timeouts, retries with backoff, a log line per retry.

Every S3 request of the project goes through a client configured here, so a
misbehaving server is handled the same way in every step and in the training
pods:

* a connection that cannot be opened fails after ``connect_timeout`` s;
* a server that accepted the connection but does not answer fails after
  ``read_timeout`` s without a byte (a frozen MinIO, a black-holed route);
* both, and 5xx / throttling answers, are retried by botocore's ``standard``
  mode (exponential backoff with jitter, at most 20 s between attempts) up to
  ``max_attempts`` attempts in all, each retry logged as a WARNING;
* after that the request fails with one line naming the cause.

So one request gives up within ``request_budget_s()`` seconds; with the
defaults (5 s connect, 20 s read, 3 attempts) that is 3 x 20 + 1 + 2 = 63 s.
Uploads that must not be lost (checkpoints) are retried once more as a whole
by ``retry_call`` for ``RETRY_WINDOW_S`` (see ``video_kd.s3_hook``), which
bounds the time until a clear error at ``failure_bound_s()`` = 50 + 63 = 113 s
(<= 2 min).

The environment may tighten or loosen it (the tests shorten it so a stalled
server fails in seconds): ``VIDEO_KD_S3_CONNECT_TIMEOUT``,
``VIDEO_KD_S3_READ_TIMEOUT``, ``VIDEO_KD_S3_MAX_ATTEMPTS``,
``VIDEO_KD_S3_RETRY_WINDOW``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.config import Config

if TYPE_CHECKING:
    from botocore.awsrequest import AWSPreparedRequest
    from botocore.client import BaseClient

log = logging.getLogger('video_kd.s3')

T = TypeVar('T')

CONNECT_TIMEOUT_ENV = 'VIDEO_KD_S3_CONNECT_TIMEOUT'
READ_TIMEOUT_ENV = 'VIDEO_KD_S3_READ_TIMEOUT'
MAX_ATTEMPTS_ENV = 'VIDEO_KD_S3_MAX_ATTEMPTS'
RETRY_WINDOW_ENV = 'VIDEO_KD_S3_RETRY_WINDOW'

# botocore's standard mode: delay = random(0, 1) * 2 ** (attempt - 1), capped at 20 s
_MAX_BACKOFF_S = 20.0


@dataclass(frozen=True)
class S3Policy:
    """How long to wait for an S3 server and how often to try again."""

    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_attempts: int = 3
    retry_window: float = 50.0  # how long retry_call starts new attempts of a whole upload

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

    def failure_bound_s(self) -> float:
        """Worst case for ``retry_call`` to give up: its window plus one last request."""
        return self.retry_window + self.request_budget_s()


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, '').strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        from video_kd.errors import UserError

        raise UserError(f'{name}={raw!r}: expected a number >= {minimum:g}')
    return value


def install_retry_logging(client: BaseClient) -> None:
    """Log a WARNING each time botocore retries a request of ``client``, with the cause."""
    client.meta.events.register('needs-retry.s3', _remember_cause)
    client.meta.events.register('before-send.s3', _log_retry)


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
    if attempt > 1:
        log.warning(
            'S3 %s %s: retrying (attempt %d) after %s',
            request.method,
            request.url.split('?', 1)[0],
            attempt,
            context.get('video_kd_cause', 'an error'),
        )


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
