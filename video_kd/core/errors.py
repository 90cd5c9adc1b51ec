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
import sys
from collections.abc import Callable, Iterator

BAD_INPUT = 2  # the exit status of a UserError (bad input: trying again cannot help)
TEMPORARY_FAILURE = 75  # sysexits.h EX_TEMPFAIL: a condition that passes; try again later


class UserError(Exception):
    """Printed as one ``error: ...`` line; the entry point exits with ``exit_status``."""

    exit_status: int = BAD_INPUT


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Inside it, a ``UserError`` prints one ``error: ...`` line and exits with its status."""
    try:
        yield
    except UserError as error:
        print(f'error: {one_line(error)}', file=sys.stderr)
        raise SystemExit(error.exit_status) from error


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
