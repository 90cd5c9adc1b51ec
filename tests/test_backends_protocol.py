"""Each backend module implements its protocol of video_kd/backends/base.py: every member,
with the protocol's parameter names (mypy checks the types where ``get`` returns them)."""

import importlib
import inspect

import pytest

from video_kd import backends
from video_kd.backends.base import ClusterBackend, LocalBackend

PROTOCOL = {'pytorchjob': ClusterBackend, 'trainjob': ClusterBackend, 'local': LocalBackend}


def _members(protocol: type) -> dict[str, object]:
    names = {n for n in vars(protocol) if not n.startswith('_')} | set(protocol.__annotations__)
    return {n: getattr(protocol, n, None) for n in names}


@pytest.mark.parametrize('name', backends.BACKENDS)
def test_backend_module_implements_its_protocol(name):
    module = importlib.import_module(f'video_kd.backends.{name}')
    assert backends.get(name) is module
    for member, declared in _members(PROTOCOL[name]).items():
        assert hasattr(module, member), f'{name} lacks {member}'
        if callable(declared):
            wanted = [p for p in inspect.signature(declared).parameters if p != 'self']
            got = list(inspect.signature(getattr(module, member)).parameters)
            assert got == wanted, f'{name}.{member}{got} != protocol {wanted}'


def test_every_backend_has_a_protocol():
    assert set(PROTOCOL) == set(backends.BACKENDS)


def test_local_creates_no_kubernetes_object():
    with pytest.raises(backends.UnknownBackend, match='creates no Kubernetes object'):
        backends.cluster_backend('local')
