"""Validate manifests against the operators' real CRD schemas (tests/data/crds/, see SOURCES.md).

The API server prunes unknown fields of a custom resource silently (a typo
is lost, not refused) unless the client asks for strict field validation;
``strict`` makes every object schema without ``x-kubernetes-preserve-unknown-fields``
refuse unknown fields, as ``kubectl apply --validate=strict`` does.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).parent / 'data' / 'crds'
PYTORCHJOB_CRD = CRDS / 'kubeflow.org_pytorchjobs-v1.9.4.yaml'
TRAINJOB_CRD = CRDS / 'trainer.kubeflow.org_trainjobs-v2.3.0.yaml'
TRAININGRUNTIME_CRD = CRDS / 'trainer.kubeflow.org_trainingruntimes-v2.3.0.yaml'


@functools.cache
def schema(path: Path, version: str, strict: bool = True) -> dict:
    # libyaml's loader when there is one: the CRDs are 0.5-2 MB, pure Python takes seconds
    loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)
    crd = next(d for d in yaml.load_all(path.read_text(), Loader=loader) if d)
    (served,) = [v for v in crd['spec']['versions'] if v['name'] == version]
    root = served['schema']['openAPIV3Schema']
    return _strict(root) if strict else root


def _strict(node):
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if (
        node.get('type') == 'object'
        and 'properties' in node
        and 'additionalProperties' not in node
        and not node.get('x-kubernetes-preserve-unknown-fields')
    ):
        node['additionalProperties'] = False
    return node


def problems(manifest: dict, path: Path, version: str) -> list[str]:
    """Every schema violation, as 'where: what'."""
    validator = jsonschema.Draft7Validator(schema(path, version))
    found = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.path)):
        where = '.'.join(str(p) for p in error.path) or '<root>'
        found.append(f'{where}: {error.message}')
    return found
