"""``--cfg-options``: parsed one way everywhere and checked against the resolved config.

Also the resolved config's values that mmengine or PyTorch would refuse only when the
training processes build the runner (``check_config_values``): a batch size of 0 from a
config file or an option is one line in ``check inputs``, not a failed training pod.

A list of ``key=value`` strings (one form everywhere: the pipeline parameter is a list,
the CLIs take one item per argument), each key a path that exists in the *resolved*
config at every depth, or an argument the ``type`` of its dict accepts; a miss is refused
with the nearest valid name.  Values are Python literals or plain text, spaces kept
(``parse_cfg_value``).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.registry import Registry

from video_kd.core.checks import InvalidInputError
from video_kd.openmmlab.config import load_config
from video_kd.openmmlab.runtime import register_all_modules

_KEY_PART = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*\Z|^\d+\Z')


# Top-level keys the mmengine Runner (and this project) read although a config may not set them.
RUNNER_KEYS = frozenset(
    {
        'work_dir',
        'experiment_name',
        'launcher',
        'randomness',
        'custom_hooks',
        'custom_imports',
        'model_wrapper_cfg',
        'resume',
        'load_from',
        'env_cfg',
        'log_level',
        'default_scope',
        'auto_scale_lr',
        'visualizer',
        'log_processor',
        'allow_pretrained_download',  # video_kd.openmmlab.config
        'teacher_logit_cache',  # video_kd.distill.logit_cache
        'score_frozen_teacher_once',  # video_kd.distill.teacher_val
    }
)


# Children of keys a config usually leaves unset: what their readers accept.
KNOWN_CHILDREN = {
    'teacher_logit_cache': frozenset({'num_views', 'seed'}),
    'randomness': frozenset({'seed', 'deterministic', 'diff_rank_seed'}),
}


_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


# --------------------------------------------------------------------------- --cfg-options
def parse_cfg_options(options: Iterable[str]) -> dict[str, str]:
    """``['a.b=1', 'c=x y']`` -> ``{'a.b': '1', 'c': 'x y'}`` (values as written; see
    ``parse_cfg_value``); a malformed item is refused."""
    parsed = {}
    for item in options:
        key, sep, value = str(item).partition('=')
        key = key.strip()
        if not sep or not key:
            raise InvalidInputError(
                f'--cfg-options {item!r}: expected key=value, e.g. optim_wrapper.optimizer.lr=0.01'
            )
        bad = [part for part in key.split('.') if not _KEY_PART.match(part)]
        if bad:
            raise InvalidInputError(
                f'--cfg-options {item!r}: {bad[0]!r} is not a config key '
                '(dotted names of letters, digits and _, or list indices)'
            )
        parsed[key] = value
    return parsed


def parse_cfg_value(text: str) -> Any:
    """One ``--cfg-options`` value: a Python literal when it is one (``0.1``, ``'a b'``,
    ``[1, 2]``, ``None``; quotes stripped once); else mmengine's own forms for a bracketed
    list or a value without spaces (``[a, b]``, ``a,b``, ``true``); else the text as
    written (``/a b`` stays ``/a b``, where mmengine's parser would drop the space)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    stripped = text.strip()
    bracketed = stripped[:1] in ('[', '(') and stripped[-1:] in (']', ')')
    if not bracketed and any(char.isspace() for char in text):
        return text
    return DictAction._parse_iterable(text)


def check_cfg_options(
    cfg: Config | Mapping[str, Any], options: Sequence[str] | Mapping[str, Any]
) -> dict[str, Any]:
    """Refuse any ``--cfg-options`` key the resolved config ``cfg`` cannot take.

    ``options`` is a list of ``key=value`` strings or an mmengine DictAction
    dict.  Returns the options as a dict.  A key is valid when every part of
    its path exists in the config (list indices included), or when the part is
    an argument that the ``type`` of its dict accepts (``optimizer.eps`` for
    ``AdamW``), or when the options also replace that dict's ``type``.
    """
    parsed = dict(options) if isinstance(options, Mapping) else parse_cfg_options(options)
    tree = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    retyped = {k[: -len('.type')] for k in parsed if k.endswith('.type')}
    for key in parsed:
        _check_key(tree, key, retyped)
    return parsed


def _check_key(tree: dict, key: str, retyped: set[str]) -> None:
    node: Any = tree
    parts = key.split('.')
    for depth, part in enumerate(parts):
        here = '.'.join(parts[:depth]) or 'the config'
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InvalidInputError(
                    f'--cfg-options {key}: {here} is a list of {len(node)}; '
                    f'{part!r} is not an index of it (0-{len(node) - 1})'
                )
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise InvalidInputError(
                f'--cfg-options {key}: {here} is {type(node).__name__} {node!r}, it has no keys'
            )
        if part in node:
            node = node[part]
            continue
        if _accepted_anyway(node, parts[:depth], part, retyped):
            return
        raise InvalidInputError(
            f'--cfg-options {key}: no key {part!r} in {here}'
            + _did_you_mean(node, parts[:depth], part)
        )


def _accepted_anyway(node: dict, path: list[str], part: str, retyped: set[str]) -> bool:
    """A key the config does not set but its reader takes."""
    if '.'.join(path) in retyped:
        return True  # a new type: its own arguments
    if not path:
        return part in RUNNER_KEYS
    if path[0] in KNOWN_CHILDREN and len(path) == 1:
        return part in KNOWN_CHILDREN[path[0]]
    return any(params is None or part in params for params in _reader_arguments(node, path))


def _did_you_mean(node: dict, path: list[str], part: str) -> str:
    candidates = set(node)
    if not path:
        candidates |= RUNNER_KEYS
    elif path[0] in KNOWN_CHILDREN and len(path) == 1:
        candidates |= KNOWN_CHILDREN[path[0]]
    for params in _reader_arguments(node, path):
        candidates |= params or set()
    close = difflib.get_close_matches(part, sorted(candidates), n=1, cutoff=0.6)
    if close:
        return f' (did you mean {".".join([*path, close[0]])!r}?)'
    return f'; it has {", ".join(sorted(candidates)[:12])}'


def _reader_arguments(node: dict, path: list[str]) -> list[set[str] | None]:
    """Argument names of what reads this dict (None: it takes **kwargs, anything goes)."""
    readers = []
    if 'type' in node:
        readers = _registered(node['type'])
    elif len(path) == 1 and path[0] in _DATALOADERS:
        from torch.utils.data import DataLoader

        readers = [DataLoader]
    elif path == ['optim_wrapper']:
        from mmengine.optim import OptimWrapper

        readers = [OptimWrapper]
    return [_arguments(reader) for reader in readers]


def _arguments(reader: Callable[..., Any]) -> set[str] | None:
    """Named arguments of ``reader``; through ``**kwargs`` into its bases' ``__init__``.

    OpenMMLab classes pass ``**kwargs`` on to their base class (a head to
    ``BaseHead``), so the union along the MRO up to the first ``__init__``
    without ``**kwargs`` is what the class accepts.  None: no such bound.
    """
    inits = (
        [vars(k)['__init__'] for k in reader.__mro__ if '__init__' in vars(k)]
        if isinstance(reader, type)
        else [reader]
    )
    names = {'type', '_scope_'}
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {
            p.name
            for p in parameters
            if p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        if all(p.kind is not p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _registered(type_name: Any) -> list:
    """Every class registered as ``type_name`` in the OpenMMLab registries."""
    if not isinstance(type_name, str):
        return [type_name] if callable(type_name) else []
    register_all_modules()
    name = type_name.rsplit('.', 1)[-1]
    found = []
    for registry in _registries():
        try:
            cls = registry.get(name)
        except Exception:  # a registry that cannot import a lazily registered module
            cls = None
        if cls is not None and cls not in found:
            found.append(cls)
    return found


def _registries() -> list:
    found: list[Any] = []
    for module in (
        'mmengine.registry',
        'mmaction.registry',
        'mmrazor.registry',
        'mmpretrain.registry',
    ):
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            continue
        found.extend(v for v in vars(loaded).values() if isinstance(v, Registry))
    return found


# --------------------------------------------------------------------------- values
# Numbers of the resolved config that mmengine or PyTorch refuse (or misbehave with) when the
# runner is built in the training pods, checked where set: (key path, whole number?, minimum,
# minimum excluded?).  A missing key is the reader's default, a valid one.
VALUE_RULES: tuple[tuple[str, bool, float, bool], ...] = (
    *((f'{loader}.batch_size', True, 1, False) for loader in _DATALOADERS),
    *((f'{loader}.num_workers', True, 0, False) for loader in _DATALOADERS),
    *((f'{loader}.prefetch_factor', True, 1, False) for loader in _DATALOADERS),
    ('train_cfg.max_epochs', True, 1, False),
    ('train_cfg.max_iters', True, 1, False),
    ('train_cfg.val_interval', True, 1, False),
    ('train_cfg.val_begin', True, 1, False),
    ('optim_wrapper.accumulative_counts', True, 1, False),
    ('optim_wrapper.optimizer.lr', False, 0, False),  # 0: frozen weights, as PyTorch allows
    ('optim_wrapper.optimizer.weight_decay', False, 0, False),
    ('optim_wrapper.optimizer.momentum', False, 0, False),
    ('optim_wrapper.optimizer.eps', False, 0, False),
    ('optim_wrapper.clip_grad.max_norm', False, 0, True),
    ('default_hooks.logger.interval', True, 1, False),
    ('auto_scale_lr.base_batch_size', True, 1, False),
)
_MISSING = object()


def check_config_values(cfg: Config | Mapping[str, Any], where: str = 'the config') -> None:
    """Refuse the resolved config's values that would fail the runner's build
    (``VALUE_RULES``, Adam's ``betas`` in [0, 1), ``persistent_workers`` without workers,
    a scheduler whose ``end`` is not after its ``begin``): one line naming the key, the
    value and the rule.  Run on the resolved config, so values from the config files and
    from ``--cfg-options`` alike are checked, in ``check inputs`` and before the train
    step publishes ``train/config.py``."""
    tree = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    for key, whole, minimum, strict in VALUE_RULES:
        value = _get(tree, key)
        if value is not _MISSING:
            _check_value(where, key, value, whole, minimum, strict)
    betas = _get(tree, 'optim_wrapper.optimizer.betas')
    if betas is not _MISSING and (
        not isinstance(betas, list | tuple)
        or len(betas) != 2
        or not all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise InvalidInputError(
            f'{where}: optim_wrapper.optimizer.betas must be two numbers in [0, 1), got {betas!r}'
        )
    for loader in _DATALOADERS:
        workers = _get(tree, f'{loader}.num_workers')
        if _get(tree, f'{loader}.persistent_workers') is True and workers == 0:
            raise InvalidInputError(
                f'{where}: {loader}.persistent_workers=True needs {loader}.num_workers >= 1 '
                f'(PyTorch refuses it with 0); set {loader}.persistent_workers=False'
            )
    schedulers = tree.get('param_scheduler') or []
    for index, scheduler in enumerate(schedulers if isinstance(schedulers, list) else [schedulers]):
        if not isinstance(scheduler, dict):
            continue
        begin, end = scheduler.get('begin', 0), scheduler.get('end')
        if _is_number(begin) and _is_number(end) and end <= begin:
            raise InvalidInputError(
                f'{where}: param_scheduler.{index} ({scheduler.get("type", "?")}) ends at '
                f'{end}, not after its begin {begin}: mmengine refuses it'
            )


def _get(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(
    where: str, key: str, value: Any, whole: bool, minimum: float, strict: bool
) -> None:
    if value is None and key.endswith(('.clip_grad.max_norm', '.prefetch_factor')):
        return  # their readers' "not set"
    kind = 'a whole number' if whole else 'a number'
    ok_type = _is_number(value) and (not whole or isinstance(value, int))
    bound = f'> {minimum:g}' if strict else f'>= {minimum:g}'
    if not ok_type or (value <= minimum if strict else value < minimum):
        raise InvalidInputError(f'{where}: {key} must be {kind} {bound}, got {value!r}')


def checked_cfg_options(config: str | Path, items: list[str]) -> dict:
    """``--cfg-options`` items as ``load_config`` overrides, after every check (training and
    evaluation alike): malformed items and keys the config lacks at any depth are refused
    with the nearest valid name (``check_cfg_options``); values parsed by
    ``parse_cfg_value`` (spaces kept)."""
    raw = parse_cfg_options(items)
    if raw:  # every key must exist in the config (at any depth): typos are refused
        register_all_modules()
        # a key check: the offline warnings come with the config that is used
        check_cfg_options(load_config(config, warn_offline=False), raw)
    return {key: parse_cfg_value(value) for key, value in raw.items()}
