"""What every training process shares: OpenMMLab registries, data roots, the distributed setup."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from mmengine.config import Config

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.data import dataset
from video_kd.openmmlab.config import set_num_classes

logger = logging.getLogger(__name__)

_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
_LIST_OF = {
    'train_dataloader': dataset.TRAIN_LIST,
    'val_dataloader': dataset.VAL_LIST,
    'test_dataloader': dataset.VAL_LIST,
}


@functools.cache
def register_all_modules() -> None:
    """Import mmaction, mmrazor and mmpretrain so their registries are filled."""
    import mmaction.models  # noqa: F401
    import mmrazor.engine
    import mmrazor.models  # noqa: F401
    from mmaction.utils import register_all_modules as register_mmaction

    register_mmaction(init_default_scope=False)


def set_data_root(cfg: Config, data_root: str | Path) -> list[str]:
    """Point every dataloader at a Kinetics-style root; size the heads to its classes."""
    root = Path(data_root).resolve()
    classes = dataset.read_classes(root)
    for name in _DATALOADERS:
        loader = cfg.get(name)
        if not loader:
            continue
        list_file = root / _LIST_OF[name]
        if not list_file.is_file() or not list_file.read_text().strip():
            raise dataset.DatasetError(f'{list_file} is missing or empty: no videos to use')
        loader.dataset.ann_file = str(list_file)
        loader.dataset.data_prefix = dict(video=str(root / dataset.VIDEO_DIR))
        for transform in loader.dataset.get('pipeline') or []:
            if transform.get('type') == 'SeededViews':  # keys cached logits by path under root
                transform.root = loader.dataset.data_prefix['video']
    set_num_classes(cfg.model, len(classes))
    return classes


def dist_backend() -> str:
    """nccl on GPUs, gloo on the CPU: the same code runs on both."""
    import torch

    return 'nccl' if torch.cuda.is_available() else 'gloo'


def init_cpu_process_group(launcher: str) -> None:
    """Start gloo ourselves on CPU-only machines.

    mmengine's init_dist calls torch.cuda.set_device unconditionally, which a
    CPU build of torch rejects; the Runner skips init_dist when a process
    group already exists.  On GPUs mmengine does it all (nccl).
    """
    import torch
    import torch.distributed as dist

    if launcher == 'pytorch' and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend='gloo')


def launcher_from_env() -> str:
    """'pytorch' when started by torchrun (or a PyTorchJob pod), else 'none'."""
    return (
        'pytorch'
        if int(os.environ.get('WORLD_SIZE', '1')) > 1 and 'LOCAL_RANK' in os.environ
        else 'none'
    )


def wait_for_file(path: Path, timeout: float = 3600) -> None:
    """Block until rank 0 has written `path` (other ranks must not race ahead of it)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f'rank {os.environ.get("RANK")} waited {timeout:.0f}s for {path}')
        time.sleep(0.5)


def is_main_process() -> bool:
    return int(os.environ.get('RANK', '0')) == 0
