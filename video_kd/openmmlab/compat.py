"""Make mmaction2 1.2.0 and mmrazor 1.0.0 importable on current torch.

Import this module before any OpenMMLab package (``import video_kd`` does it).
It patches exactly two packaging problems, measured on the pinned releases:

1. The mmaction2 1.2.0 wheel (and sdist) leaves out the sub-package
   ``mmaction.models.localizers.drn``, yet ``mmaction.models.localizers``
   imports it, so ``import mmaction.models`` fails.  We register a stand-in
   whose ``DRN`` raises a clear error when built.  Knowledge distillation of
   recognizers never uses DRN (a temporal grounding localizer).
2. mmrazor 1.0.0's ``mmrazor.structures.quantization`` imports helpers that
   newer torch removed (``torch.ao.quantization.fuser_method_mappings.reverse2``
   ...), so ``import mmrazor.models`` fails.  We register a stand-in whose
   ``BackendConfigs`` and ``QConfigHandler`` raise a clear error when used.
   Distillation does not use quantization.
3. mmpretrain 1.2.0 (the Swin backbone of the TSN-Swin teacher) imports
   torchvision in two modules that recognizers never use: box utilities of its
   detection/grounding heads and the visual-grounding metric.  torchvision
   from PyPI does not load beside the CPU torch we pin, so we register
   stand-ins that raise a clear error when called.
4. mmengine 0.10.7 (resume, ``load_from``, MMRazor's ``teacher_ckpt``) calls
   ``torch.load`` without saying whether to unpickle in full; torch >= 2.6 then loads
   weights only, which refuses mmengine's own checkpoints (they pickle a
   ``HistoryBuffer``, numpy arrays and ``getattr``).  We re-register mmengine's
   local-file checkpoint loader as ``video_kd.openmmlab.checkpoints.load_checkpoint``:
   still ``weights_only=True``, with the allow-list of exactly what these
   checkpoints hold (put on torch's list for the whole process, so mmengine's remote
   schemes, which keep torch's default, read them too).  A file that needs more is
   refused in one line naming the type: nothing read from storage is executed.
   Done when mmengine's checkpoint module is imported (``_AfterImport``), not here:
   ``import video_kd`` loads neither torch nor mmengine.

Misuse fails loudly: installing after mmaction/mmrazor were already imported
raises ``CompatError`` (the stand-ins would come too late to help), and every
stubbed-out feature raises ``StubbedFeatureError`` naming what is missing.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

DRN_MODULES = ('mmaction.models.localizers.drn', 'mmaction.models.localizers.drn.drn')
QUANT_MODULE = 'mmrazor.structures.quantization'
BOX_UTILS_MODULE = 'mmpretrain.models.utils.box_utils'
GROUNDING_MODULE = 'mmpretrain.evaluation.metrics.visual_grounding_eval'
CHECKPOINT_MODULE = 'mmengine.runner.checkpoint'  # its loader is re-registered (4. above)
_GUARDED_PACKAGES = ('mmaction', 'mmrazor', 'mmpretrain')
_NO_TORCHVISION = 'torchvision from PyPI does not load beside the pinned CPU torch'
_NO_QUANT = 'mmrazor 1.0.0 quantization needs torch.ao helpers removed in torch>=2.1'
_STUB_MARK = '__video_kd_stub__'


class CompatError(RuntimeError):
    """The compat layer was used in a way that cannot work."""


class StubbedFeatureError(NotImplementedError):
    """A feature that the compat layer stubbed out was used."""


def _stub_error(feature: str, why: str) -> StubbedFeatureError:
    return StubbedFeatureError(
        f'{feature} is not available in this installation: {why}. '
        'video_kd.openmmlab.compat replaced it with a stand-in because knowledge '
        'distillation does not need it.'
    )


class DRN:
    """Stand-in for mmaction's DRN localizer, missing from the 1.2.0 wheel."""

    def __init__(self, *args, **kwargs):
        raise _stub_error(
            'mmaction DRN localizer', 'mmaction2 1.2.0 ships without mmaction.models.localizers.drn'
        )


class QConfigHandler:
    """Stand-in for mmrazor's quantization config handler."""

    def __init__(self, *args, **kwargs):
        raise _stub_error('mmrazor quantization (QConfigHandler)', _NO_QUANT)

    @staticmethod
    def replace_fakequant(*args, **kwargs):
        raise _stub_error('mmrazor quantization (replace_fakequant)', _NO_QUANT)


class _RaisingBackendConfigs(dict):
    """Empty mapping whose every lookup explains why quantization is off."""

    def __getitem__(self, backend: Any) -> NoReturn:
        raise _stub_error(f'mmrazor quantization backend {backend!r}', _NO_QUANT)


class VisualGroundingMetric:
    """Stand-in for mmpretrain's grounding metric (needs torchvision)."""

    def __init__(self, *args, **kwargs):
        raise _stub_error('mmpretrain VisualGroundingMetric', _NO_TORCHVISION)


def _torchvision_box_op(name: str):
    def unavailable(*args, **kwargs):
        raise _stub_error(f'mmpretrain box utility {name}', _NO_TORCHVISION)

    unavailable.__name__ = name
    return unavailable


_BOX_OPS = ('box_cxcywh_to_xyxy', 'box_xyxy_to_cxcywh', 'box_iou', 'generalized_box_iou')


def _stub_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__dict__['__all__'] = [key for key in attrs if not key.startswith('_')]
    setattr(module, _STUB_MARK, True)
    return module


def _already_imported() -> list[str]:
    return sorted(name for name in sys.modules if name.split('.')[0] in _GUARDED_PACKAGES)


def is_installed() -> bool:
    """True when the stand-ins are in place."""
    return all(
        getattr(sys.modules.get(name), _STUB_MARK, False)
        for name in (*DRN_MODULES, QUANT_MODULE, BOX_UTILS_MODULE, GROUNDING_MODULE)
    )


def _load_local_checkpoint_weights_only(filename: str, map_location: Any = None) -> Any:
    import os.path

    # deferred: torch and mmengine, imported by install() only, after the stand-ins
    from video_kd.openmmlab.checkpoints import load_checkpoint

    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint(filename, map_location=map_location)


def _load_checkpoints_weights_only(checkpoint_module: types.ModuleType) -> None:
    # deferred: torch and mmengine, imported once mmengine's checkpoint module is
    from video_kd.openmmlab.checkpoints import allow_checkpoint_globals

    allow_checkpoint_globals()  # mmengine's other schemes: torch's weights-only default
    checkpoint_module.CheckpointLoader.register_scheme(
        prefixes='', loader=_load_local_checkpoint_weights_only, force=True
    )


class _AfterImport:  # a sys.meta_path finder (importlib.abc's base would cost 20 ms)
    """Runs ``then(module)`` right after ``name`` is imported, by whoever imports it.

    mmengine's checkpoint loader is re-registered this way rather than by importing it
    here: that import is torch and mmengine (seconds), which ``import video_kd`` would
    cost every process, ``video-kd runs`` and ``--help`` included.  Nothing can load a
    checkpoint through mmengine before its checkpoint module is imported.
    """

    def __init__(self, name: str, then: Callable[[types.ModuleType], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        others = (finder for finder in sys.meta_path if finder is not self)
        spec = next(
            (
                found
                for finder in others
                if (found := finder.find_spec(fullname, path, target)) is not None
            ),
            None,
        )  # fmt: skip  (the finders that find it, as if this one were not there)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then(module: types.ModuleType) -> None:
            exec_module(module)
            self.then(module)

        spec.loader.exec_module = exec_then  # type: ignore[method-assign]  # this spec's loader
        return spec


def _after_import(name: str, then: Callable[[types.ModuleType], None]) -> None:
    """``then(module)`` now if ``name`` is imported already, else right after it is."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


def install() -> None:
    """Register the stand-ins; idempotent, and refuses to come too late."""
    if is_installed():
        return
    early = _already_imported()
    if early:
        raise CompatError(
            'video_kd.openmmlab.compat must be imported before any OpenMMLab package, '
            f'but these are already imported: {", ".join(early[:5])}. '
            'Put `import video_kd` (or `import video_kd.openmmlab.compat`) first.'
        )
    drn = _stub_module(DRN_MODULES[1], DRN=DRN)
    drn_pkg = _stub_module(DRN_MODULES[0], DRN=DRN, drn=drn)
    drn_pkg.__path__ = []  # a package, so `from .drn.drn import DRN` resolves
    sys.modules[DRN_MODULES[0]] = drn_pkg
    sys.modules[DRN_MODULES[1]] = drn
    sys.modules[QUANT_MODULE] = _stub_module(
        QUANT_MODULE, BackendConfigs=_RaisingBackendConfigs(), QConfigHandler=QConfigHandler
    )
    sys.modules[BOX_UTILS_MODULE] = _stub_module(
        BOX_UTILS_MODULE, **{name: _torchvision_box_op(name) for name in _BOX_OPS}
    )
    sys.modules[GROUNDING_MODULE] = _stub_module(
        GROUNDING_MODULE, VisualGroundingMetric=VisualGroundingMetric
    )
    _after_import(CHECKPOINT_MODULE, _load_checkpoints_weights_only)


install()
