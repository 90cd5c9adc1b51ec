"""Checks of user input that need nothing but the value: one line each, exit status 2.

Steps and CLIs call these first, so that bad input never reaches a download,
a claim in S3 or a training pod.  Checks that need a config live with it
(``video_kd.openmmlab.cfg_options``), those of a backend in ``video_kd.backends``, and
the whole run's in the check-inputs step (``video_kd.steps.check_inputs``).  Each check raises ``InvalidInputError`` (a
``UserError``: ``error: ...`` and exit status 2 under ``errors.run_cli``) that
names the input, what was wrong and what would be right.

* run ids: ``RUN_ID_PATTERN``, a lowercase DNS label (1-63 of ``a-z 0-9 -``,
  starting and ending alphanumeric), not ``cache`` (the shared cache's
  directory).  A run id becomes an S3 directory, a PyTorchJob name and a
  Kubernetes label value; this one pattern is valid as all three.
* checksums: 64 hex digits (upper case accepted, lower case returned).
* numbers: ranges (``max_epochs >= 0``, ``num_workers >= 1``, the export's
  ``tolerance >= 0`` and ``speed_repeats`` 0-1000, ...).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    pass

RUN_ID_PATTERN = re.compile(r'^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$')
RESERVED_RUN_IDS = frozenset({'cache'})
RUN_ID_RULE = (
    'a run id is 1-63 lowercase letters, digits and hyphens, starting and ending with '
    'a letter or digit (a DNS label), and not "cache"'
)
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_BUCKET = re.compile(r'^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')


class InvalidInputError(UserError, ValueError):
    """A user input that fails its check; the message says which and why.

    Also a ``ValueError``, so code that guarded a check with ``except ValueError``
    keeps working.
    """


# --------------------------------------------------------------------------- identifiers
def check_run_id(run_id: str) -> str:
    """``run_id`` if it follows ``RUN_ID_PATTERN``; else one line that gives the rule."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise InvalidInputError(f'bad run id {run_id!r}: {RUN_ID_RULE}')
    if run_id in RESERVED_RUN_IDS:
        raise InvalidInputError(
            f'bad run id {run_id!r}: it names the shared cache directory; {RUN_ID_RULE}'
        )
    return run_id


def run_id_from(text: str) -> str:
    """A valid run id made from free text (a KFP job id, a timestamp): lowercased, squeezed."""
    cleaned = re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:63].rstrip('-')
    return check_run_id(cleaned or 'run')


def check_sha256(value: str | None, name: str = '--sha256', required: bool = False) -> str:
    """A SHA-256 as 64 lowercase hex digits; '' when empty and not ``required``."""
    text = (value or '').strip().lower()
    if not text:
        if required:
            raise InvalidInputError(f'{name} is required: the 64 hex digits of the SHA-256')
        return ''
    if not _SHA256.match(text):
        raise InvalidInputError(
            f'{name} {value!r} is not a SHA-256: expected 64 hex digits (0-9, a-f), '
            f'got {len(text)} characters' + ('' if len(text) != 64 else ' with non-hex ones')
        )
    return text


def check_bucket(name: str) -> str:
    """An S3 bucket name: 3-63 of ``a-z 0-9 . -``, starting and ending alphanumeric."""
    if not isinstance(name, str) or not _BUCKET.match(name) or '..' in name:
        raise InvalidInputError(
            f'bad bucket name {name!r}: 3-63 lowercase letters, digits, dots and hyphens, '
            'starting and ending with a letter or digit'
        )
    return name


# --------------------------------------------------------------------------- numbers
def check_range(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None
) -> int:
    """``value`` as an int within [minimum, maximum]; the message names the input."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInputError(f'{name} must be a whole number, got {value!r}')
    try:
        number = int(value)
    except ValueError:
        raise InvalidInputError(f'{name} must be a whole number, got {value!r}') from None
    if minimum is not None and number < minimum:
        raise InvalidInputError(f'{name} must be >= {minimum:g}, got {number}')
    if maximum is not None and number > maximum:
        raise InvalidInputError(f'{name} must be <= {maximum:g}, got {number}')
    return number


def check_number(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float within [minimum, maximum]; the message names the input."""
    if isinstance(value, bool):
        raise InvalidInputError(f'{name} must be a number, got {value!r}')
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(number):
        raise InvalidInputError(f'{name} must be a finite number, got {value!r}')
    if minimum is not None and number < minimum:
        raise InvalidInputError(f'{name} must be >= {minimum:g}, got {number:g}')
    if maximum is not None and number > maximum:
        raise InvalidInputError(f'{name} must be <= {maximum:g}, got {number:g}')
    return number
