"""Training and evaluation read videos where they are: S3 (streamed) or a mounted volume.

``use_dataset(cfg, meta)`` points a config's data loaders at a prepared
dataset (the Dataset artifact's metadata, see ``dataset_meta``): list files and
video roots may be ``s3://`` URIs or paths on a mounted volume (PVC).  Nothing
is downloaded first: each data loader worker GETs a video when it needs it
(``video_kd.s3_fileio``), so a pod's disk use does not grow with the dataset.

A video that cannot be read during training (deleted since data prep, S3
failing past its retries, undecodable) is skipped and counted in the log; the
epoch goes on.  When more than ``max_unreadable`` of the videos a loader
process read were unreadable, the dataset is broken rather than unlucky, and
training stops with the count.  Evaluation never skips: its metrics must cover
every listed video, so an unreadable one stops it with the object's name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmaction.datasets import VideoDataset
from mmaction.registry import DATASETS
from mmengine.config import Config

from video_kd import s3_fileio
from video_kd.config import set_num_classes
from video_kd.data_check import CLASSES_NAME, LIST_NAMES, REPORT_NAME
from video_kd.data_layout import DatasetSource
from video_kd.errors import UserError, one_line

log = logging.getLogger(__name__)

DATASET_TYPE = 'StreamingVideoDataset'
SPLIT_OF_LOADER = {'train_dataloader': 'train', 'val_dataloader': 'val', 'test_dataloader': 'val'}
MIN_READS_BEFORE_STOP = 20  # a few bad videos early on must not look like "most of them"


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


def _original_message(message: str) -> str:
    if not message.startswith('Caught ') or 'Traceback' not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(': ', 1)[1] if ': ' in last else last


@DATASETS.register_module()
class StreamingVideoDataset(VideoDataset):
    """MMAction2's ``VideoDataset`` that skips (and counts) unreadable videos in training."""

    def __init__(self, *args, max_unreadable: float = 0.5, **kwargs) -> None:
        self.max_unreadable = max_unreadable
        self.reads = 0
        self.unreadable = 0
        super().__init__(*args, **kwargs)

    def prepare_data(self, idx: int) -> Any:
        try:
            data = super().prepare_data(idx)
        except LoaderError:
            raise
        except Exception as error:  # S3Error, OSError, decord's DECORDError...
            return self._unreadable(idx, error)
        self.reads += 1
        return data

    def _unreadable(self, idx: int, error: Exception) -> None:
        filename = self.get_data_info(idx)['filename']
        reason = one_line(error)
        if self.test_mode:  # an S3 error's message already names the object
            named = reason.startswith('cannot ') and filename in reason
            message = reason if named else f'cannot read {filename}: {reason}'
            raise VideoReadError(message) from error
        self.reads += 1
        self.unreadable += 1
        log.warning(
            'skipped %s: %s (%d of %d videos unreadable in this loader process)',
            filename,
            reason,
            self.unreadable,
            self.reads,
        )
        if (
            self.reads >= MIN_READS_BEFORE_STOP
            and self.unreadable > self.max_unreadable * self.reads
        ):
            raise DatasetUnreadableError(
                f'{self.unreadable} of {self.reads} videos read by a data loader process could '
                f'not be read (more than {self.max_unreadable:.0%}): the dataset is broken; '
                f'last: {filename}: {reason}'
            )
        return None  # mmengine's BaseDataset then draws another index


def dataset_meta(source: DatasetSource, report: dict, data_uri: str) -> dict[str, Any]:
    """The Dataset artifact's metadata: what ``use_dataset`` needs, and the counts.

    ``data_uri`` is where data prep published ``validate_source``'s output
    (the run's ``data/`` directory, s3:// or local).
    """
    from video_kd import s3

    join = s3.join_uri if data_uri.startswith('s3://') else _path_join
    splits = {
        entry['split']: {
            'list_uri': join(data_uri, LIST_NAMES[entry['split']]),
            'videos_uri': entry['videos_uri'],
            'num_videos': entry['valid'],
            'rejected': len(entry['rejected']),
        }
        for entry in report['splits']
    }
    return {
        'source': source.root,
        'layout': source.layout,
        'classes': source.classes,
        'num_classes': len(source.classes),
        'splits': splits,
        'classes_uri': join(data_uri, CLASSES_NAME),
        'report_uri': join(data_uri, REPORT_NAME),
        'num_train': splits['train']['num_videos'],
        'num_val': splits['val']['num_videos'],
        'rejected': report['rejected_total'],
        'videos_uri': splits['train']['videos_uri'],  # what the teacher-logit cache keys on
    }


def _path_join(root: str, name: str) -> str:
    return f'{root.rstrip("/")}/{name}'


def _transforms(pipeline: list) -> list:
    """Every transform of a pipeline, those wrapped by another (SeededViews) included."""
    found = []
    for step in pipeline:
        found.append(step)
        found.extend(_transforms(step.get('transforms') or []))
    return found


def use_test_data(cfg: Config, data: str | Path | dict[str, Any]) -> list[str]:
    """Point ``cfg``'s test loader at ``data``: a prepared dataset's metadata (its val split,
    streamed where it is) or a local dataset root; returns the class names."""
    if isinstance(data, dict):
        return use_dataset(cfg, data, loaders=('test_dataloader',))
    from video_kd.runtime import set_data_root

    return set_data_root(cfg, data)


def use_dataset(
    cfg: Config,
    meta: dict[str, Any],
    loaders: tuple[str, ...] = tuple(SPLIT_OF_LOADER),
    max_unreadable: float = 0.5,
) -> list[str]:
    """Point ``loaders`` of ``cfg`` at the prepared dataset ``meta``; size the heads.

    Lists and videos stay where they are (``s3://`` or a mounted path).  The
    evaluate step passes ``loaders=('test_dataloader',)``: it reads only val.
    Returns the class names.
    """
    s3_fileio.register()
    for name in loaders:
        loader = cfg.get(name)
        if not loader:
            continue
        split = meta['splits'][SPLIT_OF_LOADER[name]]
        dataset = loader.dataset
        dataset.type = DATASET_TYPE
        dataset.ann_file = split['list_uri']
        dataset.data_prefix = dict(video=split['videos_uri'])
        dataset.max_unreadable = max_unreadable
        backend = s3_fileio.BACKEND_NAME if split['videos_uri'].startswith('s3://') else 'disk'
        for step in _transforms(dataset.pipeline):
            if step.get('type') == 'DecordInit':
                step['io_backend'] = backend
            elif step.get('type') == 'SeededViews':  # the teacher-logit cache keys by path
                step['root'] = split['videos_uri']
    set_num_classes(cfg.model, len(meta['classes']))
    return list(meta['classes'])
