"""Step 3, KD training: resolve the training config once, run it as a PyTorchJob or locally.

The step writes the resolved mmengine config to ``<run>/train/config.py``
(``video_kd.train_config.resolve``: the named config, the user's options, the
dataset's classes), then starts the training processes: a Kubeflow
``PyTorchJob`` whose pods run ``torchrun -m video_kd.train_pod``, or in
``local`` mode the same command under ``torchrun`` on this machine with the env
vars a pod gets.  Either way the checkpoints land in
``<run>/train/checkpoints/`` as they are written, and running the step again
resumes from the last one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from video_kd import s3, train_config
from video_kd.errors import UserError
from video_kd.runs import Manifest, RunLayout, publish, run_info
from video_kd.s3_hook import list_checkpoints, trained_epochs
from video_kd.steps.common import scratch_dir
from video_kd.train_config import TrainOptions

MODES = ('pytorchjob', 'local')
DEFAULT_SECRET = 'video-kd-s3-credentials'
# Non-secret S3 settings a PyTorchJob pod needs; credentials come from the Secret.
S3_PLAIN_ENV = ('S3_ENDPOINT_URL', 'AWS_ENDPOINT_URL', 'AWS_DEFAULT_REGION')
POD_WORK_DIR = '/tmp/video-kd/train'


def run(
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    kd_config: str,
    options: TrainOptions | None = None,
    teacher_logit_cache: bool = False,
    mode: str = 'local',
    image: str = '',
    num_workers: int = 1,
    gpus_per_worker: int = 0,
    nproc_per_node: int = 1,
    workdir: str | Path | None = None,
    timeout: float = 7 * 24 * 3600,
) -> dict[str, Any]:
    """Train; returns the last checkpoint's metadata.

    ``teacher_logit_cache`` keeps the teacher's logits next to the dataset's
    videos, where every retraining on that dataset finds them.
    """
    _check_launch(mode, num_workers, gpus_per_worker, nproc_per_node)
    layout = RunLayout.from_root(data_meta['run_root'])
    config_uri = publish_config(layout, data_meta, teacher, kd_config, options, teacher_logit_cache)
    if mode == 'pytorchjob':
        from video_kd import pytorchjob

        manifest = build_train_job(
            layout, config_uri, data_meta, teacher, image, num_workers, gpus_per_worker,
            nproc_per_node,
        )  # fmt: skip
        try:
            pytorchjob.submit_and_wait(manifest, timeout=timeout)
        except pytorchjob.PyTorchJobFailed as exc:
            raise UserError(str(exc)) from exc
    else:
        _train_locally(
            layout, config_uri, data_meta, teacher, num_workers * nproc_per_node, workdir
        )
    checkpoints = list_checkpoints(layout)
    if not checkpoints:
        raise UserError(f'training finished but no checkpoint is in {layout.uri("train")}/')
    last = Manifest.load(layout).find(checkpoints[-1])
    return {
        **run_info(layout),
        **last.meta(),
        'checkpoints': checkpoints,
        'kd_config': kd_config,
        'config_uri': config_uri,
        'mode': mode,
        'epochs': trained_epochs(checkpoints),
    }


def _check_launch(mode: str, num_workers: int, gpus_per_worker: int, nproc_per_node: int) -> None:
    if mode not in MODES:
        raise UserError(f'unknown training mode {mode!r}: use {" or ".join(MODES)}')
    if num_workers < 1 or nproc_per_node < 1 or gpus_per_worker < 0:
        raise UserError(
            'need num_workers >= 1, nproc_per_node >= 1 and gpus_per_worker >= 0; got '
            f'{num_workers}, {nproc_per_node}, {gpus_per_worker}'
        )


def resolve_config(
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    kd_config: str,
    options: TrainOptions | None = None,
    teacher_logit_cache: bool = False,
):
    """The run's training config (see ``video_kd.train_config.resolve``)."""
    # next to the dataset's videos: shared by every retraining on that dataset
    location = data_meta['videos_uri'].rstrip('/').rsplit('/', 1)[0] if teacher_logit_cache else ''
    return train_config.resolve(
        kd_config,
        options or TrainOptions(),
        num_classes=data_meta['num_classes'],
        logit_cache=location,
        teacher_sha256=teacher['sha256'],
    )


def publish_config(
    layout: RunLayout,
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    kd_config: str,
    options: TrainOptions | None,
    teacher_logit_cache: bool,
) -> str:
    """Resolve the config and publish it as ``<run>/train/config.py``; returns its URI.

    A re-run of the step resolves the same file and continues; a re-run with
    other settings is refused (the run's checkpoints were trained with these).
    """
    cfg = resolve_config(data_meta, teacher, kd_config, options, teacher_logit_cache)
    with tempfile.TemporaryDirectory() as tmp:
        path = train_config.save(cfg, Path(tmp) / train_config.CONFIG_NAME)
        try:
            return publish(layout, 'train', path, train_config.CONFIG_NAME).uri
        except s3.ObjectExistsError as exc:
            raise UserError(
                f'{layout.uri("train", train_config.CONFIG_NAME)} holds another training config: '
                'this run was trained with other settings; start a new run to change them'
            ) from exc


def pod_command(
    layout: RunLayout, config_uri: str, data_meta: dict, teacher: dict, work_dir: str
) -> list[str]:
    """What follows ``torchrun`` in every pod (and locally)."""
    return [
        '-m', 'video_kd.train_pod', config_uri,
        '--run-root', layout.root,
        '--data-meta', data_meta['dataset_meta_uri'],
        '--teacher', teacher['s3_uri'],
        '--teacher-sha256', teacher['sha256'],
        '--work-dir', work_dir,
    ]  # fmt: skip


def _namespace() -> str:
    ns_file = Path('/var/run/secrets/kubernetes.io/serviceaccount/namespace')
    if os.environ.get('VIDEO_KD_NAMESPACE'):
        return os.environ['VIDEO_KD_NAMESPACE']
    return ns_file.read_text().strip() if ns_file.is_file() else 'kubeflow'


def pytorchjob_name(run_id: str) -> str:
    """A DNS-1035 name for the run's PyTorchJob (<= 63 chars)."""
    import re

    name = re.sub(r'[^a-z0-9-]+', '-', f'video-kd-{run_id}'.lower()).strip('-')
    return name[:63].rstrip('-')


def build_train_job(
    layout: RunLayout,
    config_uri: str,
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    image: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int = 1,
) -> dict[str, Any]:
    """The PyTorchJob manifest of a run's training."""
    from video_kd import pytorchjob

    env = {k: os.environ[k] for k in S3_PLAIN_ENV if os.environ.get(k)}
    env['VIDEO_KD_RUN_ID'] = layout.run_id
    overrides = json.loads(os.environ.get('VIDEO_KD_WORKER_POD_OVERRIDES') or '{}')
    requests = (overrides.get('resources') or {}).get('requests') or {}
    manifest = pytorchjob.build_pytorchjob(
        name=pytorchjob_name(layout.run_id),
        namespace=_namespace(),
        image=image,
        command=pod_command(layout, config_uri, data_meta, teacher, POD_WORK_DIR),
        num_workers=num_workers,
        nproc_per_node=nproc_per_node,
        gpus_per_worker=gpus_per_worker,
        cpu=str(requests.get('cpu', '2')),
        memory=str(requests.get('memory', '8Gi')),
        env=env,
        s3_secret_name=os.environ.get('S3_CREDENTIALS_SECRET') or DEFAULT_SECRET,
        service_account=os.environ.get('VIDEO_KD_SERVICE_ACCOUNT') or None,
        node_selector=overrides.get('nodeSelector') or None,
        tolerations=overrides.get('tolerations') or None,
        labels={'app.kubernetes.io/part-of': 'video-kd', 'video-kd/run-id': layout.run_id[:63]},
    )
    pytorchjob.validate_pytorchjob(manifest)
    return manifest


def _train_locally(
    layout: RunLayout,
    config_uri: str,
    data_meta: dict,
    teacher: dict,
    nproc: int,
    workdir: str | Path | None,
) -> None:
    from video_kd import pytorchjob

    with scratch_dir(workdir, 'train') as work:
        # A fresh work dir per attempt: a resumed run must get its state from S3.
        attempt = Path(tempfile.mkdtemp(prefix='attempt-', dir=work))
        command = pod_command(layout, config_uri, data_meta, teacher, str(attempt / 'work'))
        code = pytorchjob.run_local(
            command,
            nproc_per_node=nproc,
            env={'VIDEO_KD_RUN_ID': layout.run_id},
            log_path=attempt / 'torchrun.log',
        )
        if code != 0:
            raise UserError(
                f'local training (torchrun, {nproc} processes) failed with exit code {code}: '
                f'{error_line(attempt / "torchrun.log")}; re-run the step to resume from the '
                f'last checkpoint in {layout.uri("train", "checkpoints")}/'
            )


def error_line(log_path: Path) -> str:
    """The most telling line of a failed torchrun log."""
    if not log_path.is_file():
        return 'no log'
    lines = [ln.strip() for ln in log_path.read_text(errors='replace').splitlines() if ln.strip()]
    for pattern in ('error: ', 'Error: ', 'Error', 'exitcode'):
        hits = [ln for ln in lines if pattern in ln]
        if hits:
            return hits[-1][-300:]
    return lines[-1][-300:] if lines else 'no output'
