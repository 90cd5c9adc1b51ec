"""Run bookkeeping: where a run keeps its objects, what it produced, and who owns it.

Every run writes under its own directory, ``s3://<bucket>/<prefix>/<run-id>/``:

* ``run.json``, the claim: written once by data prep, it records the KFP run
  that owns the directory, so no other run ever writes into it;
* ``manifest.json``: every object the steps published, with its sha256;
* one sub-directory per step (``data/``, ``teacher/``, ``train/``, ...).

Each step's output artifact carries the run's root (``run_info``); later steps
take the run from there, never from a parameter of their own, so a step
cannot write into another run's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import RunInfo, StoredObject
from video_kd.core.checks import check_run_id, check_s3_prefix, run_id_from
from video_kd.core.errors import UserError
from video_kd.core.progress import Progress
from video_kd.storage import s3
from video_kd.storage.download import ChangedSinceRecordedError, fetch_verified

log = logging.getLogger(__name__)

RUN_STEPS = ('data', 'teacher', 'train', 'student', 'eval', 'export', 'promote')
MANIFEST_NAME = 'manifest.json'
CLAIM_NAME = 'run.json'
DATASET_META_NAME = 'dataset.json'
EXPORT_RECORD_NAME = 'export.json'  # uploaded last: the export is complete when it exists
CACHE_DIR = 'cache'
MODELS_DIR = 'models'  # each model's current student and history (deploy.promotion)
_RUN_ID_UNSAFE = re.compile(r'[^a-z0-9-]+')
_UNRESOLVED = re.compile(r'\{\{.*\}\}')
_SHA256_RE = re.compile(r'^[0-9a-f]{64}\Z')
_SAVE_TRIES = 50  # each round of a race lets at least one writer through


def new_run_id(job_id: str = '') -> str:
    """``<UTC time>-<KFP run id>``: sorts by time, and names the KFP run it came from.

    ``job_id`` is the KFP run's id (a UUID on a cluster, a random number in
    the local runner); an unresolved placeholder or nothing gives a random
    suffix.  The result is lowercase letters, digits and ``-`` only.
    """
    job_id = '' if not job_id or _UNRESOLVED.search(job_id) else job_id
    suffix = _RUN_ID_UNSAFE.sub('-', job_id.lower()).strip('-') or uuid.uuid4().hex[:8]
    return run_id_from(f'{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}-{suffix}')


@dataclass(frozen=True)
class RunLayout:
    """Where one pipeline run keeps its objects: ``s3://<bucket>/<prefix>/<run-id>/<step>/...``.

    Keeping each run in its own directory is what lets runs share a bucket
    without ever touching each other's objects; only ``cache_uri`` points
    outside it, at content-addressed objects that are safe to share.
    """

    bucket: str
    prefix: str
    run_id: str

    def __post_init__(self) -> None:
        if not self.bucket or '/' in self.bucket:
            raise UserError(f'bad bucket name: {self.bucket!r}')
        if (
            not self.run_id
            or '/' in self.run_id
            or self.run_id in ('.', '..', CACHE_DIR, MODELS_DIR)
        ):
            raise UserError(f'bad run id: {self.run_id!r}')
        check_s3_prefix(self.prefix)

    @classmethod
    def from_root(cls, run_root: str) -> RunLayout:
        """The layout of ``s3://<bucket>/<prefix>/<run-id>`` (what artifacts carry)."""
        try:
            bucket, key = s3.parse_s3_uri(run_root)
        except ValueError as exc:
            raise UserError(f'run root {run_root!r}: {exc}') from exc
        prefix, _, run_id = key.rstrip('/').rpartition('/')
        return cls(bucket, prefix, run_id)

    @property
    def root(self) -> str:
        """The run's directory, ``s3://<bucket>/<prefix>/<run-id>``."""
        return s3.join_uri(f's3://{self.bucket}', self.prefix, self.run_id)

    @property
    def manifest_uri(self) -> str:
        return s3.join_uri(self.root, MANIFEST_NAME)

    @property
    def claim_uri(self) -> str:
        return s3.join_uri(self.root, CLAIM_NAME)

    @property
    def dataset_meta_uri(self) -> str:
        """Where data prep stores the Dataset artifact's metadata for pods and standalone steps."""
        return self.uri('data', DATASET_META_NAME)

    def uri(self, step: str, *parts: str) -> str:
        """URI under one step's directory, e.g. ``uri('teacher', 'model.pth')``."""
        if step not in RUN_STEPS:
            raise ValueError(f'unknown step {step!r}; expected one of {", ".join(RUN_STEPS)}')
        return s3.join_uri(self.root, step, *parts)

    def shared_uri(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/cache/<parts>``: what runs share (never a run's own data)."""
        return s3.join_uri(f's3://{self.bucket}', self.prefix, CACHE_DIR, *parts)

    def cache_uri(self, kind: str, sha256: str, filename: str) -> str:
        """Content-addressed URI shared by all runs.

        ``s3://<bucket>/<prefix>/cache/<kind>/<sha256>/<filename>``
        """
        if not _SHA256_RE.match(sha256):
            raise ValueError(f'not a lowercase hex SHA-256: {sha256!r}')
        if not kind or '/' in kind or not filename or '/' in filename:
            raise ValueError(f'bad cache kind or filename: {kind!r}, {filename!r}')
        return s3.join_uri(f's3://{self.bucket}', self.prefix, CACHE_DIR, kind, sha256, filename)


def run_info(layout: RunLayout) -> RunInfo:
    """What every artifact's metadata carries about its run."""
    return {'run_id': layout.run_id, 'run_root': layout.root, 'manifest_uri': layout.manifest_uri}


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    """One object a step produced, with what is needed to verify it later."""

    step: str
    uri: str
    sha256: str
    size_bytes: int
    # What the object was made from, when that is not in the run itself: the released
    # teacher a converted one comes from.  Empty (and not stored) otherwise.
    source_sha256: str = ''

    def meta(self) -> StoredObject:
        """The entry as artifact metadata."""
        meta: StoredObject = {
            's3_uri': self.uri,
            'sha256': self.sha256,
            'size_bytes': self.size_bytes,
        }
        return {**meta, 'source_sha256': self.source_sha256} if self.source_sha256 else meta

    def to_json(self) -> dict[str, Any]:
        """The entry as stored in manifest.json (no empty source_sha256)."""
        stored = asdict(self)
        if not self.source_sha256:
            del stored['source_sha256']
        return stored


@dataclass
class Manifest:
    """The list of objects a run produced, stored at ``<run>/manifest.json``.

    ``record`` saves after every entry, so that a step that dies halfway
    leaves a true manifest of what was uploaded; inside ``batch()`` it saves
    once at the end instead (one rewrite for a thousand videos, not a
    thousand rewrites).  Saves are compare-and-swap (``If-Match`` on the ETag
    this copy was loaded with, ``If-None-Match`` for a new manifest): when
    another writer saved in between, its entries are merged in and the save
    is tried again, so concurrent writers (two ranks, a retried step beside a
    slow one) never drop each other's entries.
    """

    layout: RunLayout
    entries: list[ManifestEntry] = field(default_factory=list)
    # (uri, sha256) of the objects the run deleted (checkpoint retention): a merge drops
    # them, so a writer that loaded the manifest before the removal cannot bring them back
    removed: list[tuple[str, str]] = field(default_factory=list)
    _etag: str | None = field(default=None, init=False, repr=False, compare=False)
    _deferred: bool = field(default=False, init=False, repr=False, compare=False)
    # entries by URI, so that publishing n files is linear, not n scans of the list;
    # it covers the first _indexed entries (a merge, which prepends, rebuilds it)
    _by_uri: dict[str, list[ManifestEntry]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _indexed: int = field(default=0, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, layout: RunLayout) -> Manifest:
        """The run's manifest, or an empty one when the run has none yet."""
        manifest = cls(layout)
        manifest._merge_stored()
        return manifest

    def _merge_stored(self) -> None:
        """Add the stored manifest's entries that this copy lacks; remember its ETag."""
        try:
            body, self._etag = s3.read_versioned(self.layout.manifest_uri)
        except s3.BucketNotFoundError:
            raise
        except s3.ObjectNotFoundError:
            self._etag = None
            return
        try:
            document = json.loads(body)
            stored = [ManifestEntry(**entry) for entry in document['entries']]
            stored_removed = [(r['uri'], r['sha256']) for r in document.get('removed', [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise s3.S3Error(f'{self.layout.manifest_uri} is not a manifest: {exc}') from exc
        self.removed += [r for r in stored_removed if r not in self.removed]
        gone = set(self.removed)
        ours = {(e.uri, e.sha256) for e in self.entries}
        merged = [e for e in stored if (e.uri, e.sha256) not in ours]
        self.entries[:] = [e for e in merged + self.entries if (e.uri, e.sha256) not in gone]
        self._indexed = -1  # entries dropped or prepended: rebuild the index

    def save(self) -> None:
        """Write the manifest; the one object a run rewrites (compare-and-swap, see above)."""
        for _ in range(_SAVE_TRIES):
            try:
                self._etag = s3.put_bytes(
                    self.layout.manifest_uri,
                    self._body(),
                    content_type='application/json',
                    if_match=self._etag,
                    if_absent=self._etag is None,
                )
                return
            except s3.ObjectChangedError:
                self._merge_stored()  # someone saved in between: keep their entries too
                time.sleep(random.uniform(0, 0.05))  # de-synchronise the racers
        raise s3.S3Error(
            f'cannot write {self.layout.manifest_uri}: it kept changing under '
            f'{_SAVE_TRIES} attempts'
        )

    def _body(self) -> bytes:
        return json.dumps(
            {
                'run_id': self.layout.run_id,
                'root': self.layout.root,
                'entries': [e.to_json() for e in self.entries],
                **(
                    {'removed': [{'uri': u, 'sha256': h} for u, h in self.removed]}
                    if self.removed
                    else {}
                ),
            },
            indent=2,
        ).encode()

    @contextlib.contextmanager
    def batch(self) -> Iterator[Manifest]:
        """Record many objects with one manifest write at the end (also when a record fails;
        none when nothing was recorded)."""
        before = len(self.entries)
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False
            if len(self.entries) != before:
                self.save()

    def forget(self, entries: list[ManifestEntry]) -> None:
        """Remove ``entries`` from the manifest and save it, before their objects are
        deleted: the manifest never names a deleted object.  They are kept as removed
        (uri, sha256) pairs, so a concurrent writer's merge does not restore them."""
        pairs = [(e.uri, e.sha256) for e in entries]
        self.removed += [p for p in pairs if p not in self.removed]
        self.entries[:] = [e for e in self.entries if (e.uri, e.sha256) not in pairs]
        self._indexed = -1
        self.save()

    def _unforget(self, entry: ManifestEntry) -> None:
        """The same bytes stored again under a removed name are the run's again."""
        if (entry.uri, entry.sha256) in self.removed:
            self.removed.remove((entry.uri, entry.sha256))

    def find(self, uri: str, sha256: str | None = None) -> ManifestEntry | None:
        """The entry recorded for ``uri`` (with that content, if ``sha256`` is given)."""
        if self._indexed != len(self.entries):
            self._by_uri = {}
            for entry in self.entries:
                self._by_uri.setdefault(entry.uri, []).append(entry)
            self._indexed = len(self.entries)
        matches = self._by_uri.get(uri, ())
        return next((e for e in matches if sha256 in (None, e.sha256)), None)

    def record(
        self,
        step: str,
        local_path: str | os.PathLike,
        uri: str,
        sha256: str | None = None,
        source_sha256: str = '',
    ) -> ManifestEntry:
        """Upload ``local_path`` to ``uri`` (inside ``step``'s directory) and record it.

        The upload is conditional: an object already at ``uri`` raises
        ``ObjectExistsError`` (of concurrent writers, exactly one records).
        """
        step_dir = self.layout.uri(step) + '/'
        if not uri.startswith(step_dir):
            raise ValueError(f'{uri} is not inside the {step!r} step directory {step_dir}')
        entry = ManifestEntry(
            step=step,
            uri=uri,
            sha256=sha256 or s3.sha256_file(local_path),
            size_bytes=Path(local_path).stat().st_size,
            source_sha256=source_sha256,
        )
        s3.upload_file(local_path, uri)
        self._unforget(entry)
        self.entries.append(entry)
        if self._indexed == len(self.entries) - 1:  # keep the index whole: no rebuild per file
            self._by_uri.setdefault(uri, []).append(entry)
            self._indexed += 1
        if not self._deferred:
            self.save()
        return entry

    def record_stored(self, step: str, uri: str, sha256: str, size_bytes: int) -> ManifestEntry:
        """Record an object already at ``uri`` whose content the caller has compared with
        what it would publish (a step that died between its upload and its manifest save);
        nothing is uploaded."""
        known = self.find(uri, sha256)
        if known:
            return known
        if not uri.startswith(self.layout.uri(step) + '/'):
            raise ValueError(f'{uri} is not inside the {step!r} step directory')
        entry = ManifestEntry(step=step, uri=uri, sha256=sha256, size_bytes=size_bytes)
        self._unforget(entry)
        self.entries.append(entry)
        if not self._deferred:
            self.save()
        return entry

    def publish(
        self, step: str, local: str | os.PathLike, uri: str, source_sha256: str = ''
    ) -> ManifestEntry:
        """Upload and record ``local``, idempotently (``source_sha256``: see ManifestEntry).

        The same content already stored there (a retried step, or a concurrent
        publisher of the same file) is not uploaded again; other content raises
        ``ObjectExistsError``: nothing is overwritten.
        """
        sha = s3.sha256_file(local)
        known = self.find(uri, sha)
        if known and s3.exists(uri):
            return known
        try:
            return self.record(step, local, uri, sha256=sha, source_sha256=source_sha256)
        except s3.ObjectExistsError:
            self._merge_stored()
            known = self.find(uri, sha)
            if known:
                return known
            raise s3.ObjectExistsError(
                f'refusing to overwrite {uri}: it holds other content'
            ) from None

    def publish_all(
        self, step: str, files: list[tuple[str | os.PathLike, str]]
    ) -> list[ManifestEntry]:
        """``publish`` many ``(local, uri)`` files: linear in their number, and a progress
        line every few seconds in the log instead of one line per file."""
        progress = Progress(len(files), 'published', 'files', log)
        entries = []
        with _quiet(logging.getLogger(s3.__name__)):  # s3.upload_file logs every file
            for local, uri in files:
                entries.append(self.publish(step, local, uri))
                progress.advance()
        return entries


class UnrecordedObjectError(UserError):
    """An object read back from a run that its manifest does not record."""


def recorded(manifest: Manifest, uri: str) -> ManifestEntry:
    """The manifest's entry for ``uri``; an object the run did not record is refused."""
    entry = manifest.find(uri)
    if entry is None:
        raise UnrecordedObjectError(
            f'refusing {uri}: it is not in the run manifest {manifest.layout.manifest_uri} '
            '(only objects the run recorded, with their sha256, are read back)'
        )
    return entry


def fetch_recorded(manifest: Manifest, uri: str, dest: Path, sha256: str = '') -> Path:
    """Download ``uri``, an object of the run, checked against the sha256 its manifest
    records before anything reads it (and against ``sha256`` too, when given)."""
    entry = recorded(manifest, uri)
    if sha256 and sha256 != entry.sha256:
        raise UserError(
            f'refusing {uri}: sha256 {sha256} was asked for, the run manifest records '
            f'{entry.sha256}'
        )
    return fetch_verified(uri, dest, entry.sha256)


def read_recorded_bytes(manifest: Manifest, uri: str) -> bytes:
    """``s3.read_bytes`` of an object of the run, checked against its manifest sha256."""
    entry = recorded(manifest, uri)
    body = s3.read_bytes(uri)
    got = hashlib.sha256(body).hexdigest()
    if got != entry.sha256:
        raise ChangedSinceRecordedError(uri, got, entry.sha256)
    return body


def read_recorded_json(manifest: Manifest, uri: str) -> Any:
    """``s3.read_json`` of an object of the run, checked against its manifest sha256."""
    body = read_recorded_bytes(manifest, uri)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise UserError(f'{uri} is not JSON: {exc}') from exc


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """``logger``'s INFO lines off (warnings still on) for the duration."""
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def publish(
    layout: RunLayout,
    step: str,
    local: str | os.PathLike,
    *parts: str,
    source_sha256: str = '',
) -> ManifestEntry:
    """Publish one file as ``<run>/<step>/<parts...>`` (see ``Manifest.publish``)."""
    return Manifest.load(layout).publish(step, local, layout.uri(step, *parts), source_sha256)


# --------------------------------------------------------------------------- claim


class RunInUseError(UserError):
    """The run directory belongs to another run."""


def claim_run(layout: RunLayout, job_id: str = '') -> bool:
    """Make the run directory ours: True when newly claimed, False when a retry of ``job_id``
    goes on in it.

    The claim is ``run.json``: the run id, the KFP run (``job_id``) and a
    random ``owner`` token; only the process holding that token releases it
    (``release_claim``).  On a server with conditional writes the claim is one
    conditional PUT (``s3.create_if_absent``), so of two data preps started
    together with one run id exactly one gets the directory and the other
    stops before writing anything.  On a server without them it is the
    ticket protocol of ``_claim_by_ticket`` (see its docstring for what it
    assumes).  Raises ``RunInUseError`` when another run has it, or when the
    directory holds objects but no claim.
    """
    check_run_id(layout.run_id)
    check_prefix_outside_runs(layout)
    token = uuid.uuid4().hex
    body = json.dumps(
        {
            'run_id': layout.run_id,
            'job_id': job_id,
            'owner': token,
            'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        },
        indent=2,
    )
    conditional = s3.conditional_writes(layout.claim_uri)
    for attempt in range(_CLAIM_TRIES):
        existing = _run_objects(layout)
        if existing and layout.claim_uri not in existing:
            raise _in_use(layout, len(existing), 'it has no run.json')
        if existing:
            break
        if conditional:
            taken = s3.create_if_absent(layout.claim_uri, body, content_type='application/json')
            outcome = _WON if taken else _TAKEN
        else:
            outcome = _claim_by_ticket(layout, token, body)
        if outcome == _WON:
            _owned[(layout.claim_uri, job_id)] = token
            log.info('run %s: claimed %s/', layout.run_id, layout.root)
            return True
        if outcome == _TAKEN:
            continue  # the next listing says by whom
        # contended: the claimant with the smallest ticket goes again first, the others later
        wait = _CLAIM_BACKOFF_S * (0.2 if outcome == _FIRST else 2 ** min(attempt, 3))
        time.sleep(random.uniform(wait / 2, wait))
    else:
        raise _in_use(
            layout,
            len(_tickets(layout)),
            f'a claim of it is in progress, or one was abandoned under {_tickets_prefix(layout)} '
            '(delete that if no data prep of this run id is running)',
        )
    stored = s3.read_json(layout.claim_uri)
    owner = stored.get('job_id')
    if not job_id or owner != job_id:
        why = f'claimed by KFP run {owner!r}' if owner else 'claimed'
        raise _in_use(layout, len(existing) or 1, why)
    _owned[(layout.claim_uri, job_id)] = str(stored.get('owner', ''))  # the same KFP run
    log.info('run %s: continuing in %s/ (retry of KFP run %s)', layout.run_id, layout.root, job_id)
    return False


# Claims this process made (or continues, as a retry of the same KFP run): (claim URI,
# job id) -> the owner token in its run.json.  Only these are released (``release_claim``).
_owned: dict[tuple[str, str], str] = {}
_CLAIM_TRIES = 12
_CLAIM_BACKOFF_S = 0.05
_WON, _TAKEN, _FIRST, _LATER = 'won', 'taken', 'first', 'later'  # how a claim attempt ends
TICKETS_DIR = '.claim'  # <run>/.claim/<token>: the fallback's tickets, gone after the claim


def _tickets_prefix(layout: RunLayout) -> str:
    return s3.join_uri(layout.root, TICKETS_DIR) + '/'


def _tickets(layout: RunLayout) -> list[str]:
    return s3.list_uris(_tickets_prefix(layout))


def _run_objects(layout: RunLayout) -> list[str]:
    """What the run directory holds, without the fallback's claim tickets."""
    tickets = _tickets_prefix(layout)
    return [uri for uri in s3.list_uris(layout.root + '/') if not uri.startswith(tickets)]


def _claim_by_ticket(layout: RunLayout, token: str, body: str) -> str:
    """The claim on a server without conditional writes: ``_WON``; ``_TAKEN`` when the
    directory holds a claim (or anything) already; ``_FIRST`` or ``_LATER`` when other
    claimants are at it too (back off and try again; ``_FIRST``: ours was the smallest
    ticket seen, so ours goes again first).

    Each claimant PUTs a ticket of its own (``<run>/.claim/<token>``, a key no one
    else writes), then LISTs the run directory: it wins only if the listing shows
    no other ticket and no claim, then writes ``run.json`` and deletes its ticket;
    otherwise it deletes its ticket and backs off.  Two claimants cannot both win:
    each LIST came after its own PUT, so for neither LIST to show the other's
    ticket each PUT must follow the other's LIST, which is a cycle (a winner's
    ticket is deleted only after its ``run.json`` was written, which the later
    LIST then shows).  That holds only if the server is strongly consistent: a
    LIST sees every PUT and DELETE that completed before it began (AWS S3 since
    December 2020, MinIO, a single Ceph RGW zone).  A server whose listings lag
    its writes (an eventually consistent gateway or cache, multi-site replication
    read from another site) can let two claimants through, and nothing here can
    tell.  A claimant killed between its PUT and its DELETE leaves a ticket that
    blocks the run id until it is deleted (the error names it).
    """
    tickets = _tickets_prefix(layout)
    ticket = s3.join_uri(tickets, token)
    s3.put_bytes(ticket, token.encode())
    won = False
    try:
        seen = s3.list_uris(layout.root + '/')
        if [uri for uri in seen if not uri.startswith(tickets)]:
            return _TAKEN
        others = [uri.rsplit('/', 1)[1] for uri in seen if uri != ticket]
        if others:
            return _FIRST if token < min(others) else _LATER
        s3.put_bytes(layout.claim_uri, body.encode(), content_type='application/json')
        won = True
        return _WON
    finally:
        try:
            s3.delete(ticket)
        except s3.S3Error:
            if not won:
                raise
            log.warning('run %s: could not delete the claim ticket %s', layout.run_id, ticket)


def check_prefix_outside_runs(layout: RunLayout) -> None:
    """Refuse a prefix that lies inside a run's directory (``<prefix>/<run id>/train/...``):
    a run there would mix its objects with that run's (whose checkpoint listing would find
    the new run's files).  One HEAD per prefix segment, for the claim and the manifest."""
    segments = layout.prefix.split('/') if layout.prefix else []
    for depth in range(1, len(segments) + 1):
        directory = s3.join_uri(f's3://{layout.bucket}', *segments[:depth])
        for name in (CLAIM_NAME, MANIFEST_NAME):
            if s3.exists(s3.join_uri(directory, name)):
                raise UserError(
                    f's3_prefix {layout.prefix!r} is inside the run directory {directory}/ '
                    f'(it holds {name}): runs never write into another run; give the prefix '
                    'that run was started with, or another one'
                )


def _in_use(layout: RunLayout, count: int, why: str) -> RunInUseError:
    return RunInUseError(
        f'run directory {layout.root}/ is already used by another run ({count} objects, {why}); '
        "a run never writes into another run's directory: choose another run id or leave it empty"
    )


def release_claim(layout: RunLayout, job_id: str = '') -> bool:
    """Give the run id back after a failed first step; True when released.

    Only a claim this process made (or continues for the same KFP run), only
    while ``run.json`` still holds our owner token, and only when the directory
    holds nothing else: the user fixes the data and re-runs with the same run
    id.  The delete is conditional on the ETag the token was read with
    (``If-Match``), so a claim that changed in between is never deleted; on a
    server without conditional deletes the token check guards it alone (no one
    else writes ``run.json`` while it exists).  A directory with other objects
    keeps its claim (the same KFP run may still retry into it).
    """
    token = _owned.get((layout.claim_uri, job_id))
    if token is None:
        return False  # not our claim: a loser never releases the winner's
    if _run_objects(layout) != [layout.claim_uri]:
        return False
    outcome = _delete_if_owned(layout.claim_uri, 'owner', token)
    if outcome == _GONE:
        _owned.pop((layout.claim_uri, job_id), None)
        return False
    if outcome == _NOT_OURS:
        log.warning('run %s: run.json is not our claim any more: not released', layout.run_id)
        return False
    if outcome == _CHANGED:
        log.warning('run %s: run.json changed while released: kept', layout.run_id)
        return False
    _owned.pop((layout.claim_uri, job_id), None)
    log.info('run %s: claim released (nothing was published)', layout.run_id)
    return True


_DELETED, _GONE, _NOT_OURS, _CHANGED = 'deleted', 'gone', 'not ours', 'changed'


def _delete_if_owned(uri: str, field: str, token: str) -> str:
    """Delete the JSON object at ``uri`` only while its ``field`` holds ``token`` (a claim or a
    hold this process wrote), conditionally on the ETag that was read with it (``If-Match``),
    so one that changed in between is kept: ``_DELETED``, ``_GONE`` (nothing there),
    ``_NOT_OURS`` (another owner, not JSON of ours, no ETag to condition on) or ``_CHANGED``."""
    try:
        body, etag = s3.read_versioned(uri)
        owner = json.loads(body).get(field, '')
    except s3.ObjectNotFoundError:
        return _GONE
    except (ValueError, AttributeError):
        return _NOT_OURS
    if owner != token or etag is None:
        return _NOT_OURS
    try:
        s3.delete(uri, if_match=etag)
    except s3.ObjectChangedError:
        return _CHANGED
    return _DELETED


def check_claimed(layout: RunLayout) -> None:
    """A later step writes only into a run directory that data prep claimed."""
    if not s3.exists(layout.claim_uri):
        raise UserError(f'{layout.root}/ was never claimed: run data prep for this run first')


# --------------------------------------------------------------------------- training hold

TRAINING_HOLD_NAME = 'training.json'


class TrainingHeldError(RunInUseError):
    """Another train step is training this run (locally) now."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def training_hold(layout: RunLayout) -> Iterator[str]:
    """Hold the run's training for this process while the block runs (the local backend:
    two train steps on one run would interleave two lineages of checkpoints, ``epoch_4.pth``
    and ``epoch_4.1.pth``, and the step's output could name the other's).

    The hold, ``<run>/train/training.json`` (host, pid, a token), is one conditional write;
    a second train step is refused in one line while the holder lives.  A hold left by a
    process of this host that is gone (killed) is taken over; one of another host is kept
    (delete it by hand if that machine's step is gone).  On a cluster the training job, named
    by the run id, is what two steps share (the second follows the first's job).
    """
    uri = layout.uri('train', TRAINING_HOLD_NAME)
    token = uuid.uuid4().hex
    hold = {
        'token': token,
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    for _ in range(3):
        if s3.create_if_absent(uri, json.dumps(hold, indent=2), content_type='application/json'):
            break
        try:
            held = s3.read_json(uri)
        except s3.ObjectNotFoundError:
            continue  # released in between
        if held.get('host') == hold['host'] and not _pid_alive(int(held.get('pid', 0))):
            log.warning('run %s: taking over the training hold of pid %s (gone)',
                        layout.run_id, held.get('pid'))  # fmt: skip
            s3.delete(uri)
            continue
        raise TrainingHeldError(
            f'run {layout.run_id} is being trained by another train step (pid {held.get("pid")} '
            f'on {held.get("host")}, since {held.get("since")}; {uri}): two at once would mix '
            'their checkpoints; wait for it to finish (then re-run to resume), or delete that '
            'object if its process is gone'
        )
    else:
        raise TrainingHeldError(f'could not take the training hold {uri}: it kept changing')
    try:
        yield token
    finally:
        with contextlib.suppress(s3.S3Error):
            _delete_if_owned(uri, 'token', token)
