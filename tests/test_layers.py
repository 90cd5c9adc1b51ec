"""The package's layers, as the folder tree shows them, hold in the code.

The import graph is built from the source (every ``import``, at module level and inside
functions alike), so a function-level import cannot hide a cycle.  Layers, lowest first:
a module may import its own package and any lower layer, never a higher one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'video_kd'

# Lowest first.  ``video_kd`` itself (its __init__: the OpenMMLab compat shims) is below all.
LAYERS = (
    ('core',),
    ('storage',),
    ('runs',),
    ('openmmlab',),
    ('backends',),
    ('data',),
    ('distill',),
    ('deploy',),
    ('steps',),
    ('cli', 'local_run', 'image_check'),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        if 'configs' in path.relative_to(PACKAGE).parts:
            continue  # mmengine config files, not modules
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        found['.'.join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition('.')[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int, int]]:
    """(imported module of ours, line, first line of the enclosing function or 0) for every
    import in ``path``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    enclosing = {  # import node -> the first line of the function it is in
        id(node): fn.lineno
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[: len(package.split('.')) - node.level + 1]
                base = '.'.join([*parts, base] if base else parts)
            # a submodule (``from video_kd.backends import pod``) or a name in ``base``
            targets = [
                f'{base}.{a.name}' if f'{base}.{a.name}' in MODULES else base for a in node.names
            ]
        for target in targets:
            resolved = _resolve(target)
            if resolved and resolved != module:
                found.append((resolved, node.lineno, enclosing.get(id(node), 0)))
    return sorted(set(found))


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None  # None: the package root


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} - {None} == set(RANK), (
        'a new folder needs its place in LAYERS'
    )


def test_no_import_cycle_counting_function_level_imports():
    graph = {module: {target for target, _, _ in edges} for module, edges in GRAPH.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_one():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, edges in GRAPH.items():
        here = _layer(module)
        for target, line, _ in edges:
            there = _layer(target)
            if here is None or there is None or here == there:
                continue  # the package root (compat) is below everything
            if RANK[there] > RANK[here]:
                upward.append(f'{MODULES[module].relative_to(ROOT)}:{line} imports {target}')
    assert upward == []


def test_function_level_imports_of_our_modules_say_why():
    """Our own modules are imported at module level; deferring one is for its import cost
    (torch, OpenMMLab, the Kubernetes client, KFP), said in a ``# deferred: ...`` comment on
    the import or above it in its function."""
    silent = []
    for module, edges in GRAPH.items():
        lines = MODULES[module].read_text().splitlines()
        for _, line, function in edges:
            if not function:
                continue
            before = lines[function - 1 : line - 1]
            said = '#' in lines[line - 1] or any(
                text.strip().startswith('# deferred') for text in before
            )
            if not said:
                silent.append(
                    f'{MODULES[module].relative_to(ROOT)}:{line}: {lines[line - 1].strip()}'
                )
    assert silent == []


@pytest.mark.parametrize('layer', ['core'])
def test_core_imports_no_third_party_heavyweights(layer):
    heavy = ('torch', 'mmengine', 'mmaction', 'mmrazor', 'boto3', 'botocore', 'kfp', 'kubernetes')
    offending = []
    for module, path in MODULES.items():
        if _layer(module) != layer:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or '']
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offending += [f'{module}: {n}' for n in names if n.split('.')[0] in heavy]
    assert offending == []


@pytest.mark.parametrize('step', ['data_prep', 'promote'])
def test_the_steps_that_only_read_and_write_records_start_without_torch(step):
    """Data prep (its video checks decode in worker processes) and promote read and write
    records: importing torch and OpenMMLab would add seconds to every run for nothing."""
    code = f'import sys, video_kd.steps.{step}; print("torch" in sys.modules)'
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == 'False'
