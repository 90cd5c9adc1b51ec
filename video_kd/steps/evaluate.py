"""Step 5, evaluation: MMAction2's test loop on the val list for student, teacher, student alone."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from pathlib import Path
from typing import Any, cast

from video_kd import backends
from video_kd.core.artifacts import (
    CurrentScored,
    Dataset,
    Evaluation,
    EvaluationSummary,
    ModelScores,
    Student,
    Teacher,
)
from video_kd.core.checks import InvalidInputError, check_range, check_sha256
from video_kd.core.errors import UserError
from video_kd.data.data_stream import check_mounted
from video_kd.data.dataset import VAL_LIST
from video_kd.deploy import promotion
from video_kd.distill import evaluate as mmaction_test
from video_kd.distill import score_cache
from video_kd.openmmlab.config import config_path, teacher_config
from video_kd.runs import (
    Manifest,
    RunLayout,
    publish,
    read_recorded_bytes,
    read_recorded_json,
    run_info,
)
from video_kd.steps.common import output_uri, scratch_dir, step_tmpdir
from video_kd.steps.report import markdown_report, summarise_metrics
from video_kd.steps.train import error_line
from video_kd.storage import download, s3
from video_kd.storage.download import ChangedSinceRecordedError, fetch_verified

log = logging.getLogger(__name__)

EVAL_TIMEOUT = 24 * 3600  # seconds a cluster evaluation job may run
POD_WORK_DIR = '/tmp/video-kd/eval'
METRICS, PREDICTIONS, REPORT = 'metrics.json', 'predictions.json', 'report.md'


def run(
    data_meta: Dataset,
    student: Student,
    kd_config: str,
    teacher: Teacher | None = None,
    student_config: str = '',
    baseline_url: str = '',
    baseline_sha256: str = '',
    workdir: str | Path | None = None,
    training_backend: str = '',
    num_workers: int = 0,
    gpus_per_worker: int = -1,
    nproc_per_node: int = -1,
    image: str = '',
    timeout: float = EVAL_TIMEOUT,
    model_name: str | None = None,
) -> Evaluation:
    """Evaluate the student (+ teacher, + the student-alone baseline when given).

    The test loops run on the training backend (``EvalLaunch``: by default the backend,
    nodes, GPUs and processes the run's training used); the teacher's and the baseline's
    scores come from the score cache when it has them.  ``model_name``: also score that
    model's current student, the promotion gate's comparison ('' is the name derived from
    ``kd_config``, None scores none), as one more model of the same plan: its record's
    ``kd_config`` and checkpoint, whose sha256 is checked here first (a current student
    that cannot be compared with is ``problem``, one line, and not scored).  Writes
    ``<run>/eval/predictions.json``, ``report.md`` and, last, ``metrics.json``; returns
    the metrics.

    A retry (KFP's, or the step run again on the run) after ``metrics.json`` was published
    returns the published evaluation as it is, with a log line saying so, and scores
    nothing: ``metrics.json`` is what the export and promote steps read, and scoring again
    could only publish other bytes under the same names (``teacher_scored`` is ``cached``
    the second time), which ``publish`` refuses.  A retry asking for another evaluation
    (other KD config, teacher or not, baseline config, model name) is refused in one line:
    that is a new run.  An attempt that died before its ``metrics.json`` is not an
    evaluation: what it left of ``predictions.json`` / ``report.md`` is replaced.
    """
    check_baseline(baseline_url, student_config, baseline_sha256)
    check_eval_launch(num_workers, gpus_per_worker, nproc_per_node)
    check_mounted(data_meta, splits=('val',))  # a PVC dataset: is it mounted here?
    layout = RunLayout.from_root(student['run_root'])
    done = published_evaluation(
        layout, _settings(kd_config, teacher, student_config, baseline_url, model_name)
    )
    if done is not None:
        return done
    launch = eval_launch(layout, training_backend, num_workers, gpus_per_worker,
                         nproc_per_node, image)  # fmt: skip
    check_launch_fits(launch, data_meta)  # before anything is fetched or submitted
    if launch.backend != 'local':  # the job goes with the run's Workflow, as the training's
        launch = dataclasses.replace(launch, owner=backends.step_owner())
    attempt = uuid.uuid4().hex[:12]  # a re-run of the step publishes beside, not over
    with scratch_dir(workdir, 'eval') as work, step_tmpdir(work):
        current, current_model = _current_student(
            work, layout, data_meta, kd_config, model_name, attempt
        )
        results, scored = _evaluate_models(
            work, layout, launch, data_meta, student, kd_config, teacher, student_config,
            baseline_url, baseline_sha256, current_model, attempt, timeout,
        )  # fmt: skip
        summary = cast(EvaluationSummary, summarise_metrics(layout.run_id, results))
        if current is not None:
            summary['current_student'] = current
        if 'teacher' in scored:  # cached or computed: visible in metrics.json
            summary['teacher_scored'] = scored['teacher']
        if 'baseline' in scored:
            summary['baseline_scored'] = scored['baseline']
        report = markdown_report(summary, student, teacher, baseline_url)
        predictions = {name: result.get('predictions', []) for name, result in results.items()}
        (work / METRICS).write_text(json.dumps(summary, indent=2))
        (work / PREDICTIONS).write_text(json.dumps(predictions))
        (work / REPORT).write_text(report)
        _drop_unfinished_publish(layout)
        publish(layout, 'eval', work / PREDICTIONS, PREDICTIONS)
        publish(layout, 'eval', work / REPORT, REPORT)
        metrics_entry = publish(layout, 'eval', work / METRICS, METRICS)  # last: done
    return {
        **run_info(layout),
        'metrics': summary,
        'report': report,
        'metrics_uri': metrics_entry.uri,
    }


def _settings(
    kd_config: str,
    teacher: Teacher | None,
    student_config: str,
    baseline_url: str,
    model_name: str | None,
) -> dict[str, Any]:
    """What an evaluation was asked for, as far as its metrics.json records it."""
    return {
        'kd_config': kd_config,
        'teacher': bool(teacher),
        'baseline config': student_config if baseline_url else '',
        'model_name': (
            None if model_name is None else promotion.resolve_model_name(model_name, kd_config)
        ),
    }


def _recorded_settings(summary: EvaluationSummary) -> dict[str, Any]:
    """``_settings`` of the evaluation that wrote ``summary``."""
    scored = summary['scored_with']
    return {
        'kd_config': scored['student']['config'],
        'teacher': 'teacher' in scored,
        'baseline config': scored['baseline']['config'] if 'baseline' in scored else '',
        'model_name': summary['current_student']['model_name']
        if 'current_student' in summary
        else None,
    }


def published_evaluation(layout: RunLayout, settings: dict[str, Any]) -> Evaluation | None:
    """The evaluation an earlier attempt published (its metrics.json recorded), as ``run``
    returned it; None when there is none.  Other ``settings`` are refused."""
    manifest = Manifest.load(layout)
    uri = layout.uri('eval', METRICS)
    if manifest.find(uri) is None:
        return None
    summary: EvaluationSummary = read_recorded_json(manifest, uri)
    was = _recorded_settings(summary)
    if was != settings:
        differs = ', '.join(
            f'{key} {was[key]!r}, now {settings[key]!r}'
            for key in settings
            if was[key] != settings[key]
        )
        raise UserError(
            f'{uri} holds an evaluation of this run asked for otherwise ({differs}): start a '
            'new run to evaluate again'
        )
    report = read_recorded_bytes(manifest, layout.uri('eval', REPORT)).decode()
    log.info('evaluation: %s was published by an earlier attempt; returning it as it is '
             '(nothing scored again)', uri)  # fmt: skip
    return {**run_info(layout), 'metrics': summary, 'report': report, 'metrics_uri': uri}


def _drop_unfinished_publish(layout: RunLayout) -> None:
    """What an attempt that died before its metrics.json left of the step's files: its
    manifest entries first (at worst the manifest then misses an object this attempt
    replaces), then the objects.  The attempts' own directories are never touched."""
    uris = {layout.uri('eval', name) for name in (PREDICTIONS, REPORT, METRICS)}
    manifest = Manifest.load(layout)
    entries = [entry for entry in manifest.entries if entry.uri in uris]
    stored = sorted(uri for uri in uris if s3.exists(uri))
    if not entries and not stored:
        return
    log.warning('evaluation: replacing %s, left by an attempt that did not finish',
                ', '.join(sorted({e.uri for e in entries} | set(stored))))  # fmt: skip
    if entries:
        manifest.forget(entries)
    for uri in stored:
        s3.delete(uri)


@dataclasses.dataclass(frozen=True)
class EvalLaunch:
    """Where and how wide the test loops run."""

    backend: str
    num_workers: int
    gpus_per_worker: int
    nproc_per_node: int  # 0: one per GPU, else 1
    image: str
    # a cluster job's ownerReference (``backends.step_owner``): None locally, outside KFP
    owner: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    @property
    def processes(self) -> int:
        return self.num_workers * (self.nproc_per_node or max(1, self.gpus_per_worker))


def check_eval_launch(
    num_workers: int = 0, gpus_per_worker: int = -1, nproc_per_node: int = -1
) -> None:
    """The evaluation's numbers: 0 / -1 take the training's."""
    check_range("eval_num_workers (0: the training's)", num_workers, 0)
    check_range("eval_gpus_per_worker (-1: the training's)", gpus_per_worker, -1)
    check_range("eval_nproc_per_node (-1: the training's, 0: one per GPU)", nproc_per_node, -1)


def eval_launch(
    layout: RunLayout,
    training_backend: str = '',
    num_workers: int = 0,
    gpus_per_worker: int = -1,
    nproc_per_node: int = -1,
    image: str = '',
) -> EvalLaunch:
    """The evaluation's backend and size: what is given, else what the run's training used
    (``<run>/train/train.json``), else one process on the chart's backend."""
    try:
        trained = s3.read_json(output_uri(layout, 'train'))
    except s3.ObjectNotFoundError:
        trained = {}
    used = trained.get('parameters', {})
    launch = EvalLaunch(
        backend=backends.backend_from_env(training_backend or trained.get('backend', '')),
        num_workers=num_workers or int(used.get('num_workers', 1)),
        gpus_per_worker=_given_or_trained(gpus_per_worker, used.get('gpus_per_worker', 0)),
        nproc_per_node=_given_or_trained(nproc_per_node, used.get('nproc_per_node', 0)),
        image=image or used.get('image', ''),
    )
    log.info(
        'evaluation on %s: %d node(s) x %d process(es), %d GPU(s) per node',
        launch.backend, launch.num_workers, launch.processes // launch.num_workers,
        launch.gpus_per_worker,
    )  # fmt: skip
    return launch


def _given_or_trained(value: int, trained: Any) -> int:
    """``value``, unless it is -1: then the training's."""
    return value if value >= 0 else int(trained)


def check_launch_fits(launch: EvalLaunch, data_meta: Dataset) -> None:
    """One line, before anything is submitted: more processes than val videos (a rank with
    nothing but padding), or GPUs asked of a backend that has none here."""
    num_val = int(data_meta['num_val'])
    if launch.processes > num_val:
        raise InvalidInputError(
            f'{launch.processes} evaluation processes for {num_val} val videos: use at most '
            f'{num_val} (eval_num_workers x eval_nproc_per_node, or GPUs per node)'
        )
    try:
        backends.check_train_backend(launch.backend, launch.gpus_per_worker)
    except InvalidInputError as exc:
        raise InvalidInputError(f'evaluation: {exc}') from exc


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
    launch: EvalLaunch,
    data_meta: Dataset,
    student: Student,
    kd_config: str,
    teacher: Teacher | None,
    student_config: str,
    baseline_url: str,
    baseline_sha256: str,
    current: dict[str, Any] | None,
    attempt: str,
    timeout: float,
) -> tuple[dict[str, ModelScores], dict[str, str]]:
    """MMAction2's test loop on the val list (streamed: only val is read), per model; the
    teacher's and the baseline's from the score cache when it has them; ``current``: the
    model's current student's plan entry, scored in the same job.  Returns the scores
    and, for teacher and baseline, whether they were ``cached`` or ``computed``."""
    models: list[dict[str, Any]] = [
        _planned('student', kd_config, '', student['s3_uri'], student['sha256'], layout, attempt)
    ]
    scored_with = {'student': kd_config}
    cache_root = score_cache.cache_root(data_meta, layout)
    val_sha = data_meta['files'][VAL_LIST]['sha256']
    keys: dict[str, score_cache.ScoreKey] = {}
    results: dict[str, ModelScores] = {}
    scored: dict[str, str] = {}
    fixed = []  # (name, config for the hash, checkpoint sha256, plan entry maker)
    if teacher:
        teacher_file, scored_with['teacher'] = _teacher_config_file(kd_config, work)
        fixed.append(('teacher', teacher_file, teacher['sha256'],
                      lambda: _planned('teacher', '', kd_config, teacher['s3_uri'],
                                       teacher['sha256'], layout, attempt)))  # fmt: skip
    if baseline_url:
        scored_with['baseline'] = student_config
        fixed.append(('baseline', student_config, baseline_sha256,
                      lambda: _planned('baseline', student_config, '',
                                       _baseline_uri(work, layout, baseline_url, baseline_sha256),
                                       baseline_sha256, layout, attempt)))  # fmt: skip
    for name, config, sha256, plan_entry in fixed:
        keys[name] = score_cache.score_key(
            sha256, val_sha, mmaction_test.config_hash_of(config, data_meta)
        )
        cached = score_cache.lookup(cache_root, keys[name], name)
        if cached is not None:
            results[name], scored[name] = cached, 'cached'
        else:
            models.append(plan_entry())
            scored[name] = 'computed'
    if current is not None:
        models.append(current)
        scored_with['current'] = current['config']
    for name, scores in _score_on_backend(
        work, layout, launch, data_meta, models, attempt, timeout
    ).items():
        results[name] = scores
        if name in keys:
            score_cache.store(cache_root, keys[name], scores)
    for name, result in results.items():
        result['scored_with'] = scored_with[name]  # metrics.json names it
        log.info(
            '%s (%s): top-1 %.4f top-5 %.4f mean-class %.4f', name, scored.get(name, 'computed'),
            result['top1_acc'], result['top5_acc'], result['mean_class_acc'],
        )  # fmt: skip
    return {
        name: results[name]
        for name in ('student', 'teacher', 'baseline', 'current')
        if name in results
    }, scored


def _planned(
    name: str, config: str, teacher_of: str, uri: str, sha256: str, layout: RunLayout, attempt: str
) -> dict[str, Any]:
    """One model of the plan the evaluation processes read (``distill.evaluate_pod``)."""
    return {
        'name': name,
        'config': config,
        'teacher_of': teacher_of,
        'checkpoint_uri': uri,
        'sha256': sha256,
        'scores_uri': layout.uri('eval', attempt, f'{name}_scores.json'),
    }


def _baseline_uri(work: Path, layout: RunLayout, url: str, sha256: str) -> str:
    """The baseline where the evaluation processes read it: the S3 cache by checksum
    (``download.fetch`` puts it there), else published into the run."""
    path = download.fetch_teacher(url, work / 'baseline', sha256=sha256, cache=layout)
    uri = layout.cache_uri(download.CACHE_KIND, sha256.lower(), path.name)
    if s3.exists(uri):
        return uri
    return publish(layout, 'eval', path, 'baseline', path.name).uri


def _score_on_backend(
    work: Path,
    layout: RunLayout,
    launch: EvalLaunch,
    data_meta: Dataset,
    models: list[dict[str, Any]],
    attempt: str,
    timeout: float,
) -> dict[str, ModelScores]:
    """Publish the plan, run ``distill.evaluate_pod`` on the backend, read the scores back."""
    plan = work / 'plan.json'
    plan.write_text(json.dumps({'data_meta_uri': data_meta['dataset_meta_uri'], 'models': models}))
    plan_uri = publish(layout, 'eval', plan, attempt, 'plan.json').uri

    def command(work_dir: str) -> list[str]:
        return ['-m', 'video_kd.distill.evaluate_pod', plan_uri, '--run-root', layout.root,
                '--work-dir', work_dir]  # fmt: skip

    where = f'{launch.backend} ({launch.processes} processes)'
    try:
        if launch.backend == 'local':
            log_path = work / f'torchrun-{attempt}.log'
            spec = backends.TrainingJobSpec(
                run_id=layout.run_id, namespace='local', image='local',
                command=tuple(command(str(work / attempt))), num_nodes=launch.num_workers,
                gpus_per_worker=launch.gpus_per_worker,
                nproc_per_node=launch.nproc_per_node or None,
                env={'VIDEO_KD_RUN_ID': layout.run_id},
            )  # fmt: skip
            backends.run_training('local', spec, timeout=None, log_path=log_path)
        else:
            spec = backends.spec_from_env(
                run_id=f'{layout.run_id}-eval',  # its own job name, beside the training's
                image=launch.image, command=command(POD_WORK_DIR), num_nodes=launch.num_workers,
                gpus_per_worker=launch.gpus_per_worker,
                nproc_per_node=launch.nproc_per_node or None,
                max_training_hours=timeout / 3600, owner=launch.owner,  # it never outlives the run
            )  # fmt: skip
            backends.run_training(launch.backend, spec, timeout)
    except backends.TrainingJobFailed as exc:
        detail = error_line(log_path) if launch.backend == 'local' else str(exc)  # names the job
        raise UserError(f'evaluation on {where} failed: {detail}') from exc
    manifest = Manifest.load(layout)
    return {model['name']: read_recorded_json(manifest, model['scores_uri']) for model in models}


def _current_student(
    work: Path,
    layout: RunLayout,
    data_meta: Dataset,
    kd_config: str,
    model_name: str | None,
    attempt: str,
) -> tuple[CurrentScored | None, dict[str, Any] | None]:
    """The promotion gate's comparison: ``model_name``'s current student as found, and its
    plan entry (scored on this val set as ``results['current']``), unless it cannot be
    compared with (then ``problem`` says why, one line, and there is no entry).
    ``(None, None)`` when ``model_name`` is None."""
    if model_name is None:
        return None, None
    place = promotion.ModelPlace(layout.bucket, layout.prefix,
                                 promotion.resolve_model_name(model_name, kd_config))  # fmt: skip
    state = promotion.read_current(place)
    found: CurrentScored = {'model_name': place.name, 'uri': place.current_uri,
                            'etag': state.etag, 'run_id': '', 'problem': ''}  # fmt: skip
    if not state.exists:
        return found, None
    found['problem'] = promotion.comparable(state, list(data_meta['classes']))
    if state.record is None or found['problem']:
        log.warning('current student: %s', found['problem'])
        return found, None
    found['run_id'] = state.record['run_id']
    checkpoint = state.record['student']
    try:  # here, not in the evaluation job: a changed student is a problem, not a failed job
        fetch_verified(checkpoint['s3_uri'], work / 'current.pth', checkpoint['sha256'])
    except s3.BucketNotFoundError:
        raise
    except (ChangedSinceRecordedError, s3.ObjectNotFoundError) as exc:
        found['problem'] = f'{place.current_uri}: its student cannot be read: {exc}'
        log.warning('current student: %s', found['problem'])
        return found, None
    (work / 'current.pth').unlink()  # checked; the evaluation processes fetch their own
    log.info('current student: run %s, scored with the others', found['run_id'])
    planned = _planned('current', state.record['kd_config'], '', checkpoint['s3_uri'],
                       checkpoint['sha256'], layout, attempt)  # fmt: skip
    return found, planned
