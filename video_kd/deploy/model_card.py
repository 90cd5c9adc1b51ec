"""A model card for the distilled student: Markdown for people, JSON for tools.

Everything a reviewer needs to approve shipping the student, from what the steps
already have: what the model is (configs, classes, input), where it comes from
(teacher URL + sha256, dataset URI + manifest sha256, pretrained weights, the
pipeline's parameters, code version, image), how good it is (student / teacher /
student-alone accuracy under the stated test protocol, KD gain), how fast
(teacher vs student speedups) and whether the exported file is faithful (parity).
A short checklist at the top says which of those a reviewer should look at twice.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video_kd import __version__
from video_kd.core.errors import UserError
from video_kd.deploy import class_report
from video_kd.openmmlab.config import is_distill_config, load_config

if TYPE_CHECKING:
    from mmengine.config import Config

CARD_JSON = 'model_card.json'
CARD_MARKDOWN = 'model_card.md'
ACCURACY_ROWS = (
    ('student', 'student (KD)'),
    ('teacher', 'teacher'),
    ('baseline', 'student alone (no KD)'),
)
MIN_VAL_CLIPS = 100  # below this, a percentage point is less than one clip's noise
MAX_LISTED_CLASSES = 60  # the card lists the classes by name up to this many (else: a count)
MAX_TEACHER_GAP = 0.10  # top-1 the student may lose to its teacher before a reviewer asks why
SPEED_ENGINES = ('pytorch', 'onnxruntime')  # video_kd.deploy.speed.ENGINES (not imported: torch)
GIT_COMMIT_ENV = 'VIDEO_KD_GIT_COMMIT'  # set in an image by its build (the source has no .git)
DISTRIBUTION = 'kubeflow-video-kd'


class ModelCardError(UserError):
    """An input the card needs is missing or malformed."""


def lineage(
    *,
    teacher_url: str,
    teacher_sha256: str,
    dataset_uri: str,
    dataset_manifest_sha256: str,
    pretrained: dict[str, str | None],
    pipeline_parameters: dict[str, Any],
    code_version: str,
    image: str,
    run_uri: str = '',
) -> dict[str, Any]:
    """Where the student comes from; every field is required so none is forgotten."""
    return {
        'teacher': {'url': teacher_url, 'sha256': teacher_sha256},
        'dataset': {'uri': dataset_uri, 'manifest_sha256': dataset_manifest_sha256},
        'pretrained_weights': pretrained,
        'pipeline_parameters': pipeline_parameters,
        'code_version': code_version,
        'image': image,
        'run_uri': run_uri,
    }


def pretrained_weights(config: str | Config) -> dict[str, str | None]:
    """``model.*.pretrained`` (and Pretrained init_cfg) values of a config as it is run.

    ``config``: a config name, or the run's resolved training config
    (``<run>/train/config.py``), which is what the run trained.  Remote weights are not
    fetched offline (``video_kd.openmmlab.config``), so they show as None: random initialisation,
    unless the run gave the student ImageNet weights (``student_pretrained_url``): then
    the student's backbone shows their URL and sha256.
    """
    cfg = load_config(config) if isinstance(config, str) else config
    found: dict[str, str | None] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == 'pretrained' and not isinstance(value, dict):
                    found[f'{where}.{key}'] = value if value else None
                elif key == 'init_cfg' and isinstance(value, dict) and 'checkpoint' in value:
                    found[f'{where}.{key}'] = value['checkpoint']
                else:
                    walk(value, f'{where}.{key}')

    walk(cfg.model, 'model')
    weights = cfg.get('student_pretrained')
    if (
        weights
    ):  # loaded by each training process (video_kd.distill.pretrained), checked tensor by tensor
        student = 'model.architecture' if is_distill_config(cfg) else 'model'
        sha = f' (sha256 {weights["sha256"]})' if weights.get('sha256') else ' (no sha256 given)'
        found[f'{student}.backbone.pretrained'] = weights['url'] + sha
    return found


def code_version() -> str:
    """``kubeflow-video-kd <version>`` and the git commit when it is known, else says so.

    The commit comes from ``VIDEO_KD_GIT_COMMIT`` (an image's build argument), from pip's
    record of a VCS install (``direct_url.json``), or from the source tree when it is a
    git checkout (``-dirty`` when it holds uncommitted changes).
    """
    commit = os.environ.get(GIT_COMMIT_ENV, '').strip() or _installed_commit() or _checkout_commit()
    return f'kubeflow-video-kd {__version__}, git commit {commit or "unknown"}'


def _installed_commit() -> str:
    from importlib import metadata

    try:
        text = metadata.distribution(DISTRIBUTION).read_text('direct_url.json')
    except metadata.PackageNotFoundError:
        return ''
    try:
        return str(json.loads(text or '{}').get('vcs_info', {}).get('commit_id', ''))
    except (ValueError, AttributeError):
        return ''


def _checkout_commit() -> str:
    source = Path(__file__).resolve().parents[2]  # video_kd/deploy/ -> the checkout
    if not (source / '.git').exists():
        return ''
    try:
        done = subprocess.run(
            ['git', '-C', str(source), 'describe', '--always', '--dirty', '--abbrev=40'],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ''
    return done.stdout.strip()


def build_model_card(
    *,
    run_id: str,
    kd_config: str,
    student_config: str,
    metrics: Mapping[str, Any],
    parity: dict[str, Any],
    preprocess: dict[str, Any],
    lineage: dict[str, Any],
    speed: dict[str, Any] | None = None,
    files: dict[str, dict[str, Any]] | None = None,
    speed_target: float = 5.0,
) -> dict[str, Any]:
    """The card as a dict (what model_card.json holds).

    ``metrics`` is the evaluation step's metrics.json (``summarise_metrics``), ``parity``
    and ``preprocess`` what ``video_kd.deploy.export.export_student`` wrote, ``speed`` what
    ``video_kd.deploy.speed.measure_speed`` returned, ``files`` name -> {uri, sha256, bytes}.
    """
    if 'student' not in metrics or 'classes' not in metrics:
        raise ModelCardError('the evaluation metrics have no student accuracy or class list')
    accuracy = {name: metrics[name] for name, _ in ACCURACY_ROWS if name in metrics}
    card: dict[str, Any] = {
        'schema': 'video-kd/model-card/v1',
        'run_id': run_id,
        'model': {
            'kd_config': kd_config,
            'student_config': student_config,
            'classes': list(metrics['classes']),
            'num_classes': len(metrics['classes']),
            'input': preprocess.get('input', {}),
            'outputs': preprocess.get('outputs', {}),
        },
        'lineage': lineage,
        'evaluation': {
            'protocol': test_protocol(metrics, preprocess),
            'accuracy': accuracy,
            'kd_gain': metrics.get('kd_gain'),
            'confusion_matrix': metrics.get('confusion_matrix'),
            'per_class_acc': metrics.get('per_class_acc'),
        },
        'export': {'parity': parity, 'files': files or {}},
        'speed': speed_summary(speed) if speed else None,
    }
    card['review'] = review_checks(card, speed_target)
    return card


def test_protocol(metrics: Mapping[str, Any], preprocess: dict[str, Any]) -> dict[str, Any]:
    outside = preprocess.get('outside_graph', {})
    return {
        'split': 'val_list.txt of the dataset',
        'num_videos': metrics.get('num_val'),
        'metrics': 'MMAction2 AccMetric (top-1, top-5, mean-class) and ConfusionMatrix',
        'frame_sampling': outside.get('frame_sampling', {}),
        'test_pipeline': [t.get('type') for t in outside.get('test_pipeline', [])],
        'clip_averaging': preprocess.get('inside_graph', {}).get('average_clips'),
    }


def speed_summary(speed: dict[str, Any]) -> dict[str, Any]:
    """Per input shape: speedups and per-model latency/throughput/FLOPs (medians only)."""
    summary = {}
    for label, result in speed['shapes'].items():
        summary[label] = {
            'clip_shape': result['clip_shape'],
            'batch': result['batch'],  # of the throughput timing (the pipeline's speed_batch_size)
            'threads': result['threads'],
            'speedup': {
                engine: {k: round(v['median'], 3) for k, v in ratio.items()}
                for engine, ratio in result['speedup'].items()
            },
            'flop_ratio': round(result['flop_ratio'], 2),
            'onnx_failed': result.get('onnx_failed', {}),
            'models': {
                name: {
                    'params': entry['params'],
                    'gflops': round(entry['flops'] / 1e9, 3),
                    **{
                        engine: {
                            'latency_ms': round(entry[engine]['latency_ms']['median'], 2),
                            'clips_per_s': round(
                                entry[engine]['throughput_clips_per_s']['median'], 2
                            ),
                        }
                        for engine in SPEED_ENGINES
                        if engine in entry  # a model that does not export: PyTorch only
                    },
                }
                for name, entry in result['models'].items()
            },
        }
    return summary


def review_checks(card: dict[str, Any], speed_target: float) -> list[dict[str, Any]]:
    """What a reviewer checks before shipping, each with ok true/false and why."""
    parity = card['export']['parity']
    accuracy = card['evaluation']['accuracy']
    checks = [
        _check(
            'export parity',
            parity.get('max_abs_logit_diff', float('inf')) <= parity.get('tolerance', 0),
            f'max abs logit difference {parity.get("max_abs_logit_diff", float("nan")):.2g} '
            f'<= {parity.get("tolerance", 0):g} on {parity.get("num_clips", 0)} val clips',
        ),
        _check(
            'ONNX top-1 = PyTorch top-1',
            parity.get('top1_acc_onnx') == parity.get('top1_acc_pytorch'),
            f'{parity.get("top1_acc_onnx", float("nan")):.4f} vs '
            f'{parity.get("top1_acc_pytorch", float("nan")):.4f}',
        ),
    ]
    gain = card['evaluation'].get('kd_gain')
    checks.append(
        _check(
            'KD helps',
            bool(gain) and gain['top1_acc'] > 0,
            f'top-1 gain {gain["top1_acc"]:+.4f} over the student alone'
            if gain
            else 'no student-alone baseline given: the gain is unknown',
        )
    )
    if 'teacher' in accuracy:
        student, teacher = accuracy['student']['top1_acc'], accuracy['teacher']['top1_acc']
        checks.append(
            _check(
                f'student within {MAX_TEACHER_GAP * 100:.0f} points of the teacher',
                teacher - student <= MAX_TEACHER_GAP,
                f'top-1 {student:.4f} vs teacher {teacher:.4f}',
            )
        )
    num_val = card['evaluation']['protocol'].get('num_videos') or 0
    checks.append(
        _check(
            'validation set size',
            num_val >= MIN_VAL_CLIPS,
            f'{num_val} videos' + ('' if num_val >= MIN_VAL_CLIPS else ': accuracy is noisy'),
        )
    )
    seed = (card.get('speed') or {}).get('seed')
    if seed:
        name = f'student >= {speed_target:g}x faster (ONNX Runtime, seed size)'
        if 'onnxruntime' in seed['speedup']:
            ratio = seed['speedup']['onnxruntime']['latency']
            checks.append(
                _check(
                    name,
                    ratio >= speed_target,
                    f'{ratio:.2f}x at batch 1 (FLOP ratio {seed["flop_ratio"]:.1f}x)',
                )
            )
        else:
            failed = '; '.join(seed.get('onnx_failed', {}).values()) or 'ONNX Runtime not timed'
            checks.append(_check(name, False, f'not measured: {failed}'))
    return checks


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {'check': name, 'ok': bool(ok), 'detail': detail}


def verdict(card: dict[str, Any]) -> str:
    """One line from the review checklist: ship, or which checks to look at."""
    failed = [c['check'] for c in card['review'] if not c['ok']]
    if not failed:
        return f'ready to ship: all {len(card["review"])} review checks pass'
    return f'review first: {len(failed)} of {len(card["review"])} checks fail ({"; ".join(failed)})'


def headline(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs a report opens with: KD gain with its sign, speedup, verdict."""
    gain = card['evaluation'].get('kd_gain')
    accuracy = card['evaluation']['accuracy']
    kd = (
        f'top-1 {gain["top1_acc"]:+.4f} ({accuracy["baseline"]["top1_acc"]:.4f} alone -> '
        f'{accuracy["student"]["top1_acc"]:.4f} with KD), mean-class '
        f'{gain["mean_class_acc"]:+.4f}'
        if gain and 'baseline' in accuracy
        else 'unknown: no student-alone baseline was given'
    )
    return [
        ('KD gain', kd),
        ('Speedup', speedup_line(card.get('speed'))),
        ('Verdict', verdict(card)),
    ]


def speedup_line(speed: dict[str, Any] | None) -> str:
    """The student's latency speedup over the teacher: the seed's input size first."""
    if not speed:
        return 'not measured in this run'
    label = 'seed' if 'seed' in speed else next(iter(speed))
    result = speed[label]
    for engine, name in (('onnxruntime', 'ONNX Runtime'), ('pytorch', 'PyTorch')):
        if engine in result['speedup']:
            shape = 'x'.join(map(str, result['clip_shape']))
            return (
                f'{result["speedup"][engine]["latency"]:.2f}x lower latency than the teacher '
                f'({name}, CPU, batch 1, {label} input {shape}; FLOP ratio '
                f'{result["flop_ratio"]:.1f}x)'
            )
    return 'not measured in this run'


def evaluation_metrics(card: dict[str, Any]) -> dict[str, Any] | None:
    """The card's evaluation as ``class_report`` reads metrics.json; None without a matrix."""
    evaluation = card['evaluation']
    if not evaluation.get('confusion_matrix'):
        return None
    return {
        'classes': card['model']['classes'],
        'confusion_matrix': evaluation['confusion_matrix'],
        'per_class_acc': evaluation.get('per_class_acc') or {},
    }


# --------------------------------------------------------------------------- Markdown


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people (and for the KFP Markdown artifact), within
    ``class_report.MAX_MARKDOWN_BYTES`` at any number of classes."""
    model = card['model']
    per_class = evaluation_metrics(card)
    lines = [
        f'# Model card: distilled student of run `{card["run_id"]}`',
        '',
        *[f'- **{label}**: {text}' for label, text in headline(card)],
        '',
        f'Student `{model["student_config"]}` distilled with `{model["kd_config"]}`; '
        f'{model["num_classes"]} classes.',
        '',
        '## Review checklist',
        '',
        '| check | ok | detail |',
        '|---|---|---|',
        *[
            f'| {c["check"]} | {"yes" if c["ok"] else "**no**"} | {c["detail"]} |'
            for c in card['review']
        ],
        '',
        *_accuracy_section(card['evaluation']),
        *(class_report.markdown_sections(per_class, level='###') if per_class else []),
        *_speed_section(card.get('speed')),
        *_export_section(card['export'], model),
        *_lineage_section(card['lineage']),
        '## Classes',
        '',
        _class_list(model['classes']),
        '',
    ]
    return class_report.bounded_markdown('\n'.join(lines), 'the card')


def _class_list(classes: list[str]) -> str:
    if len(classes) > MAX_LISTED_CLASSES:
        return (
            f"{len(classes)} classes, in the order of `preprocess.json`'s `classes` (the "
            f'per-class table: `{class_report.PER_CLASS_CSV}`).'
        )
    return ', '.join(f'{i}: `{name}`' for i, name in enumerate(classes))


def _accuracy_section(evaluation: dict[str, Any]) -> list[str]:
    protocol = evaluation['protocol']
    lines = [
        '## Accuracy',
        '',
        f'{protocol["num_videos"]} videos of {protocol["split"]}; {protocol["metrics"]}. '
        f'Test pipeline: {" -> ".join(protocol["test_pipeline"])}; frame sampling '
        f'`{json.dumps(protocol["frame_sampling"])}`; clip averaging `{protocol["clip_averaging"]}`.',
        '',
        '| model | top-1 | top-5 | mean-class |',
        '|---|---|---|---|',
    ]
    for name, label in ACCURACY_ROWS:
        if name in evaluation['accuracy']:
            m = evaluation['accuracy'][name]
            lines.append(
                f'| {label} | {m["top1_acc"]:.4f} | {m["top5_acc"]:.4f} | '
                f'{m["mean_class_acc"]:.4f} |'
            )
    gain = evaluation.get('kd_gain')
    if gain:
        lines += [
            '',
            f'**KD gain** (student with KD minus student alone): top-1 '
            f'{gain["top1_acc"]:+.4f}, top-5 {gain["top5_acc"]:+.4f}, mean-class '
            f'{gain["mean_class_acc"]:+.4f}.',
        ]
    return [*lines, '']


def _speed_section(speed: dict[str, Any] | None) -> list[str]:
    if not speed:
        return ['## Speed', '', 'Not measured in this run.', '']
    batches = ', '.join(str(b) for b in sorted({result['batch'] for result in speed.values()}))
    lines = [
        '## Speed (CPU)',
        '',
        f'Latency: batch 1; throughput: batch {batches}; medians of interleaved rounds '
        '(`video_kd.deploy.speed`). FLOPs: mmengine counter, fvcore convention, one clip.',
        '',
        '| input | model | GFLOPs | M params | PyTorch ms | ONNX Runtime ms | '
        'PyTorch clips/s | ONNX Runtime clips/s |',
        '|---|---|---|---|---|---|---|---|',
    ]
    failures = []
    for label, result in speed.items():
        shape = 'x'.join(map(str, result['clip_shape']))
        for name, m in result['models'].items():
            lines.append(
                f'| {label} ({shape}) | {name} | {m["gflops"]:.2f} | {m["params"] / 1e6:.2f} | '
                f'{_timed(m, "pytorch", "latency_ms")} | {_timed(m, "onnxruntime", "latency_ms")} | '
                f'{_timed(m, "pytorch", "clips_per_s")} | {_timed(m, "onnxruntime", "clips_per_s")} |'
            )
        failures += [f'{label}: {why}' for why in result.get('onnx_failed', {}).values()]
    if failures:  # said once, under the table: the n/a cells are not zeros
        lines += ['', 'ONNX Runtime not timed (PyTorch only): ' + '; '.join(failures) + '.']
    lines += ['', '| input | engine | latency speedup | throughput speedup | FLOP ratio |']
    lines.append('|---|---|---|---|---|')
    for label, result in speed.items():
        for engine, ratio in result['speedup'].items():
            lines.append(
                f'| {label} | {engine} | {ratio["latency"]:.2f}x | {ratio["throughput"]:.2f}x | '
                f'{result["flop_ratio"]:.1f}x |'
            )
    return [*lines, '']


def _timed(model: dict[str, Any], engine: str, key: str) -> str:
    return f'{model[engine][key]:.1f}' if engine in model else 'n/a'


def _export_section(export: dict[str, Any], model: dict[str, Any]) -> list[str]:
    parity = export['parity']
    lines = [
        '## Export',
        '',
        f'ONNX (opset {parity.get("opset")}), input `{model["input"].get("name")}` of shape '
        f'`{model["input"].get("shape")}` ({model["input"].get("layout")}), '
        f'{model["input"].get("values")}. See `preprocess.json` for the test pipeline.',
        '',
        f'Parity on {parity.get("num_clips")} val clips{_sample(parity)} (ONNX Runtime vs '
        f'PyTorch): max abs logit '
        f'difference {parity.get("max_abs_logit_diff", float("nan")):.3g} (tolerance '
        f'{parity.get("tolerance")}), top-1 agreement {parity.get("top1_agreement", 0):.4f}, '
        f'top-1 {parity.get("top1_acc_onnx", 0):.4f} (ONNX) vs '
        f'{parity.get("top1_acc_pytorch", 0):.4f} (PyTorch).',
        '',
    ]
    if export['files']:
        lines += ['| file | sha256 | bytes |', '|---|---|---|']
        lines += [
            f'| `{f.get("uri", name)}` | `{f.get("sha256", "")}` | {f.get("bytes", "")} |'
            for name, f in export['files'].items()
        ]
        lines.append('')
    return lines


def _sample(parity: dict[str, Any]) -> str:
    if parity.get('sample', 'all') == 'all':
        return ''
    return f' of {parity.get("val_clips")} ({parity["sample"]})'


def _lineage_section(lin: dict[str, Any]) -> list[str]:
    weights = lin['pretrained_weights'] or {}
    lines = [
        '## Lineage',
        '',
        f'- teacher: `{lin["teacher"]["url"]}` (sha256 `{lin["teacher"]["sha256"]}`)',
        f'- dataset: `{lin["dataset"]["uri"]}` (manifest sha256 '
        f'`{lin["dataset"]["manifest_sha256"]}`)',
        '- pretrained weights: '
        + (
            ', '.join(
                f'`{k}` = `{v}`' if v else f'`{k}`: none (random init)' for k, v in weights.items()
            )
            or 'none'
        ),
        f'- code version: `{lin["code_version"]}`; image: `{lin["image"]}`',
    ]
    if lin.get('run_uri'):
        lines.append(f'- run directory: `{lin["run_uri"]}`')
    lines += ['', '<details><summary>pipeline parameters</summary>', '', '```json']
    lines += [json.dumps(lin['pipeline_parameters'], indent=2, sort_keys=True), '```', '</details>']
    return [*lines, '']


def write_model_card(card: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """model_card.json and model_card.md in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {'json': out_dir / CARD_JSON, 'markdown': out_dir / CARD_MARKDOWN}
    paths['json'].write_text(json.dumps(card, indent=2, default=str) + '\n')
    paths['markdown'].write_text(render_markdown(card))
    return paths
