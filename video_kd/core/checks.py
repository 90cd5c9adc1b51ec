"""Check every user input before anything is written: one line each, exit status 2.

Steps and CLIs call these first, so that bad input never reaches a download,
a claim in S3 or a training pod.  Each check raises ``InvalidInputError`` (a
``UserError``: ``error: ...`` and exit status 2 under ``errors.run_cli``) that
names the input, what was wrong and what would be right.

* run ids: ``RUN_ID_PATTERN``, a lowercase DNS label (1-63 of ``a-z 0-9 -``,
  starting and ending alphanumeric), not ``cache`` (the shared cache's
  directory).  A run id becomes an S3 directory, a PyTorchJob name and a
  Kubernetes label value; this one pattern is valid as all three.
* checksums: 64 hex digits (upper case accepted, lower case returned).
* ``--cfg-options``: a list of ``key=value`` strings (one form everywhere: the
  pipeline parameter is a list, the CLIs take one item per argument), each key
  a path that exists in the *resolved* config at every depth, or an argument
  the ``type`` of its dict accepts; a miss is refused with the nearest valid
  name.  Values are Python literals or plain text, spaces kept
  (``parse_cfg_value``).
* numbers: ranges (``max_epochs >= 0``, ``num_workers >= 1``, the export's
  ``tolerance >= 0`` and ``speed_repeats`` 0-1000, ...).
* backends: a training mode that can run here (a Kubernetes API for
  ``pytorchjob``, a GPU for GPU workers in ``local`` mode).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video_kd.core.errors import UserError

if TYPE_CHECKING:
    from mmengine.config import Config

RUN_ID_PATTERN = re.compile(r'^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$')
RESERVED_RUN_IDS = frozenset({'cache'})
RUN_ID_RULE = (
    'a run id is 1-63 lowercase letters, digits and hyphens, starting and ending with '
    'a letter or digit (a DNS label), and not "cache"'
)
_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_BUCKET = re.compile(r'^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')
_KEY_PART = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$|^\d+$')

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
    }
)
# Children of keys a config usually leaves unset: what their readers accept.
KNOWN_CHILDREN = {
    'teacher_logit_cache': frozenset({'num_views', 'seed'}),
    'randomness': frozenset({'seed', 'deterministic', 'diff_rank_seed'}),
}
_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class InvalidInputError(UserError, ValueError):
    """A user input that fails its check; the message says which and why.

    Also a ``ValueError``, so code that guarded a check with ``except ValueError``
    keeps working.
    """


# --------------------------------------------------------------------------- identifiers
def check_run_id(run_id: str) -> str:
    """``run_id`` if it follows ``RUN_ID_PATTERN``; else one line that gives the rule."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise InvalidInputError(f'bad run id {run_id!r}: {RUN_ID_RULE}')
    if run_id in RESERVED_RUN_IDS:
        raise InvalidInputError(
            f'bad run id {run_id!r}: it names the shared cache directory; {RUN_ID_RULE}'
        )
    return run_id


def run_id_from(text: str) -> str:
    """A valid run id made from free text (a KFP job id, a timestamp): lowercased, squeezed."""
    cleaned = re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')[:63].rstrip('-')
    return check_run_id(cleaned or 'run')


def check_sha256(value: str | None, name: str = '--sha256', required: bool = False) -> str:
    """A SHA-256 as 64 lowercase hex digits; '' when empty and not ``required``."""
    text = (value or '').strip().lower()
    if not text:
        if required:
            raise InvalidInputError(f'{name} is required: the 64 hex digits of the SHA-256')
        return ''
    if not _SHA256.match(text):
        raise InvalidInputError(
            f'{name} {value!r} is not a SHA-256: expected 64 hex digits (0-9, a-f), '
            f'got {len(text)} characters' + ('' if len(text) != 64 else ' with non-hex ones')
        )
    return text


def check_bucket(name: str) -> str:
    """An S3 bucket name: 3-63 of ``a-z 0-9 . -``, starting and ending alphanumeric."""
    if not isinstance(name, str) or not _BUCKET.match(name) or '..' in name:
        raise InvalidInputError(
            f'bad bucket name {name!r}: 3-63 lowercase letters, digits, dots and hyphens, '
            'starting and ending with a letter or digit'
        )
    return name


# --------------------------------------------------------------------------- numbers
def check_range(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None
) -> int:
    """``value`` as an int within [minimum, maximum]; the message names the input."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInputError(f'{name} must be a whole number, got {value!r}')
    try:
        number = int(value)
    except ValueError:
        raise InvalidInputError(f'{name} must be a whole number, got {value!r}') from None
    if minimum is not None and number < minimum:
        raise InvalidInputError(f'{name} must be >= {minimum:g}, got {number}')
    if maximum is not None and number > maximum:
        raise InvalidInputError(f'{name} must be <= {maximum:g}, got {number}')
    return number


def check_number(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float within [minimum, maximum]; the message names the input."""
    if isinstance(value, bool):
        raise InvalidInputError(f'{name} must be a number, got {value!r}')
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(number):
        raise InvalidInputError(f'{name} must be a finite number, got {value!r}')
    if minimum is not None and number < minimum:
        raise InvalidInputError(f'{name} must be >= {minimum:g}, got {number:g}')
    if maximum is not None and number > maximum:
        raise InvalidInputError(f'{name} must be <= {maximum:g}, got {number:g}')
    return number


# --------------------------------------------------------------------------- backends
def check_backend_name(backend: str) -> str:
    """``backend`` if it names a training backend; else one line that lists them."""
    from video_kd.backends import BACKENDS  # the one list (imported late: it loads kubernetes)

    if backend not in BACKENDS:
        raise InvalidInputError(
            f'training_backend {backend!r}: expected '
            + ', '.join(f'"{name}"' for name in BACKENDS[:-1])
            + f' or "{BACKENDS[-1]}"'
        )
    return backend


def check_train_backend(backend: str, gpus_per_worker: int = 0) -> None:
    """The training backend can run from here: a Kubernetes API, or local GPUs if asked for."""
    check_backend_name(backend)
    if backend != 'local':
        if os.environ.get('KUBERNETES_SERVICE_HOST'):
            return  # in a pod: the in-cluster config
        kubeconfig = os.environ.get('KUBECONFIG') or str(Path.home() / '.kube' / 'config')
        if not any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
            raise InvalidInputError(
                f'training_backend "{backend}" needs a Kubernetes API: run in the cluster or '
                f'set KUBECONFIG (no kubeconfig at {kubeconfig}); or use training_backend "local"'
            )
    elif gpus_per_worker > 0:
        import torch

        if torch.cuda.device_count() < gpus_per_worker:
            raise InvalidInputError(
                f'gpus_per_worker={gpus_per_worker} in local mode, but this machine has '
                f'{torch.cuda.device_count()} GPUs; use gpus_per_worker=0 (CPU)'
            )


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
    from mmengine.config import DictAction

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
    from video_kd.openmmlab.runtime import register_all_modules

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
    import importlib

    from mmengine.registry import Registry

    found = []
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


# --------------------------------------------------------------------------- a run's parameters
# The pipeline parameters whose checks need only the value itself or another parameter; the
# rest (s3_prefix, image, reencode, the cluster object names) have nothing to check.
SHA256_PARAMETERS = ('teacher_sha256', 'baseline_sha256', 'student_pretrained_sha256')
LAUNCH_PARAMETERS = ('num_workers', 'gpus_per_worker', 'nproc_per_node', 'backoff_limit_per_node')


def check_pipeline_params(params: Mapping[str, Any], backend_here: bool = False) -> None:
    """Every step's own checks on a run's pipeline parameters, at once and before anything
    is submitted or written: without it a training option fails only when the train step
    starts (after data prep, an hour at Kinetics scale) and an export setting only after
    the whole training.

    ``params``: pipeline arguments by name, typed (the compiled defaults merged with the
    user's: ``video-kd submit`` / ``schedule``; all of them: the pipeline's ``check-inputs``
    step).  A parameter that is absent is not checked.  The checks are the steps' own
    (``steps.data_prep``, ``steps.teacher``, ``steps.train``, ``steps.evaluate``,
    ``steps.export``), so a value passes here exactly when its step would take it.
    ``backend_here``: training runs from this machine (``run-local``), so its backend must
    be able to run here (``check_train_backend``); otherwise only the name is checked, as
    a laptop that submits needs no Kubernetes API and the check-inputs pod lacks the
    training ConfigMap that names the chart's backend.
    """
    import dataclasses

    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import data_prep, evaluate, export, teacher, train

    if params.get('run_id'):
        check_run_id(params['run_id'])
    if 's3_bucket' in params:
        check_bucket(params['s3_bucket'])
    if 'dataset_uri' in params:
        data_prep.check_dataset_uri(params['dataset_uri'])
    for name in SHA256_PARAMETERS:
        if name in params:
            check_sha256(params[name], name)
    if 'teacher_url' in params:
        teacher.check_source(params['teacher_url'], params.get('teacher_sha256', ''))
    if 'baseline_url' in params:
        evaluate.check_baseline(params['baseline_url'], params.get('student_config', ''))
    train.check_launch(**{name: params[name] for name in LAUNCH_PARAMETERS if name in params})
    backend = params.get('training_backend')
    if backend_here:
        from video_kd import backends

        check_train_backend(backends.backend_from_env(backend or ''),
                            params.get('gpus_per_worker', 0))  # fmt: skip
    elif backend:  # empty: the chart's training.backend, known only to the train step's pod
        check_backend_name(backend)
    fields = {field.name for field in dataclasses.fields(TrainOptions)}
    given = {name: params[name] for name in fields if name in params}
    if 'max_epochs' in given:
        check_range('max_epochs', given['max_epochs'])  # a whole number; TrainOptions: >= 0
    options = TrainOptions(**given)
    if params.get('kd_config'):
        train.check_options(params['kd_config'], options, params.get('teacher_sha256') or None)
    if params.get('student_config'):
        from video_kd.openmmlab.config import config_path

        config_path(params['student_config'])  # evaluation and export load it
    if 'export_tolerance' in params or 'speed_repeats' in params:
        export.export_settings(
            params.get('kd_config', ''),
            params.get('student_config', ''),
            tolerance=params.get('export_tolerance', export.DEFAULT_TOLERANCE),
            speed_repeats=params.get('speed_repeats', export.DEFAULT_SPEED_REPEATS),
        )
