"""Step 5, evaluation: MMAction2's test loop on the val list for student, teacher, student alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from video_kd.core.artifacts import (
    CurrentScored,
    Dataset,
    Evaluation,
    ModelScores,
    Student,
    Teacher,
)
from video_kd.core.checks import check_sha256
from video_kd.core.errors import UserError
from video_kd.data.data_stream import check_mounted
from video_kd.deploy import promotion
from video_kd.distill import evaluate as mmaction_test
from video_kd.openmmlab.config import config_path, teacher_config
from video_kd.runs import RunLayout, publish, run_info
from video_kd.steps.common import scratch_dir, step_tmpdir
from video_kd.steps.report import markdown_report, summarise_metrics
from video_kd.storage import download, s3
from video_kd.storage.download import ChangedSinceRecordedError, fetch_verified

log = logging.getLogger(__name__)


def run(
    data_meta: Dataset,
    student: Student,
    kd_config: str,
    teacher: Teacher | None = None,
    student_config: str = '',
    baseline_url: str = '',
    baseline_sha256: str = '',
    workdir: str | Path | None = None,
    model_name: str | None = None,
) -> Evaluation:
    """Evaluate the student (+ teacher, + the student-alone baseline when given, + the
    current student of ``model_name`` when there is one: the promotion gate's comparison;
    '' is the name derived from ``kd_config``, None scores no current student).

    Writes ``<run>/eval/metrics.json`` and ``report.md``; returns the metrics.
    """
    check_baseline(baseline_url, student_config, baseline_sha256)

    check_mounted(data_meta, splits=('val',))  # a PVC dataset: is it mounted here?
    layout = RunLayout.from_root(student['run_root'])
    with scratch_dir(workdir, 'eval') as work, step_tmpdir(work):
        results = _evaluate_models(
            work, layout, data_meta, student, kd_config, teacher, student_config,
            baseline_url, baseline_sha256,
        )  # fmt: skip
        current = _score_current(work, layout, data_meta, kd_config, model_name, results)
        summary = summarise_metrics(layout.run_id, results)
        if current is not None:
            summary['current_student'] = current
        report = markdown_report(summary, student, teacher, baseline_url)
        (work / 'metrics.json').write_text(json.dumps(summary, indent=2))
        (work / 'report.md').write_text(report)
        metrics_entry = publish(layout, 'eval', work / 'metrics.json', 'metrics.json')
        publish(layout, 'eval', work / 'report.md', 'report.md')
    return {
        **run_info(layout),
        'metrics': summary,
        'report': report,
        'metrics_uri': metrics_entry.uri,
    }


def check_baseline(baseline_url: str, student_config: str, baseline_sha256: str = '') -> None:
    """A baseline is evaluated with the student-alone config: both or neither; and its
    sha256 is required with it."""
    if not baseline_url:
        return
    if not student_config:
        raise UserError(
            'baseline_url is given but student_config is empty: the baseline '
            'is evaluated with the student-alone config'
        )
    download.check_url(baseline_url, 'baseline_url')
    check_sha256(baseline_sha256, 'baseline_sha256', required=True)


def _teacher_config_file(kd_config: str, out_dir: Path) -> tuple[str, str]:
    """The teacher's own config (its test pipeline, not the student's) with the KD config's
    teacher as its model: the teacher is scored as its config means.  Returns the file
    and what metrics.json records for it (the teacher's config, the KD config's model)."""
    from mmengine.config import Config

    path = out_dir / 'teacher_config.py'
    teacher_config(kd_config).dump(str(path))
    reference = Config.fromfile(str(config_path(kd_config))).model.teacher.cfg_path
    return str(path), f'{reference} (model: the teacher of {kd_config})'


def _evaluate_models(
    work: Path,
    layout: RunLayout,
    data_meta: Dataset,
    student: Student,
    kd_config: str,
    teacher: Teacher | None,
    student_config: str,
    baseline_url: str,
    baseline_sha256: str,
) -> dict[str, ModelScores]:
    """MMAction2's test loop on the val list (streamed: only val is read), per model."""
    results: dict[str, ModelScores] = {}

    def score(name: str, config: str, ckpt: Path, scored_with: str = '') -> None:
        results[name] = mmaction_test.evaluate(
            config, str(ckpt), data_meta, str(work / f'w_{name}')
        )
        results[name]['scored_with'] = scored_with or config  # metrics.json names it
        log.info(
            '%s: top-1 %.4f top-5 %.4f mean-class %.4f',
            name,
            results[name]['top1_acc'],
            results[name]['top5_acc'],
            results[name]['mean_class_acc'],
        )

    score(
        'student',
        kd_config,
        fetch_verified(student['s3_uri'], work / 'student.pth', student.get('sha256')),
    )
    if teacher:
        config, scored_with = _teacher_config_file(kd_config, work)
        score(
            'teacher',
            config,
            fetch_verified(teacher['s3_uri'], work / 'teacher.pth', teacher.get('sha256')),
            scored_with,
        )
    if baseline_url:
        baseline = download.fetch_teacher(
            baseline_url, work / 'baseline', sha256=baseline_sha256, cache=layout
        )
        score('baseline', student_config, baseline)
    return results


def _score_current(
    work: Path,
    layout: RunLayout,
    data_meta: Dataset,
    kd_config: str,
    model_name: str | None,
    results: dict[str, ModelScores],
) -> CurrentScored | None:
    """The promotion gate's comparison: ``model_name``'s current student scored on this
    val set as ``results['current']``, unless it cannot be compared with (then ``problem``
    says why, one line).  ``None`` when ``model_name`` is None."""
    if model_name is None:
        return None
    place = promotion.ModelPlace(layout.bucket, layout.prefix,
                                 promotion.resolve_model_name(model_name, kd_config))  # fmt: skip
    state = promotion.read_current(place)
    found: CurrentScored = {'model_name': place.name, 'uri': place.current_uri,
                            'etag': state.etag, 'run_id': '', 'problem': ''}  # fmt: skip
    if not state.exists:
        return found
    found['problem'] = promotion.comparable(state, list(data_meta['classes']))
    if state.record is None or found['problem']:
        log.warning('current student: %s', found['problem'])
        return found
    found['run_id'] = state.record['run_id']
    try:
        checkpoint = fetch_verified(state.record['student']['s3_uri'], work / 'current.pth',
                                    state.record['student']['sha256'])  # fmt: skip
    except s3.BucketNotFoundError:
        raise
    except (ChangedSinceRecordedError, s3.ObjectNotFoundError) as exc:
        found['problem'] = f'{place.current_uri}: its student cannot be read: {exc}'
        log.warning('current student: %s', found['problem'])
        return found
    results['current'] = mmaction_test.evaluate(
        state.record['kd_config'], str(checkpoint), data_meta, str(work / 'w_current')
    )
    log.info('current student (run %s): top-1 %.4f', found['run_id'],
             results['current']['top1_acc'])  # fmt: skip
    return found
