"""Step 3, KD training: resolve the training config once, run it on a training backend.

The step checks every input first (nothing is fetched or written for a typo),
writes the resolved mmengine config to ``<run>/train/config.py``
(``video_kd.distill.train_config.resolve``: the named config, the user's options, the
dataset's classes), then starts the training processes on a backend
(``video_kd.backends``): a Kubeflow ``PyTorchJob`` or Trainer v2 ``TrainJob``
whose pods run ``torchrun -m video_kd.distill.train_pod``, or in ``local`` mode the
same command under ``torchrun`` on this machine with the env vars a pod gets.
Either way the checkpoints land in ``<run>/train/checkpoints/`` as they are
written, and running the step again resumes from the last one.  A finished
step records what it did, its parameters included, in ``<run>/train/train.json``
(what the model card reads).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

from video_kd import backends
from video_kd.core.artifacts import Dataset, KDModel, Teacher
from video_kd.core.checks import InvalidInputError, check_range, check_sha256
from video_kd.core.errors import UserError
from video_kd.distill import train_config
from video_kd.distill.pretrained import (
    CACHE_KIND,
    check_fit,
    check_name_hash,
    fetch_pretrained,
    pin_pretrained,
)
from video_kd.distill.s3_hook import checkpoint_epochs, list_checkpoints
from video_kd.distill.train_config import TrainOptions
from video_kd.runs import Manifest, RunLayout, publish, run_info, training_hold
from video_kd.steps.common import record_output, scratch_dir
from video_kd.storage import s3
from video_kd.storage.download import check_url

if TYPE_CHECKING:
    from mmengine.config import Config

POD_WORK_DIR = '/tmp/video-kd/train'
# How much longer than the job's deadline the step waits: a day Pending in a queue (Kueue
# holds a job suspended; its deadline counts from its start) and the operator's verdict.
WAIT_GRACE_S = 24 * 3600
# The longest deadline taken: the train task's KFP retry window (pipelines/kd_pipeline.py,
# 32 days from the first attempt) must span it and the wait's grace.
MAX_TRAINING_HOURS = 720


def run(
    data_meta: Dataset,
    teacher: Teacher,
    kd_config: str,
    options: TrainOptions | None = None,
    training_backend: str = '',
    image: str = '',
    num_workers: int = 1,
    gpus_per_worker: int = 0,
    nproc_per_node: int = 0,
    backoff_limit_per_node: int = 0,
    workdir: str | Path | None = None,
    max_training_hours: float = backends.DEFAULT_MAX_TRAINING_HOURS,
) -> KDModel:
    """Train; returns the last checkpoint's metadata.

    ``training_backend``: pytorchjob, trainjob or local; empty takes the chart's
    (``VIDEO_KD_TRAINING_BACKEND``), else pytorchjob.  ``nproc_per_node`` 0:
    one process per GPU, else 1.  ``max_training_hours``: the cluster job's
    activeDeadlineSeconds; the step waits that long (+ ``WAIT_GRACE_S``) for its verdict.
    """
    options = options or TrainOptions()
    backend = backends.backend_from_env(training_backend)
    check_launch(num_workers, gpus_per_worker, nproc_per_node, backoff_limit_per_node,
                 max_training_hours)  # fmt: skip
    backends.check_train_backend(backend, gpus_per_worker)
    # Before anything is written: a job whose owner cannot be set is refused (one line).
    owner = None if backend == 'local' else backends.step_owner()
    layout = RunLayout.from_root(data_meta['run_root'])
    refuse_a_failed_attempt(layout, owner)
    config_uri = publish_config(layout, data_meta, teacher, kd_config, options)
    if backend == 'local':
        _train_locally(layout, config_uri, data_meta, teacher, num_workers, gpus_per_worker,
                       nproc_per_node, workdir)  # fmt: skip
    else:
        spec = job_spec(layout, config_uri, data_meta, teacher, image, num_workers,
                        gpus_per_worker, nproc_per_node, backoff_limit_per_node,
                        max_training_hours, owner)  # fmt: skip
        try:
            # the job's own deadline ends it first; the grace covers a queue and the verdict
            backends.run_training(
                backend, spec, max_training_hours * 3600 + WAIT_GRACE_S, layout=layout
            )
        except backends.TrainingJobFailed as exc:
            record_failure(layout, owner, str(exc))
            raise UserError(
                f'{exc}; re-run the step to resume from the last checkpoint in '
                f'{layout.uri("train", "checkpoints")}/'
            ) from exc
    checkpoints = list_checkpoints(layout)
    if not checkpoints:
        raise UserError(f'training finished but no checkpoint is in {layout.uri("train")}/')
    last = Manifest.load(layout).find(checkpoints[-1])
    if last is None:
        raise UserError(f'{checkpoints[-1]} is in S3 but not in the run manifest')
    parameters = {
        'kd_config': kd_config,
        'dataset_uri': data_meta.get('source', ''),
        **dataclasses.asdict(options),
        'training_backend': backend,
        'num_workers': num_workers,
        'gpus_per_worker': gpus_per_worker,
        'nproc_per_node': nproc_per_node,
        'backoff_limit_per_node': backoff_limit_per_node,
        'max_training_hours': max_training_hours,
        'image': image,
    }
    meta: KDModel = {
        **run_info(layout),
        **last.meta(),
        'checkpoints': checkpoints,
        'kd_config': kd_config,
        'config_uri': config_uri,
        'backend': backend,
        'job_name': backends.job_name(layout.run_id),
        # the newest checkpoint's epoch: retention keeps only the last few checkpoints
        'epochs': checkpoint_epochs(layout)[-1],
        'parameters': parameters,
    }
    record_output(layout, 'train', meta)  # <run>/train/train.json: what the card reads
    return meta


FAILURE_NAME = 'failure.json'  # <run>/train/: a training job's definitive failure, by Workflow


def record_failure(layout: RunLayout, owner: dict | None, failure: str) -> None:
    """Keep a definitive failure (the job Failed: backoff limit, deadline) with the KFP run's
    Workflow, so that KFP's retry of the step (it retries any failure) does not start the
    training again for the same verdict (``refuse_a_failed_attempt``)."""
    if owner is None:  # outside KFP: no retry to stop
        return
    record = {'workflow': owner['name'], 'workflow_uid': owner['uid'], 'failure': failure}
    s3.put_bytes(layout.uri('train', FAILURE_NAME), json.dumps(record).encode())


def refuse_a_failed_attempt(layout: RunLayout, owner: dict | None) -> None:
    """Stop a retry of the step, in the same KFP run, after its training job failed for good:
    the verdict again in one line, no job created.  A step lost with its pod, or a watch that
    gave up (exit 75), records nothing: its retry adopts the job.  Another KFP run of this
    run id (a new Workflow) trains again, resuming from the last checkpoint."""
    if owner is None:
        return
    try:
        record = json.loads(s3.read_bytes(layout.uri('train', FAILURE_NAME)))
    except s3.ObjectNotFoundError:
        return
    if record.get('workflow_uid') == owner['uid']:
        raise UserError(
            f'{record.get("failure")} (in an earlier attempt of this KFP run: a retry does not '
            'train again; start a new run with this run_id to resume from the last checkpoint)'
        )


def check_launch(
    num_workers: int = 1,
    gpus_per_worker: int = 0,
    nproc_per_node: int = 0,
    backoff_limit_per_node: int = 0,
    max_training_hours: float = backends.DEFAULT_MAX_TRAINING_HOURS,
) -> None:
    """The training job's numbers (``run``'s arguments of the same names)."""
    check_range('num_workers', num_workers, 1)
    check_range('gpus_per_worker', gpus_per_worker, 0)
    check_range('nproc_per_node (0: one per GPU)', nproc_per_node, 0)
    check_range("backoff_limit_per_node (0: the chart's)", backoff_limit_per_node, 0)
    if isinstance(max_training_hours, bool) or not isinstance(max_training_hours, (int, float)):
        raise InvalidInputError(f'max_training_hours must be a number, got {max_training_hours!r}')
    if not 0 < max_training_hours <= MAX_TRAINING_HOURS:  # NaN too
        raise InvalidInputError(
            f'max_training_hours must be above 0 and at most {MAX_TRAINING_HOURS} (the '
            f"training job's deadline; KFP retries the step within 32 days), got "
            f'{max_training_hours}'
        )


def check_options(kd_config: str, options: TrainOptions, teacher_sha256: str | None = None) -> None:
    """Resolve the run's training config as ``run`` will, before there is a dataset or a
    teacher: the config name, every ``--cfg-options`` key at any depth (``video_kd.core.checks``),
    the teacher precision and the logit cache on a KD config.  What depends on the data (the
    number of classes, where the videos are) is left to ``run``; nothing is fetched."""
    package_log = logging.getLogger('video_kd')
    level = package_log.level
    package_log.setLevel(logging.ERROR)  # its notes (weights not fetched, ...) are the run's
    try:
        resolve_config(
            # placeholders only, of the keys resolve_config reads (the teacher's sha256 keys
            # the logit cache's location, not used here)
            cast(Dataset, {'num_classes': 0, 'videos_uri': 's3://bucket/dataset/videos'}),
            cast(Teacher, {'sha256': teacher_sha256 or '0' * 64}),
            kd_config,
            options,
        )
    finally:
        package_log.setLevel(level)
    if options.student_pretrained_url:  # fetch_pretrained's checks, without fetching
        check_url(options.student_pretrained_url, 'student_pretrained_url')
        sha256 = check_sha256(options.student_pretrained_sha256, 'student_pretrained_sha256')
        check_name_hash(options.student_pretrained_url, sha256 or None)


def resolve_config(
    data_meta: Dataset,
    teacher: Teacher,
    kd_config: str,
    options: TrainOptions | None = None,
) -> Config:
    """The run's training config (see ``video_kd.distill.train_config.resolve``); the teacher-logit
    cache goes next to the dataset's videos, where every retraining on it finds it."""
    return train_config.resolve(
        kd_config,
        options or TrainOptions(),
        num_classes=int(data_meta['num_classes']),  # a float in KFP's metadata; 0: the config's
        teacher_sha256=teacher['sha256'],
        videos_uri=data_meta['videos_uri'],
    )


def publish_config(
    layout: RunLayout,
    data_meta: Dataset,
    teacher: Teacher,
    kd_config: str,
    options: TrainOptions | None,
) -> str:
    """Resolve the config and publish it as ``<run>/train/config.py``; returns its URI.

    Resolving checks every option first: the pretrained weights are fetched only
    for a config that resolved, and must fit its student's backbone (``check_fit``, before
    they are cached or the config published: a misfit does not lock the run).  A re-run of the step resolves the same file and
    continues; a re-run with other settings is refused (the run's checkpoints
    were trained with these).
    """
    cfg = resolve_config(data_meta, teacher, kd_config, options)
    train_config.fetch_pretrained_from(cfg, *cache_pretrained(layout, options, cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = train_config.save(cfg, Path(tmp) / train_config.CONFIG_NAME)
        try:
            return publish(layout, 'train', path, train_config.CONFIG_NAME).uri
        except s3.ObjectExistsError:
            return _same_config(layout, path)


def _same_config(layout: RunLayout, path: Path) -> str:
    """The stored ``train/config.py`` when it is byte for byte the one just resolved (a re-run
    with the same settings: recorded in the manifest if an earlier attempt died before it
    was); else one line naming the first setting that differs."""
    uri = layout.uri('train', train_config.CONFIG_NAME)
    stored, ours = s3.read_bytes(uri), path.read_bytes()
    if stored == ours:
        digest = hashlib.sha256(ours).hexdigest()
        Manifest.load(layout).record_stored('train', uri, digest, len(ours))
        return uri
    old_lines, new_lines = stored.decode(errors='replace'), ours.decode(errors='replace')
    changed = next(
        (
            line[1:].strip()
            for line in difflib.unified_diff(old_lines.splitlines(), new_lines.splitlines(), n=0)
            if line[:1] in '+-' and not line.startswith(('+++', '---')) and line[1:].strip()
        ),
        '?',
    )
    raise UserError(
        f'{uri} holds another training config (first difference: {changed[:120]!r}): '
        'this run was trained with other settings; start a new run to change them'
    )


def cache_pretrained(
    layout: RunLayout, options: TrainOptions | None, cfg: Config | None = None
) -> tuple[str, str]:
    """Fetch the student's pretrained weights once into the S3 cache (by checksum), so that
    the training processes read them from the cluster's S3, not the internet; returns
    where they read them and the sha256 they check.  Without a given sha256 the file is
    fetched here (its content checked against the hash prefix in its name, where the host
    names files so), cached under the sha256 computed and that value logged to pin.  With
    ``cfg`` the weights must fit its student's backbone before they are cached."""
    if not options or not options.student_pretrained_url:
        return '', ''

    url, sha256 = options.student_pretrained_url, options.student_pretrained_sha256
    fits = (lambda path: check_fit(cfg, path)) if cfg is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        if not sha256:
            return pin_pretrained(url, tmp, cache=layout, check=fits)
        path = fetch_pretrained(url, tmp, sha256, cache=layout, check=fits)
        return layout.cache_uri(CACHE_KIND, sha256.lower(), path.name), sha256


def pod_command(
    layout: RunLayout, config_uri: str, data_meta: Dataset, teacher: Teacher, work_dir: str
) -> list[str]:
    """What follows ``torchrun`` in every pod (and locally)."""
    return [
        '-m', 'video_kd.distill.train_pod', config_uri,
        '--run-root', layout.root,
        '--data-meta', data_meta['dataset_meta_uri'],
        '--teacher', teacher['s3_uri'],
        '--teacher-sha256', teacher['sha256'],
        '--work-dir', work_dir,
    ]  # fmt: skip


def job_spec(
    layout: RunLayout,
    config_uri: str,
    data_meta: Dataset,
    teacher: Teacher,
    image: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int = 0,
    backoff_limit_per_node: int = 0,
    max_training_hours: float | None = backends.DEFAULT_MAX_TRAINING_HOURS,
    owner: dict | None = None,
) -> backends.TrainingJobSpec:
    """The run's training job, shaped by the chart's training ConfigMap (the step pod's env);
    ``owner``: its ownerReference (``backends.step_owner``)."""
    return backends.spec_from_env(
        run_id=layout.run_id,
        image=image,
        command=pod_command(layout, config_uri, data_meta, teacher, POD_WORK_DIR),
        num_nodes=num_workers,
        gpus_per_worker=gpus_per_worker,
        nproc_per_node=nproc_per_node or None,
        backoff_limit_per_node=backoff_limit_per_node or None,
        max_training_hours=max_training_hours,
        owner=owner,
    )


def _train_locally(
    layout: RunLayout,
    config_uri: str,
    data_meta: Dataset,
    teacher: Teacher,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int,
    workdir: str | Path | None,
) -> None:
    """All processes here, under torchrun, as one node (the env vars a pod gets)."""
    with training_hold(layout), scratch_dir(workdir, 'train') as work:
        # A fresh work dir per attempt: a resumed run must get its state from S3.
        attempt = Path(tempfile.mkdtemp(prefix='attempt-', dir=work))
        command = pod_command(layout, config_uri, data_meta, teacher, str(attempt / 'work'))
        spec = backends.TrainingJobSpec(
            run_id=layout.run_id,
            namespace='local',
            image='local',  # torchrun runs in this process's environment, not an image
            command=tuple(command),
            num_nodes=num_workers,
            gpus_per_worker=gpus_per_worker,
            nproc_per_node=nproc_per_node or None,
            env={'VIDEO_KD_RUN_ID': layout.run_id},
        )
        log_path = attempt / 'torchrun.log'
        try:
            backends.run_training('local', spec, timeout=None, log_path=log_path)
        except backends.TrainingJobFailed as exc:
            drop_weights(attempt)
            nproc = spec.num_nodes * spec.procs_per_node
            raise UserError(
                f'local training (torchrun, {nproc} processes) failed with {exc.message}: '
                f'{error_line(log_path)}; re-run the step to resume from the '
                f'last checkpoint in {layout.uri("train", "checkpoints")}/'
            ) from exc


def drop_weights(attempt: Path) -> None:
    """A failed attempt keeps its logs for inspection, not its ~0.5 GB of weights: the
    checkpoints are in S3 already (uploaded as written) and the teacher is the run's."""
    for path in attempt.rglob('*.pth'):
        path.unlink(missing_ok=True)


def error_line(log_path: Path) -> str:
    """The most telling line of a failed torchrun log."""
    if not log_path.is_file():
        return 'no log'
    lines = [ln.strip() for ln in log_path.read_text(errors='replace').splitlines() if ln.strip()]
    for pattern in ('error: ', 'Error: ', 'Error', 'exitcode'):
        hits = [ln for ln in lines if pattern in ln]
        if hits:
            return clip_line(hits[-1])
    return clip_line(lines[-1]) if lines else 'no output'


ERROR_LINE_MAX = 300
_EXCEPTION_NAME = re.compile(r'\b[A-Za-z_][\w.]*(?:Error|Exception|Interrupt): ')


def clip_line(line: str, limit: int = ERROR_LINE_MAX) -> str:
    """A log line cut to ``limit`` characters at word boundaries, "..." where cut: from the
    last exception name on when there is one (``ValueError: ...``, the part that says
    what went wrong; a long message keeps its start), else the line's end."""
    if len(line) <= limit:
        return line
    named = list(_EXCEPTION_NAME.finditer(line))
    if named:
        start = named[-1].start()
        text = line[start:]
        lead = '... ' if start else ''
        if len(lead) + len(text) <= limit:
            return lead + text
        head = text[: limit - len(lead) - 4]
        cut = head.rfind(' ')
        return lead + (head[:cut] if cut > len(head) // 2 else head) + ' ...'
    tail = line[-(limit - 4) :]
    cut = tail.find(' ')
    return '... ' + (tail[cut + 1 :] if 0 <= cut < len(tail) // 2 else tail)
