"""The help a user sees: every input and output described in the compiled IR (what the
Kubeflow UI shows next to each run parameter and each step's inputs and outputs), and
``--help`` texts that name the pipeline's steps as the pipeline has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components import STEPS
from pipelines.kd_pipeline import PIPELINE_FILE, TASK_ORDER, compile_pipeline, kd_pipeline


def _undescribed(ir: dict) -> list[str]:
    """Every pipeline parameter and component input/output (parameter or artifact) of the
    IR without a description, as 'where: name'."""
    missing = []
    where = {'root': ir['root'], **ir['components']}
    for place, spec in where.items():
        for section in ('inputDefinitions', 'outputDefinitions'):
            for kind in ('parameters', 'artifacts'):
                for name, entry in spec.get(section, {}).get(kind, {}).items():
                    if not str(entry.get('description', '')).strip():
                        missing.append(f'{place} {section}.{kind}: {name}')
    return missing


@pytest.fixture(scope='module')
def fresh_ir(tmp_path_factory) -> dict:
    """The IR compiled from the source now: a docstring entry removed shows here at once
    (the committed YAML shows it once recompiled; test_pipeline fails while it is stale)."""
    path = compile_pipeline(tmp_path_factory.mktemp('ir') / 'kd_pipeline.yaml')
    return next(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize('which', ['committed', 'fresh'])
def test_every_input_and_output_is_described(which, fresh_ir):
    ir = (
        next(yaml.safe_load_all(Path(PIPELINE_FILE).read_text()))
        if which == 'committed'
        else fresh_ir
    )
    assert _undescribed(ir) == []
    assert ir['pipelineInfo'].get('description', '').strip()
    # what is checked is all there is: the 41 parameters and every step's component
    parameters = ir['root']['inputDefinitions']['parameters']
    assert set(parameters) == set(kd_pipeline.component_spec.inputs)
    assert len(parameters) == 41
    assert {f'comp-{step}' for step in TASK_ORDER} <= set(ir['components'])
    # one entry per name: no description names another parameter as its own entry
    for name, entry in parameters.items():
        others = [other for other in parameters if other != name]
        assert not re.search(rf'^\s*({"|".join(others)})\s*:', entry['description'], re.M), name


def test_component_interfaces_are_described():
    """Each component's own spec (what a component reused elsewhere shows)."""
    import importlib

    counts = {}
    for step in STEPS:
        component = getattr(importlib.import_module(f'components.{step}.component'), step)
        spec = component.component_spec
        entries = {**(spec.inputs or {}), **(spec.outputs or {})}
        assert [name for name, e in entries.items() if not (e.description or '').strip()] == []
        assert spec.description and 'Args:' not in spec.description, step
        counts[step] = len(spec.inputs or {})
    assert sum(counts.values()) == 93  # check_inputs takes s3_prefix and image too


def test_cli_help_names_the_pipeline_steps():
    from video_kd import cli

    assert tuple(step.replace('_', '-') for step in STEPS) == TASK_ORDER
    text = cli.build_parser().format_help()
    found = re.search(r'pipeline of (\d+) steps:\n\s+(.+)\n', text)
    assert found, text
    assert int(found.group(1)) == len(TASK_ORDER)
    assert found.group(2).split(' -> ') == [step.replace('-', ' ') for step in TASK_ORDER]
    assert f'components.<{"|".join(STEPS)}>' in text
    assert not re.search(r'\b(five|six|seven|eight) steps\b', text)
    run_local = cli.build_parser()._subparsers._group_actions[0].choices['run-local']
    local_text = ' '.join(run_local.format_help().split())
    assert f"the pipeline's {len(TASK_ORDER)} steps (" in local_text
    assert ' -> '.join(step.replace('-', ' ') for step in TASK_ORDER) in local_text


def test_check_inputs_help_says_what_it_reads_and_prints(capsys):
    from components.check_inputs.__main__ import main

    with pytest.raises(SystemExit):
        main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'AWS_ACCESS_KEY_ID' not in text  # it reads no S3
    assert "artifact's metadata" not in text  # it has no artifact
    assert 'no S3' in text and '"checked"' in text
