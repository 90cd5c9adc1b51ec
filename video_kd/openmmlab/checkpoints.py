"""Checkpoint files: reading mmengine checkpoints (or bare state dicts), strict
state-dict matching, and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from video_kd.core.errors import UserError


def load_checkpoint_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an mmengine checkpoint or of a bare state dict file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise UserError(
            f'{path} is not a readable PyTorch checkpoint: {str(error).splitlines()[0]}'
        ) from error
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f'{path} holds no state dict')
    return state, dict(checkpoint.get('meta') or {})


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(path)[0]


def state_dict_mismatch(expected: dict, loaded: dict, limit: int = 3) -> str | None:
    """None if loaded fits expected exactly, else a one-line description of how not."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    shapes = sorted(
        key
        for key in set(expected) & set(loaded)
        if tuple(expected[key].shape) != tuple(loaded[key].shape)
    )
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for label, keys in (
        ('missing', missing),
        ('unexpected', unexpected),
        ('shape mismatch', shapes),
    ):
        if keys:
            parts.append(f'{len(keys)} {label} (e.g. {", ".join(keys[:limit])})')
    return '; '.join(parts)


def save_checkpoint(checkpoint: dict, path: Path) -> Path:
    """``torch.save`` atomically: a reader (another rank, a retried step) never sees half a
    file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.part')
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
