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
* S3 names: a bucket name by S3's rules; the runs' key prefix (``S3_PREFIX_RULE``),
  where empty means the bucket's root.
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

# Every pattern is anchored with \Z, not $: '$' also matches before a trailing newline, and
# 'run-1\n' would become an S3 directory, a job name and a label value.
RUN_ID_PATTERN = re.compile(r'^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z')
RESERVED_RUN_IDS = frozenset({'cache', 'models'})  # runs.CACHE_DIR, promotion.MODELS_DIR
RUN_ID_RULE = (
    'a run id is 1-63 lowercase letters, digits and hyphens, starting and ending with '
    'a letter or digit (a DNS label), and not "cache" or "models"'
)
_SHA256 = re.compile(r'^[0-9a-f]{64}\Z')
_BUCKET = re.compile(r'^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z')
_IP_ADDRESS = re.compile(r'^\d+\.\d+\.\d+\.\d+\Z')
# S3's reserved bucket name forms (its access points, Object Lambda and express directory
# buckets): refused by AWS, and a source of confusion elsewhere
_RESERVED_BUCKET_PREFIXES = ('xn--', 'sthree-', 'amzn-s3-demo-')
_RESERVED_BUCKET_SUFFIXES = ('-s3alias', '--ol-s3', '.mrap', '--x-s3', '--table-s3')
_PREFIX_SEGMENT = re.compile(r'^[A-Za-z0-9._-]+\Z')
S3_PREFIX_MAX = 512  # of S3's 1024 bytes a key may have, the rest for the run's own keys
S3_PREFIX_RULE = (
    'a prefix is empty (the bucket root) or segments separated by single "/", each of '
    'letters, digits, ".", "_" and "-", none of them "." or ".." or "cache", with no '
    f'leading or trailing "/", at most {S3_PREFIX_MAX} characters'
)
CACHE_SEGMENT = 'cache'  # the shared cache's directory under a prefix (runs.CACHE_DIR)


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
            f'bad run id {run_id!r}: it names a shared directory; {RUN_ID_RULE}'
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
    """An S3 bucket name by S3's rules: 3-63 of ``a-z 0-9 . -``, starting and ending
    alphanumeric, no ``..``, ``.-`` or ``-.``, not an IP address, none of S3's reserved
    prefixes and suffixes."""
    rule = (
        '3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter '
        'or digit'
    )
    if not isinstance(name, str) or not _BUCKET.match(name):
        raise InvalidInputError(f'bad bucket name {name!r}: {rule}')
    for bad in ('..', '.-', '-.'):
        if bad in name:
            raise InvalidInputError(f'bad bucket name {name!r}: {bad!r} inside it; {rule}')
    if _IP_ADDRESS.match(name):
        raise InvalidInputError(f'bad bucket name {name!r}: an IP address; {rule}')
    if name.startswith(_RESERVED_BUCKET_PREFIXES) or name.endswith(_RESERVED_BUCKET_SUFFIXES):
        raise InvalidInputError(f'bad bucket name {name!r}: a form S3 reserves; {rule}')
    return name


def check_s3_prefix(prefix: str) -> str:
    """The key prefix runs are kept under (``s3://<bucket>/<prefix>/<run id>/``).

    Empty is the bucket's root (runs at ``s3://<bucket>/<run id>/``, their cache at
    ``s3://<bucket>/cache/``; the chart allows it too).  Otherwise ``S3_PREFIX_RULE``:
    no ``..`` (a key is not a path, but tools that mirror a bucket to disk resolve
    it), no empty segment (``a//b`` and ``/a`` are other keys than ``a/b`` and ``a``:
    the same prefix written two ways would split a run's objects), no whitespace or
    other characters S3 asks to avoid, and no ``cache`` segment (that is where the
    runs of a shorter prefix share their cache).  A prefix inside an existing run's
    directory is refused at the claim, where S3 can be asked (``runs.claim_run``).
    """
    if not isinstance(prefix, str):
        raise InvalidInputError(f'bad s3_prefix {prefix!r}: {S3_PREFIX_RULE}')
    if not prefix:
        return prefix
    if len(prefix) > S3_PREFIX_MAX:
        raise InvalidInputError(
            f'bad s3_prefix {prefix[:40]!r}...: {len(prefix)} characters; {S3_PREFIX_RULE}'
        )
    for segment in prefix.split('/'):
        why = ''
        if not segment:
            why = 'an empty segment (a leading, trailing or doubled "/")'
        elif segment in ('.', '..'):
            why = f'a {segment!r} segment'
        elif segment == CACHE_SEGMENT:
            why = 'a "cache" segment (the shared cache\'s directory)'
        elif not _PREFIX_SEGMENT.match(segment):
            bad = next(c for c in segment if not _PREFIX_SEGMENT.match(c))
            why = f'the character {bad!r}'
        if why:
            raise InvalidInputError(f'bad s3_prefix {prefix!r}: {why}; {S3_PREFIX_RULE}')
    return prefix


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
