"""Entry point of every training process: ``torchrun -m video_kd.distill.train_pod CONFIG_URI ...``.

A PyTorchJob / TrainJob pod (and the train step's local mode) runs this
under ``torchrun``.  Rank 0 of each pod fetches the run's inputs from S3 —
the resolved training config the train step wrote (``<run>/train/config.py``),
the teacher and the dataset's cleaned train/val lists — and the run's last good checkpoint
if there is one, so a restarted pod resumes; the other ranks of the pod wait for it.  Each
of them,
and the dataset metadata, is checked against the sha256 the run's manifest
records before anything reads it (the config is Python, executed by
``Config.fromfile``); an object the manifest does not record is refused.
The videos are not downloaded: the data loaders stream each one from S3 (or
read it from a mounted volume) when they need it, so a pod's disk does not
grow with the dataset.  A dataset on a mounted path this pod lacks (no PVC
mounted) stops every rank at once, in one line (``data_stream.check_mounted``),
rather than after a score of skipped videos.  Then every rank trains with the
mmengine Runner while ``S3CheckpointHook`` uploads each checkpoint as soon as
it is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import cast

from video_kd.core.artifacts import Dataset
from video_kd.core.errors import run_cli, setup_logging
from video_kd.core.process import die_with_parent
from video_kd.data.data_stream import check_mounted, use_dataset
from video_kd.distill import train_config
from video_kd.distill.s3_hook import fetch_resume_checkpoint
from video_kd.distill.train import train
from video_kd.openmmlab.runtime import is_main_process, wait_for_file
from video_kd.runs import Manifest, RunLayout, fetch_recorded, read_recorded_json

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='torchrun ... -m video_kd.distill.train_pod',
        description="Training entry point of a PyTorchJob pod (and of local mode): fetch the run's "
        'resolved config, data and teacher from S3, resume from its last checkpoint in S3, '
        'train, upload every checkpoint as it is written.',
    )
    parser.add_argument('config', help="s3:// URI of the run's resolved config (train/config.py)")
    parser.add_argument('--run-root', required=True, help="the run's s3:// directory")
    parser.add_argument('--data-meta', required=True, help='s3:// URI of data/dataset.json')
    parser.add_argument('--teacher', required=True, help='s3:// URI of the teacher checkpoint')
    parser.add_argument(
        '--teacher-sha256',
        default='',
        help="its sha256, checked after download (and the run manifest's, always)",
    )
    parser.add_argument('--work-dir', required=True, help='local working directory of this pod')
    return parser.parse_args(argv)


def fetch_inputs(args: argparse.Namespace, layout: RunLayout, inputs: Path, train_dir: Path) -> str:
    """Rank 0 of a pod: config, teacher and the checkpoint to resume from, if any, each
    checked against the run manifest's sha256 (a checkpoint that fails it, or fails to load,
    is skipped for the one before: ``fetch_resume_checkpoint``; the videos are not downloaded: the data
    loaders stream them, see video_kd.data.data_stream)."""
    inputs.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(layout)
    fetch_recorded(manifest, args.config, inputs / train_config.CONFIG_NAME)
    fetch_recorded(manifest, args.teacher, inputs / 'teacher.pth', args.teacher_sha256)
    resume = fetch_resume_checkpoint(layout, train_dir)  # the newest good one, if any
    if not resume:
        return ''
    last, ckpt = resume
    (train_dir / 'last_checkpoint').write_text(str(ckpt.resolve()))
    log.info('resuming from %s (downloaded from %s)', ckpt.name, last.uri)
    return last.uri


LISTS_DIR = 'lists'


def fetch_lists(manifest: Manifest, data_meta: Dataset, inputs: Path) -> None:
    """The cleaned train/val lists, downloaded into ``inputs/lists/`` and checked against the
    sha256s the run manifest records (a list names the videos training reads: one changed
    since data prep is refused, as the config and the teacher are)."""
    for split, record in data_meta['splits'].items():
        fetch_recorded(manifest, record['list_uri'], _local_list(inputs, split))


def _local_list(inputs: Path, split: str) -> Path:
    return inputs / LISTS_DIR / f'{split}_list.txt'


def use_checked_lists(data_meta: Dataset, inputs: Path) -> Dataset:
    """``data_meta`` with each split's list at its checked copy (``fetch_lists``)."""
    splits = {
        split: {**record, 'list_uri': str(_local_list(inputs, split))}
        for split, record in data_meta['splits'].items()
    }
    return cast(Dataset, {**data_meta, 'splits': splits})


def main(argv: list[str] | None = None) -> int:
    if 'TORCHELASTIC_RUN_ID' in os.environ:  # under torchrun: a killed torchrun takes us along
        die_with_parent(signal.SIGTERM, os.getppid())
    args = parse_args(argv)
    setup_logging()
    layout = RunLayout.from_root(args.run_root)
    manifest = Manifest.load(layout)  # what the pod reads back is checked against it
    data_meta: Dataset = read_recorded_json(manifest, args.data_meta)
    check_mounted(data_meta)  # a PVC dataset in a pod without the PVC: one line, not 20 skips
    work = Path(args.work_dir)
    inputs, train_dir = work / 'inputs', work / 'mmengine'
    ready = inputs / '.ready'
    if int(os.environ.get('LOCAL_RANK', '0')) == 0:  # one download per node (pod)
        ready.parent.mkdir(parents=True, exist_ok=True)
        resumed = fetch_inputs(args, layout, inputs, train_dir)
        fetch_lists(manifest, data_meta, inputs)
        ready.write_text(resumed)
    else:
        wait_for_file(ready)
    cfg = train_config.load_resolved(inputs / train_config.CONFIG_NAME)
    hooks = list(cfg.get('custom_hooks') or [])
    hooks.append(dict(type='S3CheckpointHook', run_root=layout.root, priority='LOWEST'))
    cfg.custom_hooks = hooks
    train_config.localize(
        cfg,
        work_dir=train_dir,
        teacher_ckpt=inputs / 'teacher.pth',
        resume='auto' if ready.read_text() else None,
    )
    # the lists as checked against the manifest (fetch_lists); the videos where they are
    use_dataset(cfg, use_checked_lists(data_meta, inputs))

    runner = train(cfg)
    if is_main_process():
        log.info('done: checkpoints in %s/', layout.uri('train', 'checkpoints'))
    del runner
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
