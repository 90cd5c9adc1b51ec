"""Per-class views of an evaluation that stay readable at Kinetics-400 size (400 classes).

Everything here reads the evaluation's ``metrics.json`` (``steps.report.summarise_metrics``):
the student's confusion matrix and each model's per-class accuracy (``per_class_acc``, from
that model's own confusion matrix).  What a person reads is bounded whatever the number of
classes: the N worst classes, the N most-confused pairs, the N classes KD helped / hurt
most, and the confusion sub-matrix of at most ``MAX_CONFUSION_CLASSES`` classes (those
most involved in the student's confusions).  The full per-class table is a CSV file
(``per_class.csv``) next to the report.

Pure Python: the evaluation step renders its Markdown with it, the export step its HTML.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PER_CLASS_CSV = 'per_class.csv'
TOP_N = 10  # rows of each bounded list (worst classes, confused pairs, KD helped / hurt)
MAX_CONFUSION_CLASSES = 20  # classes of the confusion view: labels stay legible
MAX_FULL_TABLE_CLASSES = 20  # up to this many classes the Markdown shows every class
MAX_LABEL_CHARS = 32  # a tick label longer than this is cut (the tables keep the full name)
# What the Markdown reports (report.md, model_card.md) may weigh at any number of classes:
# the bounded lists above, the run's parameters and the accuracy tables fit well inside.
MAX_MARKDOWN_BYTES = 24_000
MODELS = (('student', 'student (KD)'), ('baseline', 'student alone'), ('teacher', 'teacher'))


def per_class_accuracy(matrix: Sequence[Sequence[float]]) -> list[float | None]:
    """Recall per true class (a confusion matrix's row): None for a class without samples."""
    return [(row[i] / total) if (total := sum(row)) else None for i, row in enumerate(matrix)]


def accuracies(metrics: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Model -> per-class accuracy: ``per_class_acc`` when the evaluation wrote it, else the
    student's from its confusion matrix (an older metrics.json)."""
    found = dict(metrics.get('per_class_acc') or {})
    if 'student' not in found:
        found['student'] = per_class_accuracy(metrics['confusion_matrix'])
    return {name: found[name] for name, _ in MODELS if name in found}


def class_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per class: name, val videos, each model's accuracy, KD change (student minus
    student alone, when there is a baseline) and the student's most frequent wrong answer."""
    classes, matrix = metrics['classes'], metrics['confusion_matrix']
    per_model = accuracies(metrics)
    rows = []
    for i, name in enumerate(classes):
        wrong = [(count, j) for j, count in enumerate(matrix[i]) if j != i and count]
        count, j = max(wrong, default=(0, -1))
        row: dict[str, Any] = {'index': i, 'class': name, 'videos': int(sum(matrix[i]))}
        row.update({model: acc[i] for model, acc in per_model.items()})
        if 'baseline' in per_model and None not in (row['student'], row['baseline']):
            row['kd_change'] = row['student'] - row['baseline']
        row['confused_with'] = f'{classes[j]} ({int(count)})' if count else ''
        rows.append(row)
    return rows


def worst_classes(rows: list[dict[str, Any]], n: int = TOP_N) -> list[dict[str, Any]]:
    """The student's ``n`` lowest-accuracy classes (ties: more videos first, then name)."""
    scored = [r for r in rows if r['student'] is not None]
    return sorted(scored, key=lambda r: (r['student'], -r['videos'], r['class']))[:n]


def kd_changes(
    rows: list[dict[str, Any]], n: int = TOP_N
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(classes KD helped most, classes it hurt most) vs the student alone; each at most
    ``n`` rows and only real changes (a class KD left as it was is neither)."""
    changed = [r for r in rows if r.get('kd_change')]
    helped = sorted((r for r in changed if r['kd_change'] > 0), key=lambda r: -r['kd_change'])
    hurt = sorted((r for r in changed if r['kd_change'] < 0), key=lambda r: r['kd_change'])
    return helped[:n], hurt[:n]


def confused_pairs(
    matrix: Sequence[Sequence[float]], n: int = TOP_N
) -> list[tuple[int, int, int, float]]:
    """The ``n`` largest off-diagonal cells: (true, predicted, videos, share of the true
    class's videos), most videos first."""
    cells = [
        (int(count), i, j)
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        if i != j and count
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(i, j, count, count / sum(matrix[i])) for count, i, j in cells[:n]]


def confusion_focus(
    matrix: Sequence[Sequence[float]], limit: int = MAX_CONFUSION_CLASSES
) -> list[int]:
    """The classes of the confusion view: all of them up to ``limit``, else the ``limit``
    classes the student's confusions involve most, in the order of the most-confused
    pairs (so a pair's two classes sit side by side)."""
    size = len(matrix)
    if size <= limit:
        return list(range(size))
    chosen: list[int] = []
    for i, j, _, _ in confused_pairs(matrix, n=size * size):
        for k in (i, j):
            if k not in chosen and len(chosen) < limit:
                chosen.append(k)
        if len(chosen) == limit:
            return chosen
    accuracy = per_class_accuracy(matrix)  # few confusions: fill up with the worst classes
    worst = sorted(range(size), key=lambda k: accuracy[k] or 0.0)
    return chosen + [k for k in worst if k not in chosen][: limit - len(chosen)]


def sub_matrix(matrix: Sequence[Sequence[float]], indices: list[int]) -> list[list[float]]:
    return [[matrix[i][j] for j in indices] for i in indices]


def short_label(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1].rstrip() + '…'


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The full per-class table, sorted by the student's accuracy (worst first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ['index', 'class', 'videos', *[m for m, _ in MODELS if m in rows[0]]]
    columns += [c for c in ('kd_change', 'confused_with') if any(c in r for r in rows)]
    ordered = sorted(rows, key=lambda r: (r['student'] is None, r['student'] or 0.0, r['index']))
    with path.open('w', newline='') as out:
        writer = csv.DictWriter(out, columns, extrasaction='ignore')
        writer.writeheader()
        for row in ordered:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return path


def _csv_value(value: Any) -> Any:
    return f'{value:.4f}' if isinstance(value, float) else ('' if value is None else value)


# --------------------------------------------------------------------------- tables


def fmt(value: float | None) -> str:
    return '' if value is None else f'{value:.4f}'


def signed(value: float | None) -> str:
    return '' if value is None else f'{value:+.4f}'


def model_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(key, label) for key, label in MODELS if rows and key in rows[0]]


def class_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of per-class rows: accuracies, KD change, the student's top confusion."""
    columns = model_columns(rows)
    headers = ['class', 'videos', *[label for _, label in columns]]
    with_change = any('kd_change' in r for r in rows)
    headers += ['KD change'] * with_change + ['most often predicted instead']
    cells = []
    for r in rows:
        cell = [r['class'], str(r['videos']), *[fmt(r[key]) for key, _ in columns]]
        cell += [signed(r.get('kd_change'))] * with_change + [r['confused_with']]
        cells.append(cell)
    return headers, cells


def pair_table(
    classes: Sequence[str], pairs: list[tuple[int, int, int, float]]
) -> tuple[list[str], list[list[str]]]:
    headers = ['true class', 'predicted as', 'videos', 'share of the true class']
    return headers, [[classes[i], classes[j], str(c), f'{share:.2f}'] for i, j, c, share in pairs]


def sections(metrics: Mapping[str, Any], n: int = TOP_N) -> list[tuple[str, str, tuple]]:
    """The bounded per-class sections, renderer-neutral: (title, intro, (headers, cells))."""
    rows = class_rows(metrics)
    classes = metrics['classes']
    found: list[tuple[str, str, tuple]] = []
    if len(rows) <= MAX_FULL_TABLE_CLASSES:
        every = sorted(rows, key=lambda r: (r['student'] is None, r['student'] or 0.0, r['index']))
        found.append(('Per-class accuracy', 'Every class, worst first.', class_table(every)))
    else:
        found.append(
            (
                f'The {n} worst classes',
                f"Of {len(rows)}, by the student's accuracy; every class is in `{PER_CLASS_CSV}`.",
                class_table(worst_classes(rows, n)),
            )
        )
    pairs = confused_pairs(metrics['confusion_matrix'], n)
    found.append(
        (
            'Most-confused pairs',
            f"The student's {len(pairs)} largest off-diagonal confusion-matrix cells.",
            pair_table(classes, pairs),
        )
    )
    if any('kd_change' in r for r in rows):
        helped, hurt = kd_changes(rows, n)
        found.append(
            (
                'Where KD helped most',
                'Student with KD minus the student alone, per class.',
                class_table(helped),
            )
        )
        found.append(('Where KD hurt most', '', class_table(hurt)))
    return found


def markdown_table(headers: list[str], cells: list[list[str]]) -> list[str]:
    if not cells:
        return ['(none)']
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(c.replace('|', '\\|') for c in row) + ' |' for row in cells]
    return lines


def markdown_sections(metrics: Mapping[str, Any], level: str = '##') -> list[str]:
    lines: list[str] = []
    for title, intro, (headers, cells) in sections(metrics):
        lines += [f'{level} {title}', '']
        lines += [intro, ''] if intro else []
        lines += [*markdown_table(headers, cells), '']
    return lines


def bounded_markdown(text: str, what: str) -> str:
    """``text`` when it is within MAX_MARKDOWN_BYTES; else cut there, and said so."""
    data = text.encode()
    if len(data) <= MAX_MARKDOWN_BYTES:
        return text
    note = f"\n\n(cut at {MAX_MARKDOWN_BYTES} bytes: the rest of {what} is in the run's files)\n"
    keep = data[: MAX_MARKDOWN_BYTES - len(note.encode())].decode(errors='ignore')
    return keep[: keep.rfind('\n') + 1] + note
