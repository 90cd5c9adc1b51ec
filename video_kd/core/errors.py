"""One kind of user-facing error, and the one wrapper every entry point runs under.

A ``UserError`` is bad input or a condition the user must fix (a missing
object, a checksum that does not match, an unknown config): the entry point
prints it as one ``error: ...`` line and exits with its ``exit_status`` — 2
(``BAD_INPUT``), before anything is written; a subclass for a condition that
passes by itself (S3 unreachable: ``TEMPORARY_FAILURE``, 75) has its own status,
so that a training pod's launcher (``video_kd.backends.torchrun``) retries it rather
than failing the job for good.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

BAD_INPUT = 2  # the exit status of a UserError (bad input: trying again cannot help)
TEMPORARY_FAILURE = 75  # sysexits.h EX_TEMPFAIL: a condition that passes; try again later
# Kubernetes' default terminationMessagePath: what a container writes there becomes its
# status' message (at most 4096 bytes), which Argo shows as the failed step's message in
# the KFP UI beside the logs.  VIDEO_KD_TERMINATION_LOG moves it (tests).
TERMINATION_LOG = '/dev/termination-log'


class UserError(Exception):
    """Printed as one ``error: ...`` line; the entry point exits with ``exit_status``."""

    exit_status: int = BAD_INPUT


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Inside it, a ``UserError`` prints one ``error: ...`` line and exits with its status."""
    try:
        yield
    except UserError as error:
        line = f'error: {one_line(error)}'
        print(line, file=sys.stderr)
        _termination_message(line)
        raise SystemExit(error.exit_status) from error


def _termination_message(line: str) -> None:
    """The error line as the pod's termination message, inside a pod only."""
    path = os.environ.get('VIDEO_KD_TERMINATION_LOG')
    if path is None and not os.environ.get('KUBERNETES_SERVICE_HOST'):
        return  # not in a pod
    try:
        with open(path or TERMINATION_LOG, 'w') as out:
            out.write(line.encode()[:4096].decode(errors='ignore'))
    except OSError:
        pass  # not writable here: the log line stands alone


def run_cli(main: Callable[..., int | None], *args, **kwargs) -> int:
    """Call an entry point's main; a ``UserError`` becomes one line and its exit status."""
    try:
        with exit_on_user_error():
            return main(*args, **kwargs) or 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else BAD_INPUT


def one_line(error: BaseException) -> str:
    """The message of an error on one line (the first one, if it has several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def setup_logging(verbose: bool = False) -> None:
    """The one log format of every entry point: time, level, logger, message, on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s',
        stream=sys.stderr,
    )
