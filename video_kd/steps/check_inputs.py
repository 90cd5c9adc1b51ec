"""The check-inputs step: every step's own checks on a run's parameters, before anything
is written (the pipeline's first task; ``video-kd submit`` / ``schedule`` / ``run-local``
call it before KFP or S3 is touched)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from video_kd import backends
from video_kd.core.checks import (
    check_bucket,
    check_range,
    check_run_id,
    check_s3_prefix,
    check_sha256,
)
from video_kd.core.errors import UserError
from video_kd.deploy.promotion import check_min_gain, check_model_name
from video_kd.distill.train_config import TrainOptions
from video_kd.openmmlab.config import config_path
from video_kd.steps import data_prep, evaluate, export, teacher, train

# --------------------------------------------------------------------------- a run's parameters
# The pipeline parameters whose checks need only the value itself or another parameter; the
# rest (image, reencode, the cluster object names) have nothing to check.
SHA256_PARAMETERS = ('teacher_sha256', 'baseline_sha256', 'student_pretrained_sha256')


ALLOWED_IMAGES_ENV = 'VIDEO_KD_ALLOWED_IMAGE_PREFIXES'  # the chart's training ConfigMap


def check_image(image: str, env: Mapping[str, str] | None = None) -> None:
    """Refuse an ``image`` outside the chart's allow-list (``pipeline.allowedImagePrefixes``,
    a JSON list of prefixes in ``VIDEO_KD_ALLOWED_IMAGE_PREFIXES``); no list, no check (a
    laptop that submits, the local runner).  Every step pod and the training pods run
    ``image``: a run parameter must not choose what runs with the step's rights.  This
    check is the early, readable refusal; the enforcement is the chart's admission policy,
    which refuses a training job whose pods run another image whatever the step runs."""
    raw = (os.environ if env is None else env).get(ALLOWED_IMAGES_ENV, '')
    if not raw.strip():
        return
    try:
        prefixes = json.loads(raw)
    except ValueError as exc:
        raise UserError(f'{ALLOWED_IMAGES_ENV} is not a JSON list: {exc}') from exc
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise UserError(f'{ALLOWED_IMAGES_ENV} must be a JSON list of image prefixes')
    if not any(image.startswith(prefix) for prefix in prefixes):
        raise UserError(
            f'image {image!r} is not allowed: the chart allows images starting with '
            f'{", ".join(repr(p) for p in prefixes)} (pipeline.allowedImagePrefixes)'
        )


LAUNCH_PARAMETERS = ('num_workers', 'gpus_per_worker', 'nproc_per_node', 'backoff_limit_per_node',
                     'max_training_hours')  # fmt: skip
EVAL_LAUNCH_PARAMETERS = ('eval_num_workers', 'eval_gpus_per_worker', 'eval_nproc_per_node')
# The step pods' resource requests (the pipeline's step_*_request parameters): a bad quantity
# would stop a step pod at creation, after data prep claimed the run.
STEP_RESOURCE_PARAMETERS = ('step_cpu_request', 'step_memory_request')
_QUANTITY = re.compile(r'^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$')


def check_quantity(name: str, value: Any) -> None:
    """A Kubernetes resource quantity above 0 (``500m``, ``2``, ``4Gi``), else one line."""
    text = str(value)
    if not _QUANTITY.match(text) or not float(re.sub(r'[a-zA-Z]+$', '', text)) > 0:
        raise UserError(f'{name} {text!r} is not a Kubernetes quantity above 0 (e.g. 500m, 2, 4Gi)')


def check_pipeline_params(params: Mapping[str, Any], backend_here: bool = False) -> None:
    """Every step's own checks on a run's pipeline parameters, at once and before anything
    is submitted or written: without it a training option fails only when the train step
    starts (after data prep, an hour at Kinetics scale) and an export setting only after
    the whole training.

    ``params``: pipeline arguments by name, typed (the compiled defaults merged with the
    user's: ``video-kd submit`` / ``schedule``; all of them: the pipeline's ``check-inputs``
    step).  A parameter that is absent is not checked.  The checks are the steps' own
    (``steps.data_prep``, ``steps.teacher``, ``steps.train``, ``steps.evaluate``,
    ``steps.export``), so a value passes here exactly when its step would take it.
    ``backend_here``: training runs from this machine (``run-local``), so its backend must
    be able to run here (``check_train_backend``); otherwise only the name is checked, as
    a laptop that submits needs no Kubernetes API and the check-inputs pod lacks the
    training ConfigMap that names the chart's backend.
    """
    if 'image' in params:
        check_image(params['image'])
    if params.get('run_id'):
        check_run_id(params['run_id'])
    if 's3_bucket' in params:
        check_bucket(params['s3_bucket'])
    if 's3_prefix' in params:  # inside another run's directory: refused at the claim (S3)
        check_s3_prefix(params['s3_prefix'])
    if 'dataset_uri' in params:
        data_prep.check_dataset_uri(params['dataset_uri'])
    for name in SHA256_PARAMETERS:
        if name in params:
            check_sha256(params[name], name)
    if 'teacher_url' in params:
        teacher.check_source(params['teacher_url'], params.get('teacher_sha256', ''))
    if 'baseline_url' in params:
        evaluate.check_baseline(
            params['baseline_url'],
            params.get('student_config', ''),
            params.get('baseline_sha256', ''),
        )
    train.check_launch(**{name: params[name] for name in LAUNCH_PARAMETERS if name in params})
    for name in STEP_RESOURCE_PARAMETERS:
        if name in params:
            check_quantity(name, params[name])
    evaluate.check_eval_launch(
        **{name[len('eval_') :]: params[name] for name in EVAL_LAUNCH_PARAMETERS if name in params}
    )
    backend = params.get('training_backend')
    if backend_here:
        backends.check_train_backend(backends.backend_from_env(backend or ''),
                            params.get('gpus_per_worker', 0))  # fmt: skip
    elif backend:  # empty: the chart's training.backend, known only to the train step's pod
        backends.check_backend_name(backend)
    fields = {field.name for field in dataclasses.fields(TrainOptions)}
    given = {name: params[name] for name in fields if name in params}
    if 'max_epochs' in given:
        check_range('max_epochs', given['max_epochs'])  # a whole number; TrainOptions: >= 0
    if 'keep_checkpoints' in given:
        check_range('keep_checkpoints', given['keep_checkpoints'], 1)
    options = TrainOptions(**given)
    if params.get('kd_config'):
        train.check_options(params['kd_config'], options, params.get('teacher_sha256') or None)
    if params.get('student_config'):
        config_path(params['student_config'])  # evaluation and export load it
    if {'export_tolerance', 'speed_repeats', 'speed_batch_size', 'parity_clips'} & set(params):
        export.export_settings(
            params.get('kd_config', ''),
            params.get('student_config', ''),
            tolerance=params.get('export_tolerance', export.DEFAULT_TOLERANCE),
            speed_repeats=params.get('speed_repeats', export.DEFAULT_SPEED_REPEATS),
            parity_clips=params.get('parity_clips', export.DEFAULT_PARITY_CLIPS),
            speed_batch_size=params.get('speed_batch_size', export.DEFAULT_SPEED_BATCH_SIZE),
        )
    if params.get('model_name'):
        check_model_name(params['model_name'])
    if 'promote_min_gain' in params:
        check_min_gain(params['promote_min_gain'])
