"""Claim a run directory atomically; release a claim that produced nothing.

A run directory ``s3://<bucket>/<prefix>/<run id>/`` belongs to the run that
created its ``run.json``.  The claim is one conditional write
(``s3.create_if_absent``), so of two data preps started together with one
run id exactly one gets the directory, and the other stops before writing
anything (issue 15: before, both could pass a check-then-put and one run's
data was overwritten by the other's 12 ms later).

``run.json`` records the KFP run (``job_id``) that claimed it: a retry of the
same KFP run continues in its directory, any other caller is refused.  A
failed data prep calls ``release_run``: when the directory holds nothing but
its own claim, the claim is removed and the run id can be used again.
"""

from __future__ import annotations

import json
import logging
import time

from video_kd import s3
from video_kd.errors import UserError
from video_kd.validation import check_run_id

log = logging.getLogger(__name__)

CLAIM_NAME = 'run.json'


class RunInUseError(UserError):
    """The run directory belongs to another run."""


def claim_uri(run_root: str) -> str:
    """``<run root>/run.json``."""
    return s3.join_uri(run_root, CLAIM_NAME)


def claim_run(run_root: str, run_id: str, job_id: str = '') -> bool:
    """Make ``run_root`` ours: True when newly claimed, False when a retry of ``job_id`` goes on.

    Raises ``RunInUseError`` (one line, exit 2) when another run has it, or
    when the directory holds objects but no claim (written before claims
    existed, or by a step that never claimed it): nothing is written then.
    """
    check_run_id(run_id)
    uri = claim_uri(run_root)
    existing = s3.list_uris(run_root.rstrip('/') + '/')
    if existing and uri not in existing:
        raise _in_use(run_root, len(existing), 'it has no run.json')
    if not existing:
        body = json.dumps(
            {
                'run_id': run_id,
                'job_id': job_id,
                'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            },
            indent=2,
        )
        if s3.create_if_absent(uri, body, content_type='application/json'):
            log.info('run %s: claimed %s/', run_id, run_root)
            return True
    owner = s3.read_json(uri).get('job_id')
    if not job_id or owner != job_id:
        count = len(existing) or 1
        raise _in_use(run_root, count, f'claimed by KFP run {owner!r}' if owner else 'claimed')
    log.info('run %s: continuing in %s/ (retry of KFP run %s)', run_id, run_root, job_id)
    return False


def _in_use(run_root: str, count: int, why: str) -> RunInUseError:
    return RunInUseError(
        f'run directory {run_root}/ is already used by another run ({count} objects, {why}); '
        "a run never writes into another run's directory: choose another run id or leave it empty"
    )


def release_run(run_root: str, job_id: str = '') -> bool:
    """Remove our claim if the directory holds nothing else; True when released.

    For a data prep that failed before publishing anything (bad data): the
    user fixes the data and re-runs with the same run id.  A directory with
    other objects keeps its claim (the same KFP run may still retry into it).
    """
    uri = claim_uri(run_root)
    existing = s3.list_uris(run_root.rstrip('/') + '/')
    if existing != [uri]:
        return False
    if s3.read_json(uri).get('job_id') != job_id:
        return False
    s3.delete(uri)
    log.info('released the claim on %s/ (nothing was published)', run_root)
    return True
