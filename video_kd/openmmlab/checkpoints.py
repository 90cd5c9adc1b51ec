"""Checkpoint files: reading mmengine checkpoints (or bare state dicts) without running
anything they hold, strict state-dict matching, and atomic writes.

Every checkpoint (teacher, baseline, pretrained weights, resume, convert, and mmengine's
own loading through ``video_kd.openmmlab.compat``) is read with
``torch.load(weights_only=True)``: the unpickler builds tensors, containers and the few
types on ``SAFE_GLOBALS`` below, and refuses anything else before it is called.  The list
is what the checkpoints of our pinned stack were observed to hold (MMEngine's
``message_hub`` keeps numpy arrays and scalars in ``HistoryBuffer`` objects, whose
statistics methods are pickled as ``getattr(HistoryBuffer, 'min')``); a file that needs
more is refused in one line naming the type (``UnsafeCheckpointError``).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from video_kd.core.errors import UserError, one_line

# The statistics methods MMEngine's HistoryBuffer pickles by name (its _statistics_methods).
HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
# How torch's weights-only unpickler names what it refused, in its message's words.
_REFUSED = re.compile(
    r"GLOBAL (\S+)|unrecognized function (\S+)|but got <class '([^']+)'>|but got (\S+)"
)
# The numeric numpy dtypes: ``numpy.dtype('f8')`` unpickles to a ``Float64DType``, which
# the unpickler then sets the state of.
_NUMPY_DTYPE_CODES = '?bBhHiIlLqQefdgFDG'


class UnsafeCheckpointError(UserError):
    """A checkpoint that needs a type outside the allow-list: refused, nothing of it ran."""


class UnreadableCheckpointError(UserError):
    """A file that is not a whole PyTorch checkpoint (cut short, not a checkpoint at all)."""


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """``builtins.getattr`` as checkpoints may use it: only ``HistoryBuffer.<statistic>``."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is not HistoryBuffer or name not in HISTORY_BUFFER_STATISTICS:
        raise UnsafeCheckpointError(
            f'getattr({getattr(owner, "__name__", type(owner).__name__)}, {name!r}) is not '
            'allowed in a checkpoint (only HistoryBuffer statistics)'
        )
    return getattr(HistoryBuffer, name)


def safe_globals() -> list[Any]:
    """What MMEngine/MMRazor/MMAction2 checkpoints hold beyond torch's own safe types:
    ``(object, name in the pickle)`` (numpy 1 and numpy 2 spell the module differently)."""
    import importlib

    import numpy
    from mmengine.logging.history_buffer import HistoryBuffer

    name = 'numpy._core.multiarray' if hasattr(numpy, '_core') else 'numpy.core.multiarray'
    multiarray = importlib.import_module(name)
    allowed: list[Any] = [
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_statistic, 'builtins.getattr'),
        (numpy.ndarray, 'numpy.ndarray'),
        (numpy.dtype, 'numpy.dtype'),
    ]
    for code in _NUMPY_DTYPE_CODES:
        dtype_class = type(numpy.dtype(code))
        allowed.append((dtype_class, f'{dtype_class.__module__}.{dtype_class.__qualname__}'))
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed += [
            (multiarray._reconstruct, f'{module}._reconstruct'),
            (multiarray.scalar, f'{module}.scalar'),
        ]
    return allowed


_allowed = False


def allow_checkpoint_globals() -> None:
    """Put ``safe_globals()`` on torch's weights-only allow-list (once per process)."""
    global _allowed
    if not _allowed:
        torch.serialization.add_safe_globals(safe_globals())
        _allowed = True


def load_checkpoint(path: str | Path, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)`` with the allow-list; a file that needs more
    raises ``UnsafeCheckpointError`` naming the type (nothing of it was run)."""
    allow_checkpoint_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f'refusing checkpoint {path}: {error}') from None
    except pickle.UnpicklingError as error:
        found = _REFUSED.search(str(error))
        if not found:
            raise UnreadableCheckpointError(
                f'{path} is not a readable PyTorch checkpoint: {one_line(error)}'
            ) from error
        what = next(g for g in found.groups() if g)
        raise UnsafeCheckpointError(
            f'refusing checkpoint {path}: it holds {what}, which is not on the allow-list of '
            'what checkpoints hold (video_kd.openmmlab.checkpoints.safe_globals); '
            'nothing in it was run'
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        # a file cut short: torch's zip reader ("failed finding central directory"), the
        # legacy unpickler (EOFError), a storage shorter than its tensor
        if isinstance(error, FileNotFoundError):
            raise
        raise UnreadableCheckpointError(
            f'{path} is not a readable PyTorch checkpoint (cut short, corrupt or not a '
            f'checkpoint): {one_line(error).split(". ")[0]}'
        ) from error


def unreadable_reason(path: str | Path) -> str | None:
    """None when ``path`` loads as a checkpoint (weights-only, as training will load it), else
    one line saying why not: a truncated or corrupt file is a result the caller can skip
    (the resume falls back to the checkpoint before), not a traceback."""
    try:
        load_checkpoint(path)
    except (UnreadableCheckpointError, UnsafeCheckpointError) as error:
        return one_line(error)
    return None


def load_checkpoint_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an mmengine checkpoint or of a bare state dict file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'checkpoint {path} does not exist')
    try:
        checkpoint = load_checkpoint(path)
    except (UnsafeCheckpointError, UnreadableCheckpointError):
        raise
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
