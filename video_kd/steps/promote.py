"""Step 8, promotion: make the run's student the model's current one, only if it is better.

Reads what the evaluate step scored (the new student and the model's current student
on the same val set, ``metrics.json``'s ``current_student``) and what the export step
checked (``export.json``), decides with ``deploy.promotion.decide`` and commits with its
compare-and-swap.  Writes ``<run>/promote/decision.json``, ``decision.md`` and
``model_card.md`` (the export's card with the decision); a re-run returns the recorded
decision, so a KFP retry never decides twice.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import ExportRecord, MetricsSummary, RunInfo, Student
from video_kd.core.errors import UserError
from video_kd.deploy import promotion, run_index
from video_kd.runs import EXPORT_RECORD_NAME, RunLayout, publish, run_info
from video_kd.steps.common import read_output, run_data_meta, scratch_dir
from video_kd.storage import s3

log = logging.getLogger(__name__)

DECISION_NAME = 'decision.json'
DECISION_MARKDOWN = 'decision.md'


class Promotion(RunInfo):
    """What the promote step returns (``<run>/promote/decision.json``)."""

    decision: dict[str, Any]
    markdown: str
    model_card: str
    kfp_metrics: dict[str, float]
    summary: dict[str, Any]


def run(
    student: Student,
    kd_config: str,
    model_name: str = '',
    promote: bool = True,
    min_gain_points: float = 0.0,
    force: bool = False,
    workdir: str | Path | None = None,
) -> Promotion:
    """Decide and, when the gate allows and ``promote``, make this run's student current."""
    promotion.check_min_gain(min_gain_points)
    name = promotion.resolve_model_name(model_name, kd_config)
    layout = RunLayout.from_root(student['run_root'])
    done = _recorded(layout)
    if done:
        return done
    metrics: MetricsSummary = read_output(layout.uri('eval', 'metrics.json'), 'the evaluate step')
    exported: ExportRecord = read_output(
        layout.uri('export', EXPORT_RECORD_NAME), 'the export step'
    )
    found = metrics.get('current_student')
    if not found or found['model_name'] != name:
        raise UserError(
            f'the evaluation of {layout.root} scored no current student of model {name!r}: '
            'run the evaluate step with the same model_name first'
        )
    place = promotion.ModelPlace(layout.bucket, layout.prefix, name)
    evaluated = promotion.CurrentState(place, etag=found['etag'])  # the swap expects this one
    decision = promotion.decide(
        name, layout.run_id, metrics['student']['top1_acc'], evaluated, metrics.get('current'),
        found['problem'], export_problems(exported), min_gain_points, force,
    )  # fmt: skip
    decision.current_run_id = decision.current_run_id or found['run_id']
    record = _current_record(layout, name, student, kd_config, metrics, exported)
    promotion.commit(decision, evaluated, record, promote)
    log.info('promotion of %s: %s (%s)', layout.run_id,
             'promoted' if decision.promoted else 'not promoted', '; '.join(decision.reasons))  # fmt: skip
    summary = run_index.summary(dict(metrics), dict(exported))
    return _publish(layout, decision, place.current_uri, summary, workdir)


def export_problems(exported: ExportRecord) -> list[str]:
    """The export's checks, read back from its record: what failed (none: [])."""
    parity = exported.get('parity') or {}
    tolerance = exported.get('settings', {}).get('export_tolerance', 0.0)
    problems = []
    diff = parity.get('max_abs_logit_diff', math.inf)
    if not diff <= tolerance:
        problems.append(f'ONNX vs PyTorch max abs logit difference {diff:.3g} > {tolerance:g}')
    if parity.get('top1_acc_onnx') != parity.get('top1_acc_pytorch'):
        problems.append("ONNX top-1 differs from the PyTorch student's")
    if not exported.get('onnx', {}).get('sha256'):
        problems.append('the ONNX file has no recorded sha256')
    return problems


def _current_record(
    layout: RunLayout, name: str, student: Student, kd_config: str,
    metrics: MetricsSummary, exported: ExportRecord,
) -> promotion.CurrentStudent:  # fmt: skip
    data = run_data_meta(layout.root)
    val_list: dict[str, Any] = dict(data['files'].get('val_list.txt') or {})
    return {
        'schema': promotion.SCHEMA,
        'model_name': name,
        'run_id': layout.run_id,
        'run_root': layout.root,
        'promoted_at': promotion.utc_stamp(),
        'kd_config': student.get('kd_config') or kd_config,
        'student': {'s3_uri': student['s3_uri'], 'sha256': student['sha256']},
        'onnx': {'s3_uri': exported['onnx']['s3_uri'], 'sha256': exported['onnx']['sha256']},
        'metrics': metrics['student'],
        'val_list_sha256': val_list.get('sha256', ''),
        'num_val': int(metrics['num_val']),
        'classes_sha256': promotion.classes_sha256(list(metrics['classes'])),
        'num_classes': len(metrics['classes']),
    }


def _publish(
    layout: RunLayout, decision: promotion.Decision, current_uri: str,
    summary: dict[str, Any], workdir: str | Path | None,
) -> Promotion:  # fmt: skip
    # deferred: matplotlib and ONNX, not needed by check inputs
    from video_kd.deploy.model_card import CARD_MARKDOWN

    markdown = promotion.decision_markdown(decision, current_uri)
    card = s3.read_bytes(layout.uri('export', CARD_MARKDOWN)).decode()
    result: Promotion = {
        **run_info(layout),
        'decision': decision.to_json(),
        'markdown': markdown,
        'model_card': card.rstrip('\n') + '\n\n' + markdown,
        'kfp_metrics': promotion.kfp_metrics(decision),
        'summary': summary,  # the run's row in `video-kd runs list`
    }
    with scratch_dir(workdir, 'promote') as work:
        (work / DECISION_MARKDOWN).write_text(markdown)
        (work / CARD_MARKDOWN).write_text(result['model_card'])
        (work / DECISION_NAME).write_text(json.dumps(result, indent=2, sort_keys=True))
        publish(layout, 'promote', work / DECISION_MARKDOWN, DECISION_MARKDOWN)
        publish(layout, 'promote', work / CARD_MARKDOWN, CARD_MARKDOWN)
        publish(layout, 'promote', work / DECISION_NAME, DECISION_NAME)  # last: the step is done
    return result


def _recorded(layout: RunLayout) -> Promotion | None:
    """The decision an earlier attempt of this step recorded, if any."""
    try:
        return s3.read_json(layout.uri('promote', DECISION_NAME))
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError:
        return None
