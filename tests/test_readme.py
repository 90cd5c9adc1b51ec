"""README.md stays in step with the code: its tables render as tables, the layout table
names every module, every row of the fault matrix names a test that exists, and the
image's build steps it cites are the Dockerfile's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find('\n#', start + len(title))
    return README[start : end if end > 0 else None]


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


def test_no_table_is_split_by_a_blank_line():
    """A row after a blank line renders as text (the benchmark table lost its last row so)."""
    lines = README.splitlines()
    in_code = False
    for number, line in enumerate(lines[2:], 3):
        in_code ^= line.startswith('```')
        if in_code or not line.startswith('|'):
            continue
        before, above = lines[number - 3], lines[number - 2]
        if above == '' and before.startswith('|'):
            pytest.fail(f'README.md:{number}: a table row after a blank line: {line[:60]}')


def test_the_layout_table_names_every_module():
    layout = section('## Layout')
    named = set(re.findall(r'`([^`]+)`', layout))
    missing = []
    for path in sorted((ROOT / 'video_kd').rglob('*.py')):
        rel = path.relative_to(ROOT / 'video_kd')
        if rel.name == '__init__.py' or rel.parts[0] == 'configs':
            continue
        if len(rel.parts) == 1:  # `video_kd/storage/s3.py` or, later in a row, `s3_hook.py`
            found = rel.name in named or f'video_kd/{rel.name}' in named
        else:  # `video_kd/backends/` and, in its row, `spec`
            found = f'video_kd/{rel.parent.as_posix()}/' in named and rel.stem in named
        if not found:
            missing.append(f'video_kd/{rel.as_posix()}')
    assert not missing, f'the README layout table lacks {missing}'


def test_the_steps_row_lists_every_step_module():
    layout = section('## Layout')
    (row,) = [r for r in table_rows(layout) if r[0] == '`video_kd/steps/`']
    for path in (ROOT / 'video_kd' / 'steps').glob('*.py'):
        if path.name != '__init__.py':
            assert f'`{path.stem}`' in row[1], path.stem


def fault_matrix_rows() -> list[list[str]]:
    return table_rows(section('### Bad input and faults'))


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
    """Issue 15's cases and issue 14's bad export inputs each have a row."""
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
    ):
        assert needle in matrix, needle


def test_the_deviations_table_names_every_intended_difference():
    """Every key of tests/test_seed_fidelity.py's allow-lists (the intended differences from
    the seed's configs) is named, in backquotes, in the README's table of deviations: the
    table cannot drift from the list the fidelity tests enforce."""
    import test_seed_fidelity as fidelity

    allowed = {key for _, intended in fidelity.PLAIN_CONFIGS.values() for key in intended}
    allowed |= {key for intended in fidelity.KD_CONFIGS.values() for key in intended}
    allowed |= set(fidelity.SWIN_BACKBONE)
    assert len(allowed) >= 10  # the lists were read
    deviations = section('### Deviations from the seed')
    table = ' '.join(' '.join(row) for row in table_rows(deviations))
    missing = sorted(key for key in allowed if f'`{key}`' not in table)
    assert not missing, f'allow-listed differences not in the README deviations table: {missing}'


def test_the_image_builds_step_numbers_are_the_dockerfiles():
    """The figures of "Build and push the images" are the Dockerfile's: podman numbers the
    instructions from FROM on (STEP n/total), the example build error names the step that
    installs the source and a module that exists, and a source edit rebuilds every step
    from the first source COPY on (test_image's test_a_source_edit_rebuilds_only_...)."""
    import importlib.util

    from test_docker import DOCKER, parse

    ins = parse((DOCKER / 'Dockerfile').read_text())
    steps = ins[next(i for i, s in enumerate(ins) if s.cmd == 'FROM') :]
    text = README[README.index('### 1. Build and push the images') : README.index('### 2. ')]
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
