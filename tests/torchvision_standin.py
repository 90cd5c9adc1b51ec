"""A stand-in for torchvision, so that timm's model code imports in the tests.

torchvision from PyPI does not load beside the pinned CPU torch, and timm imports it
at import time for its data transforms and a few layers (``FrozenBatchNorm2d``...)
that its Swin Transformer never uses.  Every ``torchvision.*`` module is an empty
module whose attributes are placeholder classes; using one raises, so a test that
reached torchvision code by accident fails loudly instead of computing something.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

ROOT = 'torchvision'


class _AnyAttribute(type):
    """Class attributes (``InterpolationMode.BILINEAR``...) are placeholders too."""

    def __getattr__(cls, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        return _placeholder(f'{cls.__name__}.{name}')


class _Unavailable(metaclass=_AnyAttribute):
    """What every torchvision attribute is: a class that cannot be used."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError('torchvision is a test stand-in here (tests/torchvision_standin.py)')


def _placeholder(name: str) -> type:
    return _AnyAttribute(name, (_Unavailable,), {})


class _StandinModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        placeholder = _placeholder(name)
        setattr(self, name, placeholder)
        return placeholder


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == ROOT or fullname.startswith(ROOT + '.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandinModule(spec.name)
        module.__path__ = []
        module.__version__ = '0.0.0+standin'
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the stand-in first on the import path (idempotent); torchvision must be absent."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    if importlib.util.find_spec(ROOT) is not None:
        raise RuntimeError('a real torchvision is installed: the stand-in is not needed')
    sys.meta_path.insert(0, _Finder())
