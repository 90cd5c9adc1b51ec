"""The benchmark scripts stay runnable and their README tables stay what the results say.

Nothing here times anything (benchmarks are scripts, see benchmarks/README.md): the
tests check that every script explains itself (--help) and that the Results section of
benchmarks/README.md is exactly what benchmarks/report.py renders from the committed
results/*.json, so no number in it can be typed in by hand or go stale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
SCRIPTS = [
    'kd_step', 'logit_cache', 'kd_gain', 'data_loading', 'demo_wall', 's3_upload', 'data_scale',
    'export_speed', 'image_ci', 'reencode', 'report', 'checkpoint_bytes', 'eval_scale',
    'serve_latency', 'runs_list',
]  # fmt: skip


def report(*flags: str) -> str:
    """What `python benchmarks/report.py [flags]` prints (the tables pasted into the docs)."""
    return subprocess.run(
        [sys.executable, str(BENCH / 'report.py'), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize('name', SCRIPTS)
def test_every_benchmark_explains_itself(name):
    result = subprocess.run(
        [sys.executable, str(BENCH / f'{name}.py'), '--help'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('usage:') and len(result.stdout) > 200


def test_readme_results_are_rendered_from_the_committed_json():
    rendered = report()
    assert '_not run yet_' not in rendered
    readme = (BENCH / 'README.md').read_text()
    start = readme.index('\n\n', readme.index('Rendered by `python benchmarks/report.py`')) + 2
    section = readme[start : readme.index('## What the numbers say')].strip()
    assert section == rendered, (
        'benchmarks/README.md Results are stale: paste `python benchmarks/report.py` there'
    )


def test_top_level_readme_k400_table_is_rendered_from_the_committed_json():
    rendered = report('--k400-summary')
    assert rendered.startswith('| Kinetics-400 (260k videos) | measured | projected | basis |')
    readme = (BENCH.parent / 'docs' / 'data.md').read_text()  # the README's data page
    marker = readme.index('Rendered by `python benchmarks/report.py --k400-summary`')
    start = readme.index('\n\n', marker) + 2
    table = readme[start : readme.index('\n\n', start)].strip()
    assert table == rendered, (
        'docs/data.md Kinetics-400 table is stale: paste `python benchmarks/report.py '
        '--k400-summary` there'
    )


def test_docs_checkpoint_bytes_table_is_rendered_from_the_committed_json():
    rendered = report('--checkpoint-bytes')
    page = (BENCH.parent / 'docs' / 'storage-and-faults.md').read_text()
    marker = page.index('Rendered by `python benchmarks/report.py --checkpoint-bytes`')
    start = page.index('\n\n', marker) + 2
    table = '\n\n'.join(page[start:].split('\n\n', 2)[:2]).strip()  # the table, its env line
    assert table == rendered, (
        'docs/storage-and-faults.md checkpoint table is stale: paste `python '
        'benchmarks/report.py --checkpoint-bytes` there'
    )


def test_evaluation_table_is_rendered_from_the_committed_json():
    rendered = report('--eval-summary')
    page = (BENCH.parent / 'docs' / 'evaluation-export.md').read_text()
    marker = page.index('Rendered by `python benchmarks/report.py --eval-summary`')
    start = page.index('\n\n', marker) + 2
    assert page[start : start + len(rendered)] == rendered, (
        'docs/evaluation-export.md evaluation table is stale: paste `python '
        'benchmarks/report.py --eval-summary` there'
    )


def test_the_serving_table_is_rendered_from_the_committed_json():
    rendered = report('--serve-latency')
    page = (BENCH.parent / 'docs' / 'serving.md').read_text()
    start = (
        page.index('\n\n', page.index('Rendered by `python benchmarks/report.py --serve-latency`'))
        + 2
    )
    assert page[start : start + len(rendered)] == rendered, (
        'docs/serving.md latency table is stale: paste `python benchmarks/report.py '
        '--serve-latency` there'
    )


def test_the_runs_list_table_in_the_docs_is_rendered_from_the_committed_json():
    rendered = report('--runs-list')
    page = (BENCH.parent / 'docs' / 'promotion.md').read_text()
    assert rendered in page, 'docs/promotion.md: paste `python benchmarks/report.py --runs-list`'


def test_the_demo_wall_table_in_the_docs_is_rendered_from_the_committed_json():
    rendered = report('--demo-wall')
    page = (BENCH.parent / 'docs' / 'local-run.md').read_text()
    assert rendered in page, 'docs/local-run.md: paste `python benchmarks/report.py --demo-wall`'
