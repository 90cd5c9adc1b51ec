"""``video-kd runs``: every run under a prefix, read back from S3 only.

A run is listed from its directory's records, not from KFP: ``eval/metrics.json``,
``export/export.json`` and ``promote/decision.json`` (the steps' own outputs), fetched with
parallel small GETs on one shared client (``storage.s3.read_many``): one per finished run
(its decision holds its row), three for the others, so a thousand runs take seconds (``benchmarks/runs_list.py``).  ``current`` reads a model's
``current.json`` (``deploy.promotion``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from video_kd.core.errors import UserError
from video_kd.deploy import promotion
from video_kd.runs import CACHE_DIR, MANIFEST_NAME, MODELS_DIR, RunLayout
from video_kd.storage import s3

RECORDS = {  # what a row is made of: the steps' outputs, by name
    'metrics': ('eval', 'metrics.json'),
    'export': ('export', 'export.json'),
    'decision': ('promote', 'decision.json'),
}
_RUN_TIME = re.compile(r'^(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)-')
COLUMNS = ('run', 'date', 'status', 'teacher', 'student top-1', 'KD gain', 'speedup', 'promoted')


class UnknownRunError(UserError):
    """No run of that id under the prefix."""


@dataclass
class RunRecords:
    """One run's records as read (None: not written, or not JSON)."""

    run_id: str
    root: str
    metrics: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        for name, status in (('decision', 'finished'), ('export', 'exported'),
                             ('metrics', 'evaluated')):  # fmt: skip
            if getattr(self, name) is not None:
                return status
        return 'incomplete'


def prefix_uri(bucket: str, prefix: str) -> str:
    return s3.join_uri(f's3://{bucket}', prefix) + '/'


def run_ids(bucket: str, prefix: str) -> list[str]:
    """The run directories under the prefix (not its cache/ and models/)."""
    names = [uri.rsplit('/', 1)[1] for uri in s3.list_dirs(prefix_uri(bucket, prefix))]
    return [name for name in names if name not in (CACHE_DIR, MODELS_DIR)]


def read_runs(bucket: str, prefix: str, ids: list[str] | None = None) -> list[RunRecords]:
    """Each run's records, newest first, in two batches of parallel GETs: every run's
    decision (a finished run's row is all in it: ``summary``), then the other records of
    the runs without one."""
    ids = run_ids(bucket, prefix) if ids is None else ids
    found = [RunRecords(run_id, RunLayout(bucket, prefix, run_id).root) for run_id in ids]
    _read(found, ['decision'])
    _read([run for run in found if not _summary(run)], ['metrics', 'export'])
    return sorted(found, key=lambda run: run.run_id, reverse=True)


def _read(found: list[RunRecords], names: list[str]) -> None:
    uris = {
        (index, name): s3.join_uri(run.root, *RECORDS[name])
        for index, run in enumerate(found)
        for name in names
    }
    bodies = s3.read_many(list(uris.values()))
    for (index, name), uri in uris.items():
        setattr(found[index], name, _json(bodies[uri]))


def _summary(run: RunRecords) -> dict[str, Any]:
    return (run.decision or {}).get('summary') or {}


def summary(metrics: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    """What ``list`` shows of a run from its evaluation and export: the promote step
    stores it in its decision, so a finished run is one GET."""
    kd_gain = metrics.get('kd_gain', {}).get('top1_acc')
    return {
        'teacher': teacher_name(metrics),
        'student_top1': metrics.get('student', {}).get('top1_acc'),
        'kd_gain_top1': kd_gain,
        'speedup': _speedup(export.get('kfp_metrics') or {}),
    }


def _json(body: bytes | None) -> dict[str, Any] | None:
    if body is None:
        return None
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- one row


def row(run: RunRecords) -> dict[str, str]:
    """``list``'s columns for one run."""
    found = _summary(run) or summary(run.metrics or {}, run.export or {})
    decision = (run.decision or {}).get('decision') or {}
    return {
        'run': run.run_id,
        'date': run_date(run.run_id),
        'status': run.status,
        'teacher': found['teacher'],
        'student top-1': _percent(found['student_top1']),
        'KD gain': _points(found['kd_gain_top1']),
        'speedup': found['speedup'],
        'promoted': ('yes' if decision.get('promoted') else 'no') if decision else '-',
    }


def run_date(run_id: str) -> str:
    """The UTC time a run id starts with (``runs.new_run_id``); '-' for a chosen id."""
    found = _RUN_TIME.match(run_id)
    return '{}-{}-{} {}:{}'.format(*found.groups()[:5]) if found else '-'


def teacher_name(metrics: dict[str, Any]) -> str:
    """The teacher's config, as the evaluation scored it (its own config's name)."""
    config = metrics.get('scored_with', {}).get('teacher', {}).get('config', '')
    return config.split()[0].rsplit('/', 1)[-1].removesuffix('.py') if config else '-'


def _speedup(kfp_metrics: dict[str, Any]) -> str:
    """Teacher vs student latency, ONNX Runtime first (the export's first shape)."""
    keys = sorted(k for k in kfp_metrics if k.startswith('speedup_') and '_latency_' in k)
    keys.sort(key=lambda k: 'onnx' not in k)
    return f'{float(kfp_metrics[keys[0]]):.1f}x' if keys else '-'


def _percent(value: Any) -> str:
    return '-' if value is None else f'{100 * float(value):.1f}%'


def _points(value: Any) -> str:
    return '-' if value is None else f'{100 * float(value):+.1f}'


def table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Plain aligned columns (a terminal, not Markdown)."""
    widths = [max([len(c)] + [len(r[c]) for r in rows]) for c in columns]
    lines = ['  '.join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ['  '.join(r[c].ljust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return '\n'.join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- commands


def list_runs(bucket: str, prefix: str) -> str:
    rows = [row(run) for run in read_runs(bucket, prefix)]
    return table(rows) if rows else f'no runs under {prefix_uri(bucket, prefix)}'


def one_run(bucket: str, prefix: str, run_id: str) -> RunRecords:
    """One run's records; an id without a run is one line (exit status 2)."""
    layout = RunLayout(bucket, prefix, run_id)
    run = RunRecords(run_id, layout.root)
    _read([run], list(RECORDS))
    if run.status == 'incomplete' and not s3.exists(layout.manifest_uri):
        raise UnknownRunError(f'no run {run_id!r} under {prefix_uri(bucket, prefix)}')
    return run


def show(bucket: str, prefix: str, run_id: str) -> str:
    """One run: its row, every model's accuracy, the export's metrics, the decision."""
    run = one_run(bucket, prefix, run_id)
    manifest_uri = s3.join_uri(run.root, MANIFEST_NAME)
    manifest = _json(s3.read_many([manifest_uri])[manifest_uri])
    lines = [f'{k:14} {v}' for k, v in row(run).items()]
    lines.append(
        f'{"directory":14} {run.root}/ ({len((manifest or {}).get("entries", []))} objects)'
    )
    metrics = run.metrics or {}
    for model in ('student', 'teacher', 'baseline', 'current', 'kd_gain'):
        if model in metrics:
            values = ', '.join(f'{k} {float(v):.4f}' for k, v in metrics[model].items())
            lines.append(f'{model:14} {values}')
    for key, value in sorted(((run.export or {}).get('kfp_metrics') or {}).items()):
        lines.append(f'  {key} {value}')
    decision = (run.decision or {}).get('decision') or {}
    lines += [f'decision: {reason}' for reason in decision.get('reasons', [])]
    return '\n'.join(lines)


def compare(bucket: str, prefix: str, first: str, second: str) -> str:
    """Two runs side by side: the row's columns and every accuracy, with B - A."""
    a, b = one_run(bucket, prefix, first), one_run(bucket, prefix, second)
    rows = [{'': c, 'A': row(a)[c], 'B': row(b)[c], 'B - A': ''} for c in COLUMNS]
    for model in ('student', 'teacher', 'baseline'):
        for key in ('top1_acc', 'top5_acc', 'mean_class_acc'):
            va = (a.metrics or {}).get(model, {}).get(key)
            vb = (b.metrics or {}).get(model, {}).get(key)
            if va is None and vb is None:
                continue
            diff = _points(vb - va) if va is not None and vb is not None else '-'
            rows.append({'': f'{model} {key}', 'A': _percent(va), 'B': _percent(vb), 'B - A': diff})
    return table(rows, ('', 'A', 'B', 'B - A'))


def current(bucket: str, prefix: str, model_name: str) -> str:
    """A model's current student; an unknown model is one line naming the known ones."""
    place = promotion.ModelPlace(bucket, prefix, promotion.check_model_name(model_name))
    state = promotion.read_current(place)
    if not state.exists:
        known = [
            u.rsplit('/', 1)[1]
            for u in s3.list_dirs(s3.join_uri(prefix_uri(bucket, prefix), MODELS_DIR))
        ]
        raise UserError(
            f'no model {model_name!r} under {prefix_uri(bucket, prefix)}{MODELS_DIR}/ '
            f'(known: {", ".join(known) or "none"})'
        )
    if state.record is None:
        raise UserError(state.problem)
    record = state.record
    history = promotion.history(place)
    return '\n'.join([
        f'model          {model_name}',
        f'run            {record["run_id"]} (promoted {record["promoted_at"]})',
        f'student        {record["student"]["s3_uri"]} sha256 {record["student"]["sha256"]}',
        f'onnx           {record["onnx"]["s3_uri"]} sha256 {record["onnx"]["sha256"]}',
        f'top-1          {_percent(record["metrics"]["top1_acc"])} on {record["num_val"]} val '
        f'videos (val list sha256 {record["val_list_sha256"][:12]}...)',
        f'classes        {record["num_classes"]} (sha256 {record["classes_sha256"][:12]}...)',
        f'history        {len(history)} objects under {place.history_prefix}',
    ])  # fmt: skip
