"""README.md and its docs/ pages stay in step with the code.

The README is short (<= 300 lines) and opens with the two commands; its steps are the
pipeline's (`TASK_ORDER`), its package picture the packages, its demo figures the
benchmark JSON, and every other number in its prose is one of those. The pages it links:
tables render as tables, the layout table names every module, every row of the fault
matrix names a test that exists, the parameters table every pipeline parameter, the
deviations table every allow-listed difference, and the image's build steps it cites are
the Dockerfile's."""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()
DOCS = ROOT / 'docs'
PAGES = {path.name: path.read_text() for path in sorted(DOCS.glob('*.md'))}
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
                'nine', 'ten', 'eleven', 'twelve')  # fmt: skip


def section(title: str, text: str = README) -> str:
    start = text.index(title)
    end = text.find('\n#', start + len(title))
    return text[start : end if end > 0 else None]


def task_order() -> tuple[str, ...]:
    """pipelines/kd_pipeline.py's TASK_ORDER, read without importing KFP."""
    tree = ast.parse((ROOT / 'pipelines' / 'kd_pipeline.py').read_text())
    (value,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ['TASK_ORDER']
    ]
    return ast.literal_eval(value)


def pipeline_parameters() -> list[str]:
    """The parameters of the pipeline function, read without importing KFP."""
    tree = ast.parse((ROOT / 'pipelines' / 'kd_pipeline.py').read_text())
    (function,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == 'kd_pipeline'
    ]
    return [arg.arg for arg in function.args.args]


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text``, header and separator left out."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('|'))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in re.split(r'(?<!\\)\|', line)[1:-1]])
    return rows


@pytest.mark.parametrize('name', ['README.md', *(f'docs/{page}' for page in PAGES)])
def test_no_table_is_split_by_a_blank_line(name):
    """A row after a blank line renders as text (the benchmark table lost its last row so)."""
    lines = (ROOT / name).read_text().splitlines()
    in_code = False
    for number, line in enumerate(lines[2:], 3):
        in_code ^= line.startswith('```')
        if in_code or not line.startswith('|'):
            continue
        before, above = lines[number - 3], lines[number - 2]
        if above == '' and before.startswith('|'):
            pytest.fail(f'{name}:{number}: a table row after a blank line: {line[:60]}')


def test_the_layout_table_names_every_module():
    layout = section('## Layout', PAGES['architecture.md'])
    named = set(re.findall(r'`([^`]+)`', layout))
    missing = []
    for path in sorted((ROOT / 'video_kd').rglob('*.py')):
        rel = path.relative_to(ROOT / 'video_kd')
        if rel.name == '__init__.py' or 'configs' in rel.parts[:-1]:
            continue
        if len(rel.parts) == 1:  # `video_kd/runs.py` or, later in a row, `local_run.py`
            found = rel.name in named or f'video_kd/{rel.name}' in named
        else:  # `video_kd/backends/` and, in its row, `spec`
            found = f'video_kd/{rel.parent.as_posix()}/' in named and rel.stem in named
        if not found:
            missing.append(f'video_kd/{rel.as_posix()}')
    assert not missing, f'the layout table of docs/architecture.md lacks {missing}'


def test_the_steps_row_lists_every_step_module():
    layout = section('## Layout', PAGES['architecture.md'])
    (row,) = [r for r in table_rows(layout) if r[0] == '`video_kd/steps/`']
    for path in (ROOT / 'video_kd' / 'steps').glob('*.py'):
        if path.name != '__init__.py':
            assert f'`{path.stem}`' in row[1], path.stem


def fault_matrix_rows() -> list[list[str]]:
    return table_rows(section('## Bad input and faults', PAGES['storage-and-faults.md']))


def test_every_fault_matrix_row_names_tests_that_exist():
    rows = fault_matrix_rows()
    assert len(rows) >= 30
    for case, *_, tests in rows:
        references = re.findall(r'`(test_\w+\.py)::(test_\w+)`', tests)
        assert references, f'fault matrix row {case!r} names no test'
        for file_name, test_name in references:
            source = ROOT / 'tests' / file_name
            assert source.is_file(), f'{case!r}: no tests/{file_name}'
            defined = {
                node.name
                for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.FunctionDef)
            }
            assert test_name in defined, f'{case!r}: no {test_name} in tests/{file_name}'


def test_the_fault_matrix_covers_the_reported_cases():
    """Issue 15's cases, issue 14's bad export inputs and issue 25's outages each have a row."""
    matrix = ' '.join(' '.join(row) for row in fault_matrix_rows())
    for needle in (
        "`' '`",  # the run id of one space
        "not the pod's scratch copy",
        'a video that does not decode',
        'a failed local training attempt',
        'missing S3 credentials',
        'a bad URL',
        'a student with an op ONNX lacks',
        'ONNX Runtime disagrees with PyTorch',
        'a missing training log',
        'a teacher step into a directory nobody claimed',
        'an S3 outage while the data loaders read videos',  # issue 25
        'an S3 outage during data prep',
        'a dataset that goes bad late in a long epoch',
    ):
        assert needle in matrix, needle


def test_the_deviations_table_names_every_intended_difference():
    """Every key of tests/test_seed_fidelity.py's allow-lists (the intended differences from
    the seed's configs) is named, in backquotes, in docs/training.md's table of deviations: the
    table cannot drift from the list the fidelity tests enforce."""
    import test_seed_fidelity as fidelity

    allowed = {key for _, intended in fidelity.PLAIN_CONFIGS.values() for key in intended}
    allowed |= {key for intended in fidelity.KD_CONFIGS.values() for key in intended}
    allowed |= set(fidelity.SWIN_BACKBONE)
    assert len(allowed) >= 10  # the lists were read
    deviations = section('## Deviations from the seed', PAGES['training.md'])
    table = ' '.join(' '.join(row) for row in table_rows(deviations))
    missing = sorted(key for key in allowed if f'`{key}`' not in table)
    assert not missing, f'allow-listed differences not in the deviations table: {missing}'


def test_the_image_builds_step_numbers_are_the_dockerfiles():
    """The figures of docs/image.md ("Build and push the images") are the Dockerfile's: podman numbers the
    instructions from FROM on (STEP n/total), the example build error names the step that
    installs the source and a module that exists, and a source edit rebuilds every step
    from the first source COPY on (test_image's test_a_source_edit_rebuilds_only_...)."""
    import importlib.util

    from test_docker import DOCKER, parse

    ins = parse((DOCKER / 'Dockerfile').read_text())
    steps = ins[next(i for i, s in enumerate(ins) if s.cmd == 'FROM') :]
    text = PAGES['image.md']
    number, total, module = re.search(
        r'STEP (\d+)/(\d+): RUN pip install --no-deps .*imported by ([\w.]+)', text
    ).groups()
    assert int(total) == len(steps)
    assert steps[int(number) - 1].cmd == 'RUN'
    assert steps[int(number) - 1].args.startswith('pip install --no-deps')
    assert importlib.util.find_spec(module) is not None, module
    first_source = next(i for i, s in enumerate(steps) if s.args.startswith('README.md'))
    now, rebuilt = re.search(
        r"of today's (\d+) steps,\s+a source edit runs the (\d+)", text
    ).groups()
    assert (int(now), int(rebuilt)) == (len(steps), len(steps) - first_source)


# --- the README itself: short, and every figure in it computed or checked ----------------


def prose(text: str) -> str:
    """The text a reader reads as sentences: no code blocks, code spans or link targets."""
    text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    text = re.sub(r'`[^`\n]*`', '', text)
    return re.sub(r'\]\([^)]*\)', ']', text)


def demo_figures() -> dict[str, str]:
    """What the README may say of `make demo`, from benchmarks/results/demo_wall.json: a
    clean clone's `make install`, first (cold) and second (warm) `make demo`."""
    result = json.loads((ROOT / 'benchmarks' / 'results' / 'demo_wall.json').read_text())
    phases = result['phases']
    assert result['mode'] == 'clean clone' and list(phases) == ['install', 'cold', 'warm']
    assert all(phase['returncode'] == 0 for phase in phases.values())
    # the warm call trains the same student on the same data: the same metrics
    assert phases['cold']['top1'] == phases['warm']['top1']
    top1 = {name: f'{100 * value:.1f}%' for name, value in phases['cold']['top1'].items()}
    env = result['environment']
    return {
        **{name: f'{phase["wall_s"]:.0f} s' for name, phase in phases.items()},
        **{
            f'{name}_target': f'{seconds // 60} min'
            for name, seconds in result['targets_s'].items()
        },
        'host': f'{env["threads"]}-thread {env["cpu"]} host',
        'date': result['created'][:10],
        'commit': result['commit'][:7],
        'teacher': top1['teacher'],
        'kd': top1['student with KD'],
        'alone': top1['student without KD'],
    }


def test_the_readme_is_short_and_opens_with_the_two_commands():
    assert len(README.splitlines()) <= 300
    opening = README.split('```bash\n', 1)[1].split('```', 1)[0].splitlines()
    assert [line.split('#')[0].strip() for line in opening] == ['make demo', 'make test']
    assert README.index('```bash\nmake demo') < README.index('\n## ')  # before anything else


def test_the_readmes_steps_are_the_pipelines():
    """The count, the numbered list and the diagram's nodes are TASK_ORDER's."""
    order = task_order()
    count = NUMBER_WORDS[len(order)]
    assert f'pipeline of {count} containerised steps' in README
    said = set(
        re.findall(r'\b(' + '|'.join(NUMBER_WORDS) + r')\b (?:containerised )?steps', README)
    )
    said |= set(re.findall(r'\b(' + '|'.join(NUMBER_WORDS) + r')\b steps', PAGES['local-run.md']))
    said |= set(
        re.findall(r'\b(' + '|'.join(NUMBER_WORDS) + r')\b steps', PAGES['pipeline.md'].lower())
    )
    assert said == {count}, said
    steps = section('## What it does')
    numbered = re.findall(r'^(\d+)\. \*\*([\w ]+)\*\*', steps, flags=re.M)
    assert [int(n) for n, _ in numbered] == list(range(1, len(order) + 1))
    mermaid = steps.split('```mermaid', 1)[1].split('```', 1)[0]
    nodes = re.findall(r'^\s*(\w+)\[', mermaid, flags=re.M)
    assert [node.replace('_', '-') for node in nodes] == list(order)
    edges = re.findall(r'(\w+)\s*-->(?:\|[^|]*\|)?\s*(?=(\w+))', mermaid)
    chain = list(itertools.pairwise(nodes))
    assert sorted(edges) == sorted(chain), 'the diagram is the chain of TASK_ORDER'


def test_the_pipeline_pages_step_table_is_the_pipelines():
    import components

    rows = table_rows(section('## Steps', PAGES['pipeline.md']))
    assert [re.search(r'`components/(\w+)`', row[1])[1] for row in rows] == list(components.STEPS)
    assert [step.replace('_', '-') for step in components.STEPS] == list(task_order())


def test_the_layers_picture_shows_every_package():
    picture = section('## The layers').split('```', 2)[1]
    shown = set(re.findall(r'video_kd/(\w+)/', picture))
    packages = {p.parent.name for p in (ROOT / 'video_kd').glob('*/__init__.py')}
    packages -= {'configs'}
    assert shown == packages
    for name in re.findall(r'video_kd/(\w+\.py)', picture):
        assert (ROOT / 'video_kd' / name).is_file(), name
    assert 'only `storage/` talks to S3' in section('## The layers')


def test_the_demo_figures_are_the_benchmarks():
    figures = demo_figures()
    demo = README[README.index('**The demo**') : README.index('\n\n', README.index('**The demo**'))]
    demo = ' '.join(demo.split())
    for key in ('install', 'cold', 'warm', 'host', 'date', 'commit'):
        assert figures[key] in demo, (key, figures[key])
    for key in ('cold', 'warm'):  # each target named with whether it was met
        seconds, target = float(figures[key].split()[0]), float(figures[f'{key}_target'].split()[0])
        verdict = 'met' if seconds <= 60 * target else 'missed'
        assert f'{figures[f"{key}_target"]} {key} target {verdict}' in demo, (key, verdict)
    assert (
        f'the teacher {figures["teacher"]} top-1, the student with KD {figures["kd"]}, '
        f'the student alone {figures["alone"]}' in demo
    )


def test_every_number_in_the_readmes_prose_is_a_checked_one():
    """A number a reader reads in the README is one of the figures the tests above check;
    the CI line is the integrator's placeholder, filled in when measured."""
    figures = demo_figures()
    allowed = {figures[key].split()[0] for key in ('install', 'cold', 'warm')}
    allowed |= {figures[f'{key}_target'].split()[0] for key in ('cold', 'warm')}
    allowed.add(figures['date'].split('-')[0])
    allowed |= {figures[key].rstrip('%') for key in ('teacher', 'kd', 'alone')}
    allowed.add(figures['host'].split('-')[0])
    allowed |= {'2.15.0', '2.2'}  # KFP backend, Trainer: test_kfp_and_trainer_minimums
    errors = (ROOT / 'video_kd' / 'core' / 'errors.py').read_text()
    (status,) = re.findall(r'exit status (\d+)', prose(README))
    assert f'BAD_INPUT = {status} ' in errors  # a UserError's
    allowed.add(status)
    text = '\n'.join(
        line
        for line in prose(README).splitlines()
        if not line.startswith('CI: ') and not re.match(r'\d+\. \*\*', line)
    )
    numbers = re.findall(r'(?<![\w./<>+-])\d+(?:\.\d+)*(?![\w])', text)
    unchecked = sorted(set(numbers) - allowed)
    assert not unchecked, f'numbers in README.md that no test computes or checks: {unchecked}'
    assert re.search(r'^CI: .* min from a clean clone \(measured .*\)$', README, flags=re.M)


def test_kfp_and_trainer_minimums():
    """The minimum versions the README's quickstart names are the code's."""
    import pipelines.kd_pipeline as kd

    quickstart = ' '.join(section('## On a cluster, quickly').split())
    assert (
        re.findall(r'KFP backend >= ([\d.]+)', quickstart)
        == re.findall(r'KFP backend >= ([\d.]+)', kd.__doc__)[:1]
    )
    trainjob = (ROOT / 'video_kd' / 'backends' / 'trainjob.py').read_text()
    (trainer,) = re.findall(r'Kubeflow Trainer >= ([\d.]+)', quickstart)
    assert f'Kubeflow Trainer >= {trainer} ' in trainjob


def test_the_parameters_table_names_every_pipeline_parameter():
    table = table_rows(section('## Parameters', PAGES['pipeline.md']))
    named = {name for row in table for name in re.findall(r'`(\w+)`', row[0])}
    missing = sorted(set(pipeline_parameters()) - named)
    assert not missing, f"docs/pipeline.md's parameter table lacks {missing}"
