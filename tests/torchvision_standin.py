"""A stand-in for torchvision, so that timm's model code imports in the tests.

torchvision from PyPI does not load beside the pinned CPU torch, and timm imports it
at import time for its data transforms and a few layers (``FrozenBatchNorm2d``...)
that its Swin Transformer never uses.  Every ``torchvision.*`` module is an empty
module whose attributes are placeholder classes; using one raises, so a test that
reached torchvision code by accident fails loudly instead of computing something.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator

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


def uninstall() -> None:
    """Take the stand-in off the import path and forget the torchvision modules it made."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]
    for name in [name for name in sys.modules if name == ROOT or name.startswith(ROOT + '.')]:
        del sys.modules[name]


@contextlib.contextmanager
def installed(dependents: tuple[str, ...] = ()) -> Iterator[None]:
    """The stand-in for the block only; afterwards it is gone, and so are the modules of
    ``dependents`` (packages such as timm) first imported in the block, which hold its
    placeholders: nothing after the block sees a torchvision that is not there."""
    before = set(sys.modules)
    install()
    try:
        yield
    finally:
        uninstall()
        for name in set(sys.modules) - before:
            if name.split('.', 1)[0] in dependents:
                del sys.modules[name]
