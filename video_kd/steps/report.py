"""The evaluation's summary (``metrics.json``) and its Markdown report (``report.md``).

The report reads at Kinetics-400 size: a headline (the KD gain with its sign) and what was
scored with what at the top, then bounded per-class lists (``video_kd.deploy.class_report``)
instead of a classes x classes table; it stays under ``class_report.MAX_MARKDOWN_BYTES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from video_kd.core.artifacts import MetricsSummary, Student, Teacher
from video_kd.deploy import class_report

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
    summary['per_class_acc'] = {  # each model's own confusion matrix, row by row
        name: class_report.per_class_accuracy(result['confusion_matrix'])
        for name, result in results.items()
        if result.get('confusion_matrix')
    }
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


def headline(summary: MetricsSummary) -> str:
    """The KD gain with its sign, or why it is unknown."""
    if 'kd_gain' not in summary:
        return 'KD gain: unknown (no student-alone baseline was given)'
    gain = summary['kd_gain']
    verdict = 'KD helped' if gain['top1_acc'] > 0 else 'KD did not help'
    return (
        f'{verdict}: top-1 {gain["top1_acc"]:+.4f}, mean-class {gain["mean_class_acc"]:+.4f} '
        f'(student with KD minus the student alone)'
    )


def markdown_report(
    summary: MetricsSummary, student: Student, teacher: Teacher | None,
    baseline_url: str,
) -> str:  # fmt: skip
    """The report the KFP UI shows under the evaluation step (bounded in size)."""
    rows = [('student (KD)', summary['student'])]
    if 'teacher' in summary:
        rows.append(('teacher', summary['teacher']))
    if 'baseline' in summary:
        rows.append(('student alone (no KD)', summary['baseline']))
    if 'current' in summary:
        rows.append(('current student (promotion gate)', summary['current']))
    classes = summary['classes']
    lines = [
        f'# Knowledge distillation: run `{summary["run_id"]}`',
        '',
        f"**{headline(summary)}.** Speed and the shipping verdict: the export step's model card.",
        '',
        f'Validation set: {summary["num_val"]} videos, {len(classes)} classes.',
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
    lines += ['', '## Parameters', '', f'- student checkpoint: `{student["s3_uri"]}`']
    if teacher:
        lines.append(f'- teacher checkpoint: `{teacher["s3_uri"]}`')
    if baseline_url:
        lines.append(f'- baseline checkpoint: `{baseline_url}`')
    lines += [
        f'- {name} scored with `{scored.get("config", "")}`'
        for name, scored in summary.get('scored_with', {}).items()
    ]
    lines += ['', *class_report.markdown_sections(summary)]
    if len(classes) <= class_report.MAX_FULL_TABLE_CLASSES:
        lines += [
            '## Confusion matrix (student)',
            '',
            '| true \\ predicted | ' + ' | '.join(classes) + ' |',
            '|---' * (len(classes) + 1) + '|',
        ]
        for name, row in zip(classes, summary['confusion_matrix'], strict=True):
            lines.append(f'| {name} | ' + ' | '.join(str(int(v)) for v in row) + ' |')
    else:
        lines.append(
            f'The {len(classes)} x {len(classes)} confusion matrix is in metrics.json (and in the '
            "KFP UI's confusion-matrix artifact); the export step's report.html draws the "
            f'sub-matrix of the {class_report.MAX_CONFUSION_CLASSES} most-confused classes.'
        )
    return class_report.bounded_markdown('\n'.join(lines) + '\n', 'the evaluation')
