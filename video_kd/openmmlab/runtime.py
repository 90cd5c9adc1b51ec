"""What every OpenMMLab process shares: filled registries and the distributed setup."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import video_kd  # noqa: F401  (compat before OpenMMLab)

logger = logging.getLogger(__name__)


@functools.cache
def register_all_modules() -> None:
    """Import mmaction, mmrazor and mmpretrain so their registries are filled."""
    import mmaction.models  # noqa: F401
    import mmrazor.engine
    import mmrazor.models  # noqa: F401
    from mmaction.utils import register_all_modules as register_mmaction

    register_mmaction(init_default_scope=False)


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
