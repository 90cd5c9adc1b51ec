"""Training and evaluation read videos where they are: S3 (streamed) or a mounted volume.

``use_dataset(cfg, meta)`` points a config's data loaders at a prepared
dataset (the Dataset artifact's metadata, see ``dataset_meta``): list files and
video roots may be ``s3://`` URIs or paths on a mounted volume (PVC).  Nothing
is downloaded first: each data loader worker GETs a video when it needs it
(``video_kd.storage.s3_fileio``), so a pod's disk use does not grow with the dataset.

A video that cannot be read during training (deleted since data prep,
undecodable, a file a mounted volume cannot read) is skipped and counted; the
epoch goes on.  The training loader draws another video instead (mmengine's refetch);
the validation loader inside training reads the next readable one in the
list (its metrics then count that one twice).  The counts are shared by a
loader's worker processes, and ``UnreadableVideosHook`` logs after each
training epoch and each validation how many were skipped (all the loader's
workers in this process together).  When more than ``max_unreadable`` of
the loader's last ``UNREADABLE_WINDOW`` reads (all of them, before it has made
that many) were unreadable, the dataset is broken rather than unlucky, and
training stops with the count (exit status 2): judged on recent reads, so a
dataset that goes bad late in a long epoch stops as soon as one that is bad
from the start.  Standalone evaluation (the ``test_dataloader``) never skips:
its metrics must cover every listed video, so an unreadable one stops it with
the object's name.

An S3 outage is not an unreadable video: a read that failed because the
server refused or reset the connection, stopped answering, or answered 5xx /
429 to every attempt (``s3.S3UnavailableError``, after the policy's retries)
stops training, validation and evaluation alike at once with
``StorageUnavailableError``: one line, exit status 75 (``TEMPORARY_FAILURE``:
the launcher retries it), within ``S3Policy.request_budget_s()`` (63 s by
default) of the outage, and nothing is counted or skipped.

Only read and decode errors count as unreadable (``is_read_error``: S3 errors
other than an outage, OS errors, decord's); any other exception is a bug in
the config or the pipeline and stops training as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decord import DECORDError
from mmaction.datasets import VideoDataset
from mmaction.registry import DATASETS
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from video_kd.core.artifacts import (
    DatasetContents,
    dataset_split,
    split_list_uri,
    split_videos_uri,
)
from video_kd.core.errors import TEMPORARY_FAILURE, UserError, one_line
from video_kd.data.data_check import (
    REPORT_NAME,
    dataset_meta,
    validate_source,
    write_unchecked,
)
from video_kd.data.data_layout import CLASSES_FILE, DatasetSource, resolve
from video_kd.data.dataset import TRAIN_LIST, VAL_LIST, VIDEO_DIR, DatasetError, read_classes
from video_kd.openmmlab.config import set_num_classes
from video_kd.storage import s3, s3_fileio

if TYPE_CHECKING:
    from mmengine.runner import Runner

log = logging.getLogger(__name__)

DATASET_TYPE = 'StreamingVideoDataset'
SKIP_HOOK_TYPE = 'UnreadableVideosHook'
LOCAL_META_NAME = 'dataset.json'  # prepare_local's DatasetContents, beside the lists
SPLIT_OF_LOADER = {'train_dataloader': 'train', 'val_dataloader': 'val', 'test_dataloader': 'val'}
SKIPPING_LOADERS = ('train_dataloader', 'val_dataloader')  # inside training; not evaluation
MIN_READS_BEFORE_STOP = 20  # a few bad videos early on must not look like "most of them"
# The stop is judged on a loader's last this-many reads: a dataset that goes bad late in an
# epoch of 240k videos stops within ~UNREADABLE_WINDOW reads, not after 240k.  Large enough
# that a dataset with 30% unreadable videos never looks like "more than 50%" by chance (a
# window of 200 reads holds > 100 unreadable ones with a chance of ~1e-9).
UNREADABLE_WINDOW = 200


class LoaderError(UserError):
    """A data loading failure, readable even after a DataLoader worker re-raised it.

    torch re-raises a worker's exception as ``type(msg)`` where ``msg`` starts
    with ``Caught X in DataLoader worker process 0`` and ends with the original
    line: keep only that line, so the entry point prints what went wrong.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_original_message(message))


class DatasetUnreadableError(LoaderError):
    """Most of the videos read so far could not be read."""


class VideoReadError(LoaderError):
    """A video of the evaluation set could not be read."""


class StorageUnavailableError(LoaderError, s3.S3UnavailableError):
    """S3 was out (refused, reset, stalled, 5xx) while a data loader read a video.

    Exit status 75 (``s3.S3UnavailableError``'s): the step is worth retrying,
    the dataset is not broken.  A ``LoaderError`` so that the line survives a
    DataLoader worker's re-raise.
    """

    exit_status = TEMPORARY_FAILURE


class DatasetNotMountedError(UserError):
    """A dataset on a mounted path (a PVC) that this pod does not have."""


def _original_message(message: str) -> str:
    if not message.startswith('Caught ') or 'Traceback' not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(': ', 1)[1] if ': ' in last else last


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says S3 is out (after the policy's retries), not that a video is bad:
    refused, reset, no answer, 5xx / 429 (``s3.is_transient``)."""
    return s3.is_transient(error)


def is_read_error(error: BaseException) -> bool:
    """Whether ``error`` says a video could not be fetched or decoded (not a config bug).

    S3 errors that are about the object (missing, forbidden; never an outage:
    ``is_outage``), OS errors (a file on a mounted volume), decord's
    ``DECORDError``, and the bare ``RuntimeError`` that decord's Python code
    raises on data it cannot parse (recognised by where it was raised: a
    ``RuntimeError`` from anywhere else is a bug, not a video).
    """
    if is_outage(error):
        return False
    if isinstance(error, (s3.S3Error, OSError, DECORDError)):
        return True
    return isinstance(error, RuntimeError) and _raised_in(error, 'decord')


def _raised_in(error: BaseException, package: str) -> bool:
    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    module = trace.tb_frame.f_globals.get('__name__', '')
    return module == package or module.startswith(package + '.')


class _Tally:
    """Videos read and unreadable, summed over the processes that share a dataset: in all,
    and over the last ``window`` reads (what the stop is judged on).

    Shared memory made with the dataset, before its DataLoader starts the
    workers: every worker's copy adds to the same numbers, so the main process
    sees the loader's totals (the per-epoch log, the stop).  The window is a
    ring of the last reads' outcomes (1: unreadable) and their sum.
    """

    _READS, _UNREADABLE, _RECENT_UNREADABLE, _RING = 0, 1, 2, 3

    def __init__(self, window: int = UNREADABLE_WINDOW) -> None:
        self.window = max(1, window)
        self._values = multiprocessing.Array('q', self._RING + self.window)

    def __deepcopy__(self, memo: dict) -> _Tally:
        return self  # a copy of the dataset counts with it (shared memory is not copied)

    def record(self, unreadable: bool) -> tuple[int, int]:
        """Count one read; returns (reads, unreadable) over the last ``window`` reads."""
        outcome = int(unreadable)
        values = self._values
        with values.get_lock():
            slot = self._RING + values[self._READS] % self.window
            values[self._RECENT_UNREADABLE] += outcome - values[slot]
            values[slot] = outcome
            values[self._READS] += 1
            values[self._UNREADABLE] += outcome
            return min(values[self._READS], self.window), values[self._RECENT_UNREADABLE]

    def totals(self) -> tuple[int, int]:
        """(reads, unreadable) since the loader was made."""
        with self._values.get_lock():
            return self._values[self._READS], self._values[self._UNREADABLE]

    def recent(self) -> tuple[int, int]:
        """(reads, unreadable) over the last ``window`` reads."""
        with self._values.get_lock():
            reads = min(self._values[self._READS], self.window)
            return reads, self._values[self._RECENT_UNREADABLE]


def too_many_unreadable(reads: int, unreadable: int, max_unreadable: float) -> bool:
    """The stop rule, on a window's counts: enough reads to judge, and more than the share."""
    return reads >= MIN_READS_BEFORE_STOP and unreadable > max_unreadable * reads


@DATASETS.register_module()
class StreamingVideoDataset(VideoDataset):
    """MMAction2's ``VideoDataset`` that skips (and counts) unreadable videos.

    ``skip_unreadable`` (default: not ``test_mode``): skip an unreadable video
    (training draws another, a ``test_mode`` loader reads the next one) or
    stop with ``VideoReadError`` naming it.
    """

    def __init__(
        self,
        *args,
        max_unreadable: float = 0.5,
        skip_unreadable: bool | None = None,
        **kwargs,
    ) -> None:
        self.max_unreadable = max_unreadable
        self.skip_unreadable = (
            not kwargs.get('test_mode', False) if skip_unreadable is None else skip_unreadable
        )
        self.tally = _Tally()
        super().__init__(*args, **kwargs)

    @property
    def reads(self) -> int:
        """Videos read so far by every process of this loader (unreadable ones included)."""
        return self.tally.totals()[0]

    @property
    def unreadable(self) -> int:
        """Videos skipped so far by every process of this loader."""
        return self.tally.totals()[1]

    def __getitem__(self, idx: int) -> Any:
        if not (self.test_mode and self.skip_unreadable):
            return super().__getitem__(idx)  # training: mmengine draws another for a skipped one
        if not self._fully_initialized:
            self.full_init()
        for step in range(len(self)):  # validation: the next readable video
            data = self.prepare_data((idx + step) % len(self))
            if data is not None:
                return data
        raise DatasetUnreadableError(
            f'none of the {len(self)} videos of {self.ann_file} could be read'
        )

    def prepare_data(self, idx: int) -> Any:
        try:
            data = super().prepare_data(idx)
        except Exception as error:
            if isinstance(error, LoaderError):
                raise
            if is_outage(error):  # S3 is out: stop now, count and skip nothing
                raise StorageUnavailableError(
                    f'{one_line(error)}; the data loader stopped: S3 is unavailable, the '
                    'videos are not unreadable (re-run the step once it is back)'
                ) from error
            if not is_read_error(error):
                raise  # a config or pipeline bug is not an unreadable video
            return self._unreadable(idx, error)
        self.tally.record(unreadable=False)
        return data

    def _unreadable(self, idx: int, error: Exception) -> None:
        filename = self.get_data_info(idx)['filename']
        reason = one_line(error)
        if not self.skip_unreadable:  # an S3 error's message already names the object
            named = reason.startswith('cannot ') and filename in reason
            message = reason if named else f'cannot read {filename}: {reason}'
            raise VideoReadError(message) from error
        reads, unreadable = self.tally.record(unreadable=True)
        log.warning(
            'skipped %s: %s (%d of the last %d videos unreadable in this loader)',
            filename,
            reason,
            unreadable,
            reads,
        )
        if too_many_unreadable(reads, unreadable, self.max_unreadable):
            window = (
                f'in its last {reads} reads'
                if self.tally.totals()[0] > reads
                else 'since it started'
            )
            raise DatasetUnreadableError(
                f'{unreadable} of {reads} videos read by the data loader of {self.ann_file} could '
                f'not be read (more than {self.max_unreadable:.0%}) {window}: the dataset is '
                f'broken; last: {filename}: {reason}'
            )
        return None  # mmengine's BaseDataset then draws another index


@HOOKS.register_module(force=True)
class UnreadableVideosHook(Hook):
    """Logs after each training epoch and each validation how many videos were skipped.

    The counts are the loader's (``_Tally``: all its worker processes in this
    process together); a rank of a multi-process job logs its own.
    """

    def __init__(self) -> None:
        self._logged: dict[int, tuple[int, int]] = {}

    def after_train_epoch(self, runner: Runner) -> None:
        self.report(runner.train_dataloader.dataset, f'epoch {runner.epoch + 1}: training')

    def after_val_epoch(self, runner: Runner, metrics: dict | None = None) -> None:
        self.report(runner.val_loop.dataloader.dataset, f'epoch {runner.epoch}: validation')

    def report(self, dataset: Any, what: str) -> None:
        """Log how many videos ``dataset``'s loader skipped since the last report, if any."""
        tally = getattr(dataset, 'tally', None)
        if not isinstance(tally, _Tally):
            return
        reads, unreadable = tally.totals()
        before_reads, before_unreadable = self._logged.get(id(tally), (0, 0))
        self._logged[id(tally)] = (reads, unreadable)
        if unreadable > before_unreadable:
            log.warning(
                '%s skipped %d unreadable videos of the %d read (all loader workers; %d so far)',
                what,
                unreadable - before_unreadable,
                reads - before_reads,
                unreadable,
            )


def _transforms(pipeline: list) -> list:
    """Every transform of a pipeline, those wrapped by another (SeededViews) included."""
    found = []
    for step in pipeline:
        found.append(step)
        found.extend(_transforms(step.get('transforms') or []))
    return found


def use_test_data(cfg: Config, data: str | Path | DatasetContents) -> list[str]:
    """Point ``cfg``'s test loader at ``data``: a prepared dataset's metadata (its val split,
    streamed where it is), a local root in our layout, or any dataset spec data prep
    takes (a path or ``s3://`` URI in any layout ``data_layout`` reads, with its
    ``?options``); returns the class names."""
    if isinstance(data, dict):
        return use_dataset(cfg, data, loaders=('test_dataloader',))
    if is_own_root(data):
        return set_data_root(cfg, data)
    meta = prepare_local(data, lists_dir(data), check_videos=False)
    return use_dataset(cfg, meta, loaders=('test_dataloader',))


def is_own_root(data_root: str | Path) -> bool:
    """A local directory in our layout (``classes.txt``, ``train_list.txt``...), read as is."""
    return not str(data_root).startswith('s3://') and (Path(data_root) / CLASSES_FILE).is_file()


def lists_dir(spec: str | Path) -> Path:
    """Where the local entry points keep the lists derived from ``spec`` when they have no
    work dir (rewritten each time: they follow the dataset)."""
    key = hashlib.sha256(str(spec).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / 'video_kd-datasets' / key


def prepare_local(
    spec: str | Path,
    out_dir: Path,
    check_videos: bool = True,
    source: DatasetSource | None = None,
) -> DatasetContents:
    """Data prep for the local entry points (``python -m video_kd.distill.train``,
    ``...evaluate``, ``...deploy.export``): find the dataset at ``spec`` in any layout
    (``source``: as the caller found it already), check its videos (unless
    ``check_videos`` is false) and write the usable lists, ``classes.txt``,
    ``report.json`` and ``dataset.json`` (what the loaders need) to ``out_dir``.  The
    user's files are read where they are, never rewritten."""
    source = source or resolve(str(spec))
    report = validate_source(source, out_dir) if check_videos else write_unchecked(source, out_dir)
    if report['rejected_total']:
        log.warning(
            '%d unreadable or mislabelled videos left out, see %s',
            report['rejected_total'],
            out_dir / REPORT_NAME,
        )
    meta = dataset_meta(source, report, str(out_dir))
    (out_dir / LOCAL_META_NAME).write_text(json.dumps(meta, indent=2))
    return meta


def check_mounted(
    meta: DatasetContents, splits: tuple[str, ...] = ('train', 'val'), mount: str | None = None
) -> None:
    """Stop with one line when a split's videos or list are on a path this pod lacks.

    A dataset on a mounted volume (``dataset_uri`` a PVC path) is read where
    it is; a pod without that volume would otherwise fail every read, skip
    every video and stop ~20 reads later with "the dataset is broken".
    ``mount``: where the PVC is expected, for the hint (default
    ``$VIDEO_KD_PVC_MOUNT``, else the chart's ``/cache``).
    """
    for split in splits:
        for where_of in (split_videos_uri, split_list_uri):
            where = where_of(meta, split)
            if where.startswith('s3://') or Path(where).exists():
                continue
            if not mount:
                # deferred: video_kd.backends loads the Kubernetes client
                from video_kd.backends.spec import DEFAULT_PVC_MOUNT

                mount = os.environ.get('VIDEO_KD_PVC_MOUNT') or DEFAULT_PVC_MOUNT
            raise DatasetNotMountedError(
                f'dataset path {where} not found in this pod: is the PVC mounted at '
                f"{mount}? (the chart's persistence.enabled or persistence.existingClaim "
                'mounts it in every step pod and training pod)'
            )


def use_dataset(
    cfg: Config,
    meta: DatasetContents,
    loaders: tuple[str, ...] = tuple(SPLIT_OF_LOADER),
    max_unreadable: float = 0.5,
) -> list[str]:
    """Point ``loaders`` of ``cfg`` at the prepared dataset ``meta``; size the heads.

    Lists and videos stay where they are (``s3://`` or a mounted path).  The
    training and validation loaders skip unreadable videos (counted, logged per
    epoch by ``UnreadableVideosHook``, added to ``custom_hooks``); the test
    loader stops on one.  The evaluate step passes ``loaders=('test_dataloader',)``:
    it reads only val.  Returns the class names.
    """
    s3_fileio.register()
    for name in loaders:
        loader = cfg.get(name)
        if not loader:
            continue
        split = dataset_split(meta, SPLIT_OF_LOADER[name])
        dataset = loader.dataset
        dataset.type = DATASET_TYPE
        dataset.ann_file = split['list_uri']
        dataset.data_prefix = dict(video=split['videos_uri'])
        dataset.max_unreadable = max_unreadable
        dataset.skip_unreadable = name in SKIPPING_LOADERS
        backend = s3_fileio.BACKEND_NAME if split['videos_uri'].startswith('s3://') else 'disk'
        for step in _transforms(dataset.pipeline):
            if step.get('type') == 'DecordInit':
                step['io_backend'] = backend
            elif step.get('type') == 'SeededViews':  # the teacher-logit cache keys by path
                step['root'] = split['videos_uri']
    if set(loaders) & set(SKIPPING_LOADERS):
        hooks = list(cfg.get('custom_hooks') or [])
        if not any(hook.get('type') == SKIP_HOOK_TYPE for hook in hooks):
            hooks.append(dict(type=SKIP_HOOK_TYPE))
        cfg.custom_hooks = hooks
    set_num_classes(cfg.model, len(meta['classes']))
    return list(meta['classes'])


_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_LIST_OF = {
    'train_dataloader': TRAIN_LIST,
    'val_dataloader': VAL_LIST,
    'test_dataloader': VAL_LIST,
}


def set_data_root(cfg: Config, data_root: str | Path) -> list[str]:
    """Point every dataloader at a Kinetics-style root; size the heads to its classes."""
    root = Path(data_root).resolve()
    classes = read_classes(root)
    for name in _DATALOADERS:
        loader = cfg.get(name)
        if not loader:
            continue
        list_file = root / _LIST_OF[name]
        if not list_file.is_file() or not list_file.read_text().strip():
            raise DatasetError(f'{list_file} is missing or empty: no videos to use')
        loader.dataset.ann_file = str(list_file)
        loader.dataset.data_prefix = dict(video=str(root / VIDEO_DIR))
        for transform in loader.dataset.get('pipeline') or []:
            if transform.get('type') == 'SeededViews':  # keys cached logits by path under root
                transform.root = loader.dataset.data_prefix['video']
    set_num_classes(cfg.model, len(classes))
    return classes
