"""Plots of a run, as PNG files and one self-contained HTML page (a KFP ``Output[HTML]``).

* training curves from mmengine's ``vis_data/scalars.json`` of the run's logs:
  student loss, distill loss (per epoch, mean of the logged iterations) and the
  validation top-1 of student and teacher per validation epoch; with the student-alone
  baseline's own logs, its loss and validation top-1 beside them;
* the student's confusion matrix as a heat map (row-normalised colour, counts written):
  all classes up to ``class_report.MAX_CONFUSION_CLASSES``, else the sub-matrix of the
  classes most involved in confusions, so labels stay legible and the image bounded
  (``MAX_IMAGE_PX``) at Kinetics-400 size;
* per-class accuracy of each model, sorted;
* accuracy vs latency of teacher, student and student alone.

The page opens with the headline (KD gain with its sign, speedup, the model card's
verdict) and the run's parameters, then the bounded per-class tables of
``video_kd.deploy.class_report`` (the full table: ``per_class.csv`` beside the page).

The HTML page inlines every image as a ``data:`` URI and its style in a ``<style>``
element: no scripts, fonts or requests to anything outside it, which is what the
Kubeflow UI's sandboxed HTML viewer shows reliably.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video_kd.core.errors import UserError
from video_kd.deploy import class_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALARS = 'scalars.json'
CURVES_PNG = 'training_curves.png'
CONFUSION_PNG = 'confusion_matrix.png'
ACC_LATENCY_PNG = 'accuracy_vs_latency.png'
PER_CLASS_PNG = 'per_class_accuracy.png'
REPORT_HTML = 'report.html'
DPI = 110
MAX_IMAGE_PX = 1400  # no image of the report is wider or taller, at any number of classes
BASELINE = 'student alone'  # the baseline's curves: its own training log's names, prefixed


class PlotError(UserError):
    """A log or an input the plots need is missing or unreadable."""


# --------------------------------------------------------------------------- training logs


def find_scalars(log_root: str | Path) -> list[Path]:
    """Every ``<timestamp>/vis_data/scalars.json`` under ``log_root``, oldest attempt first.

    A resumed training wrote one log directory per attempt; all of them together are
    the run's history.  ``log_root`` may also be one scalars.json file.
    """
    root = Path(log_root)
    if root.is_file():
        return [root]
    found = sorted(root.glob(f'*/vis_data/{SCALARS}')) + sorted(root.glob(f'vis_data/{SCALARS}'))
    if not found:
        raise PlotError(
            f'no training log under {root}: expected <timestamp>/vis_data/{SCALARS} '
            '(the training step uploads it to <run>/train/logs/)'
        )
    return found


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """The JSON lines of mmengine scalars files, in order."""
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise PlotError(f'{path}:{number} is not a JSON line: {error.msg}') from error
    return records


def _loss_keys(record: dict[str, Any]) -> dict[str, str]:
    """Curve name -> key of a train record: the student's classification loss, the
    distillation loss(es) summed, as MMRazor (``student.``/``distill.``) or plain
    MMAction2 (``loss_cls``) name them."""
    keys = {}
    for key in record:
        if key in ('student.loss_cls', 'loss_cls'):
            keys['student loss'] = key
        elif key.startswith('distill.loss'):
            keys.setdefault('distill loss', key)
    return keys


def training_curves(log_root: str | Path) -> dict[str, dict[int, float]]:
    """Curve name -> {epoch: value}: 'student loss', 'distill loss' (epoch means of the
    logged iterations), 'student val top-1', 'teacher val top-1'.  A later attempt's
    epochs replace an earlier one's."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for path in find_scalars(log_root):
        attempt: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for record in read_records([path]):
            if 'epoch' in record and 'iter' in record:  # a training iteration
                for name, key in _loss_keys(record).items():
                    attempt[name][record['epoch']].append(
                        sum(v for k, v in record.items() if k.startswith('distill.loss'))
                        if name == 'distill loss'
                        else record[key]
                    )
            elif 'acc/top1' in record:  # a validation epoch: 'step' is the epoch
                curves['student val top-1'][record['step']] = record['acc/top1']
                if 'teacher.acc/top1' in record:
                    curves['teacher val top-1'][record['step']] = record['teacher.acc/top1']
        for name, epochs in attempt.items():
            sums[name].update(epochs)
    for name, epochs in sums.items():
        curves[name] = {e: sum(v) / len(v) for e, v in sorted(epochs.items())}
    if not any(curves.values()):
        raise PlotError(f'the training logs under {log_root} hold no losses or accuracies')
    return {name: dict(sorted(points.items())) for name, points in curves.items() if points}


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')  # files only: no display in a pod
    import matplotlib.pyplot as plt

    return plt


def baseline_curves(log_root: str | Path) -> dict[str, dict[int, float]]:
    """The student-alone training's curves, named apart from the KD run's
    ('student alone loss', 'student alone val top-1')."""
    curves = training_curves(log_root)
    return {
        name.replace('student', BASELINE, 1): points
        for name, points in curves.items()
        if name in ('student loss', 'student val top-1')
    }


def plot_training_curves(curves: dict[str, dict[int, float]], path: str | Path) -> Path:
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, style in (
        ('student loss', '-o'),
        ('distill loss', '-o'),
        (f'{BASELINE} loss', ':^'),
    ):
        if name in curves:
            xs, ys = zip(*curves[name].items(), strict=True)
            loss_ax.plot(xs, ys, style, label=name)
    loss_ax.set(title='Training loss (epoch mean)', xlabel='epoch', ylabel='loss')
    for name, style in (
        ('student val top-1', '-o'),
        ('teacher val top-1', '--s'),
        (f'{BASELINE} val top-1', ':^'),
    ):
        if name in curves:
            xs, ys = zip(*curves[name].items(), strict=True)
            acc_ax.plot(xs, ys, style, label=name)
    acc_ax.set(title='Validation top-1', xlabel='epoch', ylabel='top-1', ylim=(-0.02, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=ax.transAxes)
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[float]], classes: list[str], path: str | Path) -> Path:
    """Rows: true class, columns: predicted; colour is the fraction of the true class's
    videos, text the count.  Above ``class_report.MAX_CONFUSION_CLASSES`` classes, only the
    sub-matrix of the classes most involved in confusions (``class_report.confusion_focus``)."""
    plt = _pyplot()
    focus = class_report.confusion_focus(matrix)
    shown = class_report.sub_matrix(matrix, focus)
    labels = [class_report.short_label(classes[i]) for i in focus]
    size = len(focus)
    side = min(max(4.0, 0.45 * size + 2), (MAX_IMAGE_PX - 20) / DPI - 1)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    rows = [sum(matrix[i]) or 1 for i in focus]  # the whole row: a share of all its videos
    fractions = [[v / rows[i] for v in row] for i, row in enumerate(shown)]
    image = ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label='fraction of the true class')
    for i, row in enumerate(shown):  # at most MAX_CONFUSION_CLASSES: counts stay legible
        for j, value in enumerate(row):
            colour = 'white' if fractions[i][j] > 0.6 else 'black'
            ax.text(j, i, f'{int(value)}', ha='center', va='center', color=colour, fontsize=8)
    ax.set_xticks(range(size), labels, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(size), labels, fontsize=8)
    title = 'Confusion matrix (student)'
    if size < len(classes):
        title += f': the {size} most-confused of {len(classes)} classes'
    ax.set(title=title, xlabel='predicted', ylabel='true')
    return _save(fig, path)


def plot_per_class_accuracy(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Each model's per-class accuracies, sorted (a model's own order): how many classes
    each gets right, at any number of classes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for (name, label), style in zip(class_report.MODELS, ('-', ':', '--'), strict=True):
        values = class_report.accuracies(metrics).get(name)
        if values:
            ys = sorted((v for v in values if v is not None), reverse=True)
            ax.plot(range(1, len(ys) + 1), ys, style, drawstyle='steps-post', label=label)
    ax.set(
        title='Per-class accuracy, sorted',
        xlabel='classes, best to worst',
        ylabel='accuracy',
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_latency(points: list[dict[str, Any]], path: str | Path) -> Path:
    """points: [{'name', 'latency_ms', 'top1'}]; log-scale latency."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for point, marker in zip(points, 'os^Dv', strict=False):
        ax.scatter(point['latency_ms'], point['top1'], s=80, marker=marker, label=point['name'])
        ax.annotate(
            point['name'],
            (point['latency_ms'], point['top1']),
            textcoords='offset points',
            xytext=(6, 6),
        )
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale('log')
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 5, 10, 20, 50, ... ms
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 50, not 5x10^1
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(
        title='Accuracy vs latency (CPU, batch 1)',
        xlabel='latency, ms (log scale)',
        ylabel='val top-1',
        ylim=(-0.02, 1.05),
    )
    ax.grid(alpha=0.3, which='both')
    ax.legend(loc='lower right')
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def accuracy_latency_points(
    metrics: Mapping[str, Any],
    speed: dict[str, Any],
    engine: str = 'onnxruntime',
    shape: str = 'run',
) -> list[dict[str, Any]]:
    """Teacher / student / student alone from metrics.json and a ``measure_speed`` result.

    The student alone has the student's architecture, hence its latency.
    """
    result = speed['shapes'][shape]
    if not all(engine in entry for entry in result['models'].values()):
        engine = 'pytorch'  # a model that did not export to ONNX: compare like with like
    latency = {
        name: entry[engine]['latency_ms']['median'] for name, entry in result['models'].items()
    }
    points = []
    for key, name, model in (
        ('teacher', 'teacher', 'teacher'),
        ('student', 'student (KD)', 'student'),
        ('baseline', 'student alone', 'student'),
    ):
        if key in metrics:
            points.append(
                {'name': name, 'latency_ms': latency[model], 'top1': metrics[key]['top1_acc']}
            )
    return points


# --------------------------------------------------------------------------- HTML


STYLE = """
body { font-family: sans-serif; margin: 24px; color: #1b1b1b; background: #ffffff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #c8c8c8; padding: 4px 10px; text-align: right; }
th { background: #eef2f7; } td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #dddddd; }
.no { color: #b00020; font-weight: bold; }
.headline { font-size: 16px; background: #f4f7fb; border: 1px solid #c8d3e1; padding: 8px 14px; }
details { margin: 8px 0; } summary { cursor: pointer; }
"""


def data_uri(png: str | Path) -> str:
    payload = base64.b64encode(Path(png).read_bytes()).decode('ascii')
    return f'data:image/png;base64,{payload}'


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in headers)
    body = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows
    )
    return f'<table><tr>{head}</tr>{body}</table>'


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A complete page: sections are (heading, inner HTML)."""
    parts = [
        '<!DOCTYPE html>',
        '<html lang="en"><head><meta charset="utf-8">',
        f'<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>',
        f'<h1>{html.escape(title)}</h1>',
    ]
    parts += [f'<h2>{html.escape(heading)}</h2>\n{inner}' for heading, inner in sections]
    parts.append('</body></html>')
    return '\n'.join(parts) + '\n'


def image_section(png: Path, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}">'


def _fmt(value: float | None) -> str:
    return (
        '' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.4f}'
    )


def accuracy_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for key, name in (
        ('student', 'student (KD)'),
        ('teacher', 'teacher'),
        ('baseline', 'student alone'),
    ):
        if key in metrics:
            m = metrics[key]
            rows.append([name, _fmt(m['top1_acc']), _fmt(m['top5_acc']), _fmt(m['mean_class_acc'])])
    return rows


def speed_table(speed: dict[str, Any]) -> str:
    """Latency (batch 1) and throughput of teacher and student per input and engine."""
    rows = []
    for label, result in speed['shapes'].items():
        shape = 'x'.join(map(str, result['clip_shape']))
        for name, entry in result['models'].items():
            for engine in (e for e in ('pytorch', 'onnxruntime') if e in entry):
                speedup = result['speedup'].get(engine)  # none when one model has no ONNX
                rows.append(
                    [
                        f'{label} ({shape})',
                        name,
                        engine,
                        f'{entry[engine]["latency_ms"]["median"]:.1f}',
                        f'{entry[engine]["throughput_clips_per_s"]["median"]:.1f}',
                        f'{speedup["latency"]["median"]:.2f}x' if speedup else 'n/a',
                    ]
                )
    headers = ['input', 'model', 'engine', 'ms (batch 1)', 'clips/s', 'student speedup']
    return html_table(headers, rows)


def parity_table(parity: dict[str, Any]) -> str:
    rows = [
        ['val clips', parity['num_clips']],
        ['of the val list', parity.get('val_clips', parity['num_clips'])],
        ['sample', parity.get('sample', 'all')],
        ['max abs logit difference', f'{parity["max_abs_logit_diff"]:.3g}'],
        ['tolerance', f'{parity.get("tolerance", float("nan")):g}'],
        ['top-1 agreement', f'{parity["top1_agreement"]:.4f}'],
        [
            'top-1 ONNX / PyTorch',
            f'{parity["top1_acc_onnx"]:.4f} / {parity["top1_acc_pytorch"]:.4f}',
        ],
    ]
    return html_table(['', 'value'], rows)


def headline_html(items: list[tuple[str, str]]) -> str:
    body = ''.join(
        f'<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>' for label, text in items
    )
    return f'<ul class="headline">{body}</ul>'


def parameters_table(parameters: Mapping[str, Any]) -> str:
    rows = [
        [name, value if isinstance(value, str) else json.dumps(value)]
        for name, value in sorted(parameters.items())
    ]
    return html_table(['parameter', 'value'], rows)


def per_class_html(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The bounded per-class tables, then every class (worst first) folded away."""
    found = [
        (
            title,
            (f'<p>{html.escape(intro.replace("`", ""))}</p>' if intro else '') + html_table(*table),
        )
        for title, intro, table in class_report.sections(metrics)
    ]
    rows = class_report.class_rows(metrics)
    if len(rows) > class_report.MAX_FULL_TABLE_CLASSES:
        every = sorted(rows, key=lambda r: (r['student'] is None, r['student'] or 0.0, r['index']))
        found.append(
            (
                f'All {len(rows)} classes',
                '<details><summary>per-class accuracy, worst first (also '
                f'{class_report.PER_CLASS_CSV})</summary>'
                + html_table(*class_report.class_table(every))
                + '</details>',
            )
        )
    return found


def make_report(
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any],
    log_root: str | Path,
    speed: dict[str, Any] | None = None,
    parity: dict[str, Any] | None = None,
    title: str = 'Distilled student',
    extra_sections: list[tuple[str, str]] | None = None,
    baseline_log_root: str | Path | None = None,
    headline: list[tuple[str, str]] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """The PNGs, per_class.csv and report.html in ``out_dir``; returns name -> path.

    ``metrics`` is the evaluation's metrics.json, ``log_root`` a local copy of
    ``<run>/train/logs/``, ``speed`` a ``video_kd.deploy.speed.measure_speed`` result (the
    accuracy-vs-latency plot and the speed table need it), ``parity`` the export's
    parity.json, ``baseline_log_root`` the student-alone training's logs (its curves are
    drawn beside), ``headline`` (label, text) pairs shown first (``model_card.headline``),
    ``parameters`` the run's.  A missing training log raises PlotError.
    """
    out_dir = Path(out_dir)
    curves = training_curves(log_root)  # first: a missing log fails before anything is drawn
    if baseline_log_root:
        curves.update(baseline_curves(baseline_log_root))
    rows = class_report.class_rows(metrics)
    written = {
        'curves': plot_training_curves(curves, out_dir / CURVES_PNG),
        'confusion': plot_confusion_matrix(
            metrics['confusion_matrix'], metrics['classes'], out_dir / CONFUSION_PNG
        ),
        'per_class': plot_per_class_accuracy(metrics, out_dir / PER_CLASS_PNG),
        'per_class_csv': class_report.write_csv(rows, out_dir / class_report.PER_CLASS_CSV),
    }
    sections = [('Headline', headline_html(headline))] if headline else []
    if parameters:
        sections.append(('Run parameters', parameters_table(parameters)))
    sections.append(
        ('Accuracy', html_table(['model', 'top-1', 'top-5', 'mean-class'], accuracy_rows(metrics)))
    )
    sections.append(('Training curves', image_section(written['curves'], 'training curves')))
    sections.append(
        ('Per-class accuracy', image_section(written['per_class'], 'per-class accuracy'))
    )
    sections += per_class_html(metrics)
    sections.append(('Confusion matrix', image_section(written['confusion'], 'confusion matrix')))
    if speed:
        shape = 'run' if 'run' in speed['shapes'] else next(iter(speed['shapes']))
        points = accuracy_latency_points(metrics, speed, shape=shape)
        written['accuracy_latency'] = plot_accuracy_vs_latency(points, out_dir / ACC_LATENCY_PNG)
        sections.append(
            (
                'Accuracy vs latency',
                image_section(written['accuracy_latency'], 'accuracy vs latency'),
            )
        )
        sections.append(('Speed (CPU)', speed_table(speed)))
    if parity:
        sections.append(('Export parity (ONNX Runtime vs PyTorch)', parity_table(parity)))
    sections += extra_sections or []
    written['html'] = out_dir / REPORT_HTML
    written['html'].write_text(html_page(title, sections))
    return written
