"""An mmengine Hook that copies every checkpoint to S3 as soon as it is written, and the logs.

Registered through ``custom_hooks`` with the lowest priority, so it runs after
mmengine's ``CheckpointHook`` in the same epoch::

    custom_hooks = [dict(type='S3CheckpointHook', run_root='s3://bucket/prefix/run-id')]

Only rank 0 uploads (it is the rank that writes checkpoints).  Each file goes
to ``<run>/train/checkpoints/<name>`` and into the run's manifest.  A
checkpoint already in S3 with the same content is skipped; one with the same
name but other content (a restarted pod re-trained an epoch whose upload was
lost) is kept under ``epoch_N.<k>.pth`` instead: nothing is ever overwritten.
``latest_checkpoint_uri`` tells which one to resume from.

When training ends, the run's mmengine log directory (the text log, the
resolved config ``vis_data/config.py`` and the metrics ``vis_data/scalars.json``)
goes to ``<run>/train/logs/<timestamp>/``: one directory per training attempt
(a resumed attempt has a new timestamp), so nothing is overwritten either.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from video_kd import s3
from video_kd.runs import Manifest, RunLayout

log = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
LOG_DIR = 'logs'
_CKPT_RE = re.compile(r'^epoch_(\d+)(?:\.(\d+))?\.pth$')


def checkpoint_prefix(layout: RunLayout) -> str:
    """``s3://<bucket>/<prefix>/<run-id>/train/checkpoints``."""
    return layout.uri('train', CHECKPOINT_DIR)


def checkpoint_sort_key(uri: str) -> tuple[int, int] | None:
    """(epoch, retry) of an ``epoch_N[.k].pth`` URI; None for other names."""
    match = _CKPT_RE.match(uri.rsplit('/', 1)[-1])
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def list_checkpoints(layout: RunLayout) -> list[str]:
    """Checkpoint URIs of a run in training order (epoch, then retry)."""
    uris = [u for u in s3.list_uris(checkpoint_prefix(layout) + '/') if checkpoint_sort_key(u)]
    return sorted(uris, key=checkpoint_sort_key)


def trained_epochs(checkpoints: list[str]) -> int:
    """How many distinct epochs the checkpoints cover (``epoch_3.pth`` and its retry
    ``epoch_3.1.pth`` are one epoch)."""
    return len({checkpoint_sort_key(uri)[0] for uri in checkpoints if checkpoint_sort_key(uri)})


def latest_checkpoint_uri(layout: RunLayout) -> str | None:
    """The checkpoint to resume from: the highest epoch (latest retry of it), if any."""
    uris = list_checkpoints(layout)
    return uris[-1] if uris else None


def upload_checkpoint(layout: RunLayout, path: Path) -> str:
    """Put one checkpoint under the run's checkpoint dir; returns its URI."""
    manifest = Manifest.load(layout)
    sha = s3.sha256_file(path)
    stem = path.name[: -len('.pth')]
    for retry in range(0, 100):
        name = path.name if retry == 0 else f'{stem}.{retry}.pth'
        uri = s3.join_uri(checkpoint_prefix(layout), name)
        if not s3.exists(uri):
            manifest.record('train', path, uri, sha256=sha)
            log.info('checkpoint %s -> %s', path.name, uri)
            return uri
        if any(e.uri == uri and e.sha256 == sha for e in manifest.entries):
            return uri  # already there (uploaded before a restart)
    raise s3.S3Error(f'too many versions of {path.name} under {checkpoint_prefix(layout)}')


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


@HOOKS.register_module(force=True)
class S3CheckpointHook(Hook):
    """Upload new ``epoch_*.pth`` files of the work dir to the run's S3 directory."""

    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, run_root: str):
        self.layout = RunLayout.from_root(run_root)
        self._done: dict[str, float] = {}

    def _sync(self, runner) -> None:
        from mmengine.dist import is_main_process

        if not is_main_process():
            return
        for path in sorted(
            Path(runner.work_dir).glob('epoch_*.pth'),
            key=lambda p: checkpoint_sort_key(p.name) or (0, 0),
        ):
            mtime = path.stat().st_mtime
            if self._done.get(path.name) == mtime:
                continue
            upload_checkpoint(self.layout, path)
            self._done[path.name] = mtime

    def before_train(self, runner) -> None:
        # A resumed run starts with the checkpoint it came from: already in S3.
        for path in Path(runner.work_dir).glob('epoch_*.pth'):
            self._done[path.name] = path.stat().st_mtime

    def after_train_epoch(self, runner) -> None:
        self._sync(runner)

    def after_train(self, runner) -> None:
        from mmengine.dist import is_main_process

        self._sync(runner)
        if is_main_process():
            upload_logs(self.layout, Path(runner.log_dir))
