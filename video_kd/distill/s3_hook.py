"""An mmengine Hook that copies every checkpoint to S3 as soon as it is written, and the logs.

Registered through ``custom_hooks`` with the lowest priority, so it runs after
mmengine's ``CheckpointHook`` in the same epoch::

    custom_hooks = [dict(type='S3CheckpointHook', run_root='s3://bucket/prefix/run-id')]

Only rank 0 uploads (it is the rank that writes checkpoints).  Each file goes
to ``<run>/train/checkpoints/<name>`` and into the run's manifest.  A
checkpoint already in S3 with the same content is skipped; one with the same
name but other content (a restarted pod re-trained an epoch whose upload was
lost) is kept under ``epoch_N.<k>.pth`` instead: nothing is ever overwritten.
An upload retried after a partial success (the object stored, the manifest
save failed) finds its own bytes under the name and records them: no copy.
``latest_checkpoint`` tells which one to resume from, ``checkpoint_epochs``
how many epochs were trained.  Only the run's own checkpoints count: keys directly under
``<run>/train/checkpoints/`` named ``epoch_N[.k].pth`` and recorded in the run's
manifest (an object planted elsewhere under the prefix, or put there without a manifest
entry, is never resumed from), and a pod checks the downloaded file's sha256 against
the manifest before loading it.  ``fetch_resume_checkpoint`` is that pod's choice: the
newest checkpoint whose bytes match the manifest and that loads (weights-only); one that
does not (cut short, replaced, deleted) is skipped with a warning naming it, and the one
before is tried, down to training from the start when none is good.  While S3 is unreachable an upload is retried
(``video_kd.storage.s3_policy``); if it still fails the training stops with one line,
and re-running the step resumes from the last checkpoint that reached S3.

Retention follows mmengine's ``CheckpointHook``: with ``max_keep_ckpts`` K (the
``keep_checkpoints`` training option) only the K newest ``epoch_N[.k].pth`` stay in S3,
and with ``save_best`` only the newest ``best_*.pth`` (the best by the val metric) beside
them.  An older one is first removed from the manifest (kept there as removed), and only
then deleted: the manifest never names a deleted object, and resume still picks the
newest good recorded checkpoint.  The checkpoint just uploaded is never deleted, so a run
that started over beside bad, higher-numbered checkpoints still has a good one to resume
from.  A delete that failed is retried at the next epoch (the object the manifest marks
removed is still listed).

Curves while training: after every train and val epoch the attempt's metrics
(mmengine's ``vis_data/scalars.json``: losses, the student's and the teacher's val top-1)
go to ``<run>/train/scalars/<timestamp>.json`` and its TensorBoard event files
(``TensorboardVisBackend``, flushed first) to ``<run>/train/tensorboard/<timestamp>/``,
rewritten as they grow: live copies for Kubeflow's TensorBoard (a ``Tensorboard`` pointed at
``<run>/train/tensorboard/``), not recorded in the manifest; a failed upload is a warning,
never the training's end.  The recorded copies are the logs below.

When training ends, the run's mmengine log directory (the text log, the
resolved config ``vis_data/config.py`` and the metrics ``vis_data/scalars.json``)
goes to ``<run>/train/logs/<timestamp>/``: one directory per training attempt
(a resumed attempt has a new timestamp), so nothing is overwritten either.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from video_kd.core.errors import one_line
from video_kd.openmmlab.checkpoints import unreadable_reason
from video_kd.runs import Manifest, ManifestEntry, RunLayout
from video_kd.storage import s3
from video_kd.storage.download import ChangedSinceRecordedError, fetch_verified
from video_kd.storage.s3_policy import retry_call

if TYPE_CHECKING:
    from mmengine.runner import Runner

log = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
LOG_DIR = 'logs'
SCALARS_DIR = 'scalars'  # <run>/train/scalars/<timestamp>.json, live
TENSORBOARD_DIR = 'tensorboard'  # <run>/train/tensorboard/<timestamp>/events.out.tfevents.*
_CKPT_RE = re.compile(r'^epoch_(\d+)(?:\.(\d+))?\.pth$')
BEST_GLOB = 'best_*.pth'  # mmengine's save_best: best_<metric>_epoch_N.pth


def checkpoint_prefix(layout: RunLayout) -> str:
    """``s3://<bucket>/<prefix>/<run-id>/train/checkpoints``."""
    return layout.uri('train', CHECKPOINT_DIR)


def checkpoint_sort_key(uri: str) -> tuple[int, int] | None:
    """(epoch, retry) of an ``epoch_N[.k].pth`` URI; None for other names."""
    match = _CKPT_RE.match(uri.rsplit('/', 1)[-1])
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def checkpoint_entries(layout: RunLayout) -> list[ManifestEntry]:
    """The run's checkpoints in training order (epoch, then retry), as its manifest
    records them: keys directly under ``<run>/train/checkpoints/`` (not in a
    sub-directory) named ``epoch_N[.k].pth``, stored and recorded by the train step."""
    prefix = checkpoint_prefix(layout) + '/'
    manifest = Manifest.load(layout)
    keyed = []
    for uri in s3.list_uris(prefix):
        key = checkpoint_sort_key(uri)
        if key is None or '/' in uri[len(prefix) :]:
            continue
        entry = manifest.find(uri)
        if entry is None or entry.step != 'train':
            log.warning('ignoring %s: not in the run manifest (the run did not write it)', uri)
            continue
        keyed.append((key, entry))
    return [entry for _, entry in sorted(keyed, key=lambda pair: pair[0])]


def list_checkpoints(layout: RunLayout) -> list[str]:
    """Checkpoint URIs of a run in training order (see ``checkpoint_entries``)."""
    return [entry.uri for entry in checkpoint_entries(layout)]


def latest_checkpoint(layout: RunLayout) -> ManifestEntry | None:
    """The checkpoint to resume from: the highest epoch (latest retry of it), if any."""
    entries = checkpoint_entries(layout)
    return entries[-1] if entries else None


def fetch_resume_checkpoint(layout: RunLayout, dest_dir: Path) -> tuple[ManifestEntry, Path] | None:
    """Download the checkpoint to resume from into ``dest_dir``: the newest of the run's
    (``checkpoint_entries``) whose bytes match the sha256 the manifest records and that
    loads weights-only.  Each one that does not — changed or cut short since it was recorded,
    deleted, recorded cut short, not a checkpoint — is skipped with a warning naming it (its
    download removed) and the one before is tried; None when no checkpoint is good (the
    training starts from the beginning; its new checkpoints take free names, ``epoch_N.k``,
    beside the bad ones, which stay for inspection).  An S3 outage is not a bad checkpoint:
    it stops the pod (``S3UnavailableError``) as any other read would."""
    entries = checkpoint_entries(layout)
    for entry in reversed(entries):
        path = Path(dest_dir) / entry.uri.rsplit('/', 1)[-1]
        try:
            fetch_verified(entry.uri, path, entry.sha256)
        except s3.BucketNotFoundError:
            raise
        except (ChangedSinceRecordedError, s3.ObjectNotFoundError) as error:
            _skip(entry, one_line(error))
            continue
        reason = unreadable_reason(path)
        if reason:
            path.unlink(missing_ok=True)
            _skip(entry, reason)
            continue
        return entry, path
    if entries:
        log.warning(
            'none of the %d checkpoints in %s/ is good: training starts from the beginning',
            len(entries),
            checkpoint_prefix(layout),
        )
    return None


def _skip(entry: ManifestEntry, why: str) -> None:
    log.warning('skipping checkpoint %s (%s); trying the one before it', entry.uri, why)


def latest_checkpoint_uri(layout: RunLayout) -> str | None:
    """``latest_checkpoint``'s URI."""
    latest = latest_checkpoint(layout)
    return latest.uri if latest else None


def checkpoint_epochs(layout: RunLayout) -> list[int]:
    """The distinct epochs a run has checkpoints of, ascending.

    ``epoch_3.pth`` and its retry ``epoch_3.1.pth`` are one epoch: count these,
    not the files, when reporting how many epochs were trained.
    """
    keys = [checkpoint_sort_key(uri) for uri in list_checkpoints(layout)]
    return sorted({key[0] for key in keys if key})


def _best_entries(layout: RunLayout, manifest: Manifest) -> list[ManifestEntry]:
    """The run's recorded ``best_*.pth`` checkpoints (directly under checkpoints/)."""
    prefix = checkpoint_prefix(layout) + '/'
    return [
        e
        for e in manifest.entries
        if e.step == 'train'
        and e.uri.startswith(prefix)
        and '/' not in e.uri[len(prefix) :]
        and Path(e.uri).match(BEST_GLOB)
    ]


def prune_checkpoints(
    layout: RunLayout, keep_last: int, keep: tuple[str, ...] = (), best: str = ''
) -> list[str]:
    """Apply retention: the ``keep_last`` newest epoch checkpoints stay (all when it is
    below 1), the ``keep`` URIs stay (the ones just uploaded), and with ``best`` (the best
    checkpoint just uploaded) no other ``best_*.pth``.  What goes is removed from the
    manifest first (``Manifest.forget``), then deleted; returns the deleted URIs."""
    entries = checkpoint_entries(layout)
    old = entries[:-keep_last] if keep_last > 0 else []
    manifest = Manifest.load(layout)
    if best:
        old += _best_entries(layout, manifest)
    drop = [e for e in old if e.uri not in keep and e.uri != best]
    if drop:
        manifest.forget(drop)
    # deleted once the manifest no longer names them (those of an earlier failed delete too)
    gone = {uri for uri, _ in manifest.removed if manifest.find(uri) is None}
    deleted = [uri for uri in s3.list_uris(checkpoint_prefix(layout) + '/') if uri in gone]
    for uri in deleted:
        s3.delete(uri)
    return deleted


def upload_checkpoint(layout: RunLayout, path: Path) -> str:
    """Put one checkpoint under the run's checkpoint dir; returns its URI.

    The first free name of ``epoch_N.pth``, ``epoch_N.1.pth``, ... is taken
    with a conditional write, so two pods that both think they own epoch N
    (a restarted pod beside a slow one) keep both files.  A name that holds
    this very file already (an earlier attempt stored it, then failed to save
    the manifest) is reused and recorded, so a retry leaves no duplicate.
    """
    manifest = Manifest.load(layout)
    sha = s3.sha256_file(path)
    stem = path.name[: -len('.pth')]
    for retry in range(0, 100):
        name = path.name if retry == 0 else f'{stem}.{retry}.pth'
        uri = s3.join_uri(checkpoint_prefix(layout), name)
        if manifest.find(uri, sha):
            return uri  # already there (uploaded before a restart)
        try:
            manifest.record('train', path, uri, sha256=sha)
        except s3.ObjectExistsError:
            manifest = Manifest.load(layout)
            if manifest.find(uri, sha):
                return uri
            if not s3.holds_file(uri, path):
                continue  # another pod's epoch N: take the next name
            log.info('checkpoint %s: already stored at %s (an earlier attempt), recording it',
                     path, uri)  # fmt: skip
            manifest.record_stored('train', uri, sha, path.stat().st_size)
        log.info('checkpoint %s -> %s', path.name, uri)
        return uri
    raise s3.S3Error(f'too many versions of {path.name} under {checkpoint_prefix(layout)}')


def upload_checkpoint_retried(layout: RunLayout, path: Path) -> str:
    """``upload_checkpoint``, tried again while S3 is unreachable (``s3_policy.retry_call``).

    Gives up within ``S3Policy.failure_bound_s()`` (113 s by default, a
    multipart checkpoint's abort included) with one line that says what was
    lost and how to go on.
    """
    try:
        return retry_call(
            lambda: upload_checkpoint(layout, path),
            f'uploading checkpoint {path.name}',
            s3.is_transient,
        )
    except s3.S3Error as exc:
        error = CheckpointUploadError(
            f'checkpoint {path.name} could not be uploaded to {checkpoint_prefix(layout)}/ '
            f'({one_line(exc)}); training stops here: re-run the step to resume from the '
            'last checkpoint in S3'
        )
        # S3 out of reach is temporary: the pod's launcher then exits with a status the
        # operators retry, and the restarted pod resumes from the last checkpoint in S3.
        error.exit_status = exc.exit_status
        raise error from exc


class CheckpointUploadError(s3.S3Error):
    """A checkpoint did not reach S3 even after the retries: the attempt must stop."""


def upload_logs(layout: RunLayout, log_dir: Path) -> list[str]:
    """Put an mmengine log directory under ``<run>/train/logs/<its name>/``; returns the URIs."""
    uris = []
    with Manifest.load(layout).batch() as manifest:
        for path in sorted(p for p in Path(log_dir).rglob('*') if p.is_file()):
            uri = layout.uri('train', LOG_DIR, Path(log_dir).name, *path.relative_to(log_dir).parts)
            manifest.publish('train', path, uri)
            uris.append(uri)
    log.info('training logs -> %s/', layout.uri('train', LOG_DIR, Path(log_dir).name))
    return uris


def upload_curves(layout: RunLayout, log_dir: Path) -> list[str]:
    """The attempt's scalars and TensorBoard event files as they are now (rewritten)."""
    vis_data, attempt = Path(log_dir) / 'vis_data', Path(log_dir).name
    copies = [(path, layout.uri('train', TENSORBOARD_DIR, attempt, path.name))
              for path in sorted(vis_data.glob('events.out.tfevents.*'))]  # fmt: skip
    if (vis_data / 'scalars.json').is_file():
        copies.append(
            (vis_data / 'scalars.json', layout.uri('train', SCALARS_DIR, f'{attempt}.json'))
        )
    for path, uri in copies:
        s3.upload_file(path, uri, overwrite=True)  # a growing file: S3 has no append
    return [uri for _, uri in copies]


@HOOKS.register_module(force=True)
class S3CheckpointHook(Hook):
    """Upload new ``epoch_*.pth`` files of the work dir to the run's S3 directory."""

    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, run_root: str):
        self.layout = RunLayout.from_root(run_root)
        self._done: dict[str, float] = {}
        self.keep_last = -1  # CheckpointHook's max_keep_ckpts (-1: every checkpoint stays)

    def _sync(self, runner: Runner) -> None:
        from mmengine.dist import is_main_process

        if not is_main_process():
            return
        work_dir = Path(runner.work_dir)
        epochs = sorted(
            work_dir.glob('epoch_*.pth'), key=lambda p: checkpoint_sort_key(p.name) or (0, 0)
        )
        uploaded = [self._upload(path) for path in epochs]
        # mmengine keeps one best file: the newest is the best (a restarted pod has none)
        bests = sorted(work_dir.glob(BEST_GLOB), key=lambda p: p.stat().st_mtime)
        best = self._upload(bests[-1]) if bests else ''
        new = tuple(uri for uri in uploaded if uri)
        if new or best:
            self._prune(new, best)

    def _prune(self, new: tuple[str, ...], best: str) -> None:
        """Retention is housekeeping: a failure is a warning, not the end of the training
        (the next checkpoint's retention deletes what this one left)."""
        try:
            retry_call(
                lambda: prune_checkpoints(self.layout, self.keep_last, new, best),
                'applying checkpoint retention',
                s3.is_transient,
            )
        except s3.S3Error as exc:
            log.warning('checkpoint retention: %s; tried again after the next checkpoint',
                        one_line(exc))  # fmt: skip

    def _upload(self, path: Path) -> str:
        """Upload ``path`` if it is new (a best file: or rewritten); its URI, or '' when it
        was done.  An epoch's file goes up once: mmengine's CheckpointHook rewrites it after
        the epoch's validation (the new best score in its meta), and uploading that again
        would store the epoch twice (``epoch_N.1.pth``)."""
        mtime = path.stat().st_mtime
        done = self._done.get(path.name)
        if done == mtime or (done is not None and checkpoint_sort_key(path.name)):
            return ''
        uri = upload_checkpoint_retried(self.layout, path)
        self._done[path.name] = mtime
        return uri

    def before_train(self, runner: Runner) -> None:
        from mmengine.hooks import CheckpointHook

        checkpoint_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        if checkpoint_hook is not None:
            self.keep_last = checkpoint_hook.max_keep_ckpts
        # A resumed run starts with the checkpoint it came from: already in S3.
        for path in Path(runner.work_dir).glob('epoch_*.pth'):
            self._done[path.name] = path.stat().st_mtime

    def after_train_epoch(self, runner: Runner) -> None:
        self._sync(runner)
        self._curves(runner)

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        self._sync(runner)  # a new best_*.pth (save_best) goes up at once
        self._curves(runner)

    def _curves(self, runner: Runner) -> None:
        from mmengine.dist import is_main_process

        if not is_main_process() or not hasattr(runner, 'visualizer'):
            return  # no visualizer (a runner stand-in): no curves to upload
        tensorboard = runner.visualizer.get_backend('TensorboardVisBackend')
        if tensorboard is not None:
            tensorboard.experiment.flush()  # SummaryWriter buffers up to 2 minutes
        try:
            upload_curves(self.layout, Path(runner.log_dir))
        except s3.S3Error as exc:  # live copies only: the logs at the end are the record
            log.warning('training curves not uploaded this epoch: %s', one_line(exc))

    def after_train(self, runner: Runner) -> None:
        from mmengine.dist import is_main_process

        self._sync(runner)
        if is_main_process():
            retry_call(
                lambda: upload_logs(self.layout, Path(runner.log_dir)),
                'uploading the training logs',
                s3.is_transient,
            )
