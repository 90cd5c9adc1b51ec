"""Load mmengine configs by name, resolve model references, apply user overrides.

Configs live in ``video_kd/openmmlab/configs`` and are named as OpenMMLab names them
(``kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400.py``).  A KD config points
at its student and teacher the way the seed project does, with
``dict(cfg_path='mmaction::...', pretrained=False, **overrides)``.  MMRazor
hands such a dict to ``mmengine.hub.get_model``, which treats the extra keys
as *defaults* (so ``backbone=dict(pretrained=False)`` is silently ignored) and
cannot see our own configs.  We resolve those references here instead: the
referenced model dict is loaded, the extra keys are merged into it with
mmengine's own merge rules (``_delete_`` included), and the result is a plain
model dict that ``--cfg-options`` can override key by key.

Offline by default: base configs name ImageNet weights by URL
(``torchvision://resnet50``, ``mmcls://mobilenet_v2``, https://...).  Those
are replaced by random init (a warning says so) unless the user gives a local
path, sets ``allow_pretrained_download=True`` (in the config or with
``--cfg-options``: remote weights are dropped after the overrides are merged),
or initialises the student with ``video_kd.distill.pretrained`` (a fetched, verified
file: ``--student-pretrained-url URL``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from mmengine.config import Config, ConfigDict

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import UserError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
_REMOTE_PREFIXES = (
    'http://',
    'https://',
    'torchvision://',
    'mmcls://',
    'open-mmlab://',
    'openmmlab://',
    'modelzoo://',
    's3://',
)


class UnknownConfigError(UserError):
    """A config name or path that does not exist."""


def available_configs() -> list[str]:
    """Names of the configs shipped with video_kd (without the .py suffix)."""
    return sorted(path.stem for path in CONFIG_DIR.glob('*.py'))


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config name (with or without .py) or a path to a config file."""
    candidate = Path(name_or_path)
    if candidate.suffix == '.py' and candidate.is_file():
        return candidate.resolve()
    shipped = CONFIG_DIR / f'{candidate.name.removesuffix(".py")}.py'
    if shipped.is_file() and candidate.parent == Path('.'):
        return shipped
    raise UnknownConfigError(
        f'unknown config {str(name_or_path)!r}: not a file and not one of the shipped '
        f'configs ({", ".join(available_configs())})'
    )


def _referenced_model(cfg_path: str) -> ConfigDict:
    """The model dict of `mmaction::...`-style or shipped-config references."""
    if '::' in cfg_path:
        from mmengine.hub import get_config

        package = cfg_path.split('::')[0]
        model = get_config(cfg_path).model
        model.setdefault('_scope_', package)  # nested types resolve in that package
        return model
    # a shipped config: its own references inlined, its remote weights left to the config
    # that refers to it (dropped or kept, warned about or not, once, as that one says)
    return inline_references(Config.fromfile(str(config_path(cfg_path)))).model


def _resolve_reference(ref: ConfigDict) -> ConfigDict:
    overrides = copy.deepcopy(dict(ref))
    cfg_path = overrides.pop('cfg_path')
    if overrides.pop('pretrained', False):
        raise ValueError(
            f'{cfg_path}: pretrained=True would download model-zoo weights; '
            'give them as teacher_ckpt / load_from instead'
        )
    model = _referenced_model(cfg_path)
    return ConfigDict(Config._merge_a_into_b(overrides, model))


def _accepts(type_name: str | type | None, argument: str) -> bool:
    """Whether the registered mmaction model class `type_name` takes `argument`."""
    import inspect

    from mmaction.registry import MODELS
    from mmaction.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cls = MODELS.get(type_name) if isinstance(type_name, str) else type_name
    return cls is not None and argument in inspect.signature(cls).parameters


def _strip_remote_weights(node: Any, where: str = 'model', warn: bool = True) -> None:
    """Replace URL-named pretrained weights by None, in place, logging each (as a warning
    unless ``warn`` is False: the student's ImageNet weights are given otherwise)."""
    log = logger.warning if warn else logger.debug
    if isinstance(node, dict):
        for key, value in node.items():
            here = f'{where}.{key}'
            if (
                key == 'pretrained'
                and isinstance(value, str)
                and value.startswith(_REMOTE_PREFIXES)
            ):
                log(
                    '%s=%s not fetched (offline): random init, unless ImageNet weights '
                    "are given (--student-pretrained-url URL --student-pretrained-sha256 HEX, the pipeline's "
                    'student_pretrained_url) or it is set to a local file',
                    here,
                    value,
                )
                node[key] = None
                if _accepts(node.get('type'), 'pretrained2d'):  # TSM backbones load 2D
                    node['pretrained2d'] = False  # weights only if this is set
            elif key == 'pretrained' and value is True:  # timm/mmpretrain style flag
                node[key] = False
            elif (
                key == 'init_cfg'
                and isinstance(value, dict)
                and value.get('type') == 'Pretrained'
                and str(value.get('checkpoint', '')).startswith(_REMOTE_PREFIXES)
            ):
                log('%s checkpoint %s not fetched (offline)', here, value['checkpoint'])
                node[key] = None
            else:
                _strip_remote_weights(value, here, warn)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _strip_remote_weights(item, f'{where}[{index}]', warn)


def inline_references(cfg: Config) -> Config:
    """Inline the `cfg_path` references of a KD config's student and teacher, in place."""
    model = cfg.model
    for role in ('architecture', 'teacher'):
        if isinstance(model.get(role), dict) and 'cfg_path' in model[role]:
            model[role] = _resolve_reference(model[role])
    return cfg


def drop_remote_weights(cfg: Config, warn: bool = True) -> Config:
    """Offline: URL-named weights become random init, unless allow_pretrained_download.

    Each one is a warning in the log, unless ``warn`` is False or the config names the
    student's ImageNet weights (``student_pretrained``, set by ``video_kd.distill.train_config``
    from ``--student-pretrained-url``): the student is then initialised from those, and
    the teacher from its checkpoint."""
    if not cfg.get('allow_pretrained_download', False):
        _strip_remote_weights(cfg.model, warn=warn and not cfg.get('student_pretrained'))
    return cfg


def resolve_model(cfg: Config) -> Config:
    """Inline `cfg_path` references of KD configs and drop remote weights."""
    return drop_remote_weights(inline_references(cfg))


def load_config(
    name_or_path: str | Path, cfg_options: dict | None = None, *, warn_offline: bool = True
) -> Config:
    """Load a config, resolve its model references, apply overrides, drop remote weights.

    cfg_options are mmengine ``--cfg-options`` style: {'a.b.c': value}.
    Overrides apply after the references are inlined, so every key (student,
    teacher, data, schedule) is overridable, including those of a referenced
    model; remote weights are dropped last, so ``allow_pretrained_download=True``
    and a local ``...backbone.pretrained=FILE`` given as overrides take effect
    (the latter keeps TSM's ``pretrained2d`` loading path).  ``warn_offline=False``
    logs the dropped weights at debug level only (see ``drop_remote_weights``).
    """
    cfg = Config.fromfile(str(config_path(name_or_path)))
    inline_references(cfg)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return drop_remote_weights(cfg, warn=warn_offline)


def teacher_config(kd_config: str | Path, cfg_options: dict | None = None) -> Config:
    """The teacher's own config (its test pipeline, test dataloader, evaluator) with
    the KD config's resolved teacher as its model: to score the teacher as its
    config means, not with the student's test views."""
    raw = Config.fromfile(str(config_path(kd_config)))
    reference = raw.model.get('teacher', {}).get('cfg_path')
    if not reference:
        raise UnknownConfigError(f'{kd_config} has no teacher reference (model.teacher.cfg_path)')
    if '::' in reference:
        from mmengine.hub import get_config

        cfg = get_config(reference)
    else:
        cfg = Config.fromfile(str(config_path(reference)))
    cfg.model = load_config(kd_config, cfg_options).model.teacher
    return drop_remote_weights(cfg)


# MMRazor's algorithm and ours built on it (video_kd.distill.fast_teacher, video_kd.distill.logit_cache)
DISTILL_ALGORITHMS = (
    'SingleTeacherDistill',
    'InferenceTeacherDistill',
    'CachedLogitsSingleTeacherDistill',
)


def is_distill_config(cfg: Config) -> bool:
    return str(cfg.model.get('type', '')).rsplit('.', 1)[-1] in DISTILL_ALGORITHMS


def student_model_cfg(cfg: Config) -> ConfigDict:
    """The student's model dict: the architecture of a KD config, or the model itself."""
    return cfg.model.architecture if is_distill_config(cfg) else cfg.model


def set_num_classes(node: Any, num_classes: int) -> int:
    """Set num_classes of every head in a (model) dict; returns how many were set."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'num_classes':
                node[key] = num_classes
                count += 1
            else:
                count += set_num_classes(value, num_classes)
    elif isinstance(node, list):
        count += sum(set_num_classes(item, num_classes) for item in node)
    return count
