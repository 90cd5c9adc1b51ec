"""The evaluation's summary (``metrics.json``) and its Markdown report (``report.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from video_kd.core.artifacts import MetricsSummary, Student, Teacher

ACCURACY_KEYS = ('top1_acc', 'top5_acc', 'mean_class_acc')


def summarise_metrics(run_id: str, results: Mapping[str, Mapping[str, Any]]) -> MetricsSummary:
    """metrics.json: the student's accuracies and confusion matrix, the others' accuracies,
    with a baseline the KD gain (student minus student alone), and which config and test
    pipeline scored each model (``scored_with``).  ``results``: each model's
    ``distill.evaluate.evaluate`` (``ModelScores``)."""
    summary: dict[str, Any] = {
        'run_id': run_id,
        'num_val': results['student']['num_samples'],
        'classes': results['student']['classes'],
        'student': {k: results['student'][k] for k in ACCURACY_KEYS},
        'confusion_matrix': results['student']['confusion_matrix'],
    }
    for name in ('teacher', 'baseline', 'current'):
        if name in results:
            summary[name] = {k: results[name][k] for k in ACCURACY_KEYS}
    if 'baseline' in results:
        summary['kd_gain'] = {
            k: summary['student'][k] - summary['baseline'][k] for k in ACCURACY_KEYS
        }
    summary['scored_with'] = {  # each model's config and test views (the teacher: its own)
        name: {
            'config': result.get('scored_with', result.get('config', '')),
            'test_pipeline': result.get('test_pipeline', []),
        }
        for name, result in results.items()
    }
    return cast(MetricsSummary, summary)


def markdown_report(
    summary: MetricsSummary, student: Student, teacher: Teacher | None,
    baseline_url: str,
) -> str:  # fmt: skip
    """The report the KFP UI shows under the evaluation step."""
    rows = [('student (KD)', summary['student'])]
    if 'teacher' in summary:
        rows.append(('teacher', summary['teacher']))
    if 'baseline' in summary:
        rows.append(('student alone (no KD)', summary['baseline']))
    if 'current' in summary:
        rows.append(('current student (promotion gate)', summary['current']))
    lines = [
        f'# Knowledge distillation: run `{summary["run_id"]}`',
        '',
        f'Validation set: {summary["num_val"]} videos, {len(summary["classes"])} classes.',
        '',
        '| model | top-1 | top-5 | mean-class acc |',
        '|---|---|---|---|',
    ]
    lines += [
        f'| {name} | {m["top1_acc"]:.4f} | {m["top5_acc"]:.4f} | {m["mean_class_acc"]:.4f} |'
        for name, m in rows
    ]
    if 'kd_gain' in summary:
        gain = summary['kd_gain']
        lines += [
            '',
            f'**KD gain** (student with KD minus without): top-1 '
            f'{gain["top1_acc"]:+.4f}, mean-class {gain["mean_class_acc"]:+.4f}.',
        ]
    found = summary.get('current_student')
    if found and found['problem']:
        lines += [
            '',
            f'Current student of `{found["model_name"]}` not compared: {found["problem"]}',
        ]
    lines += ['', f'Student checkpoint: `{student["s3_uri"]}`']
    if teacher:
        lines.append(f'Teacher checkpoint: `{teacher["s3_uri"]}`')
    if baseline_url:
        lines.append(f'Baseline checkpoint: `{baseline_url}`')
    lines += [
        '',
        '## Confusion matrix (student)',
        '',
        '| true \\ predicted | ' + ' | '.join(summary['classes']) + ' |',
        '|---' * (len(summary['classes']) + 1) + '|',
    ]
    for name, row in zip(summary['classes'], summary['confusion_matrix'], strict=True):
        lines.append(f'| {name} | ' + ' | '.join(str(int(v)) for v in row) + ' |')
    return '\n'.join(lines) + '\n'
