"""The whole pipeline on one machine: a local S3 server, a tiny teacher, KFP's local runner.

``video-kd run-local`` (the README's first command) and the end-to-end tests
use this module: ``LocalS3`` starts an S3-compatible server (moto, over HTTP on
127.0.0.1) in a subprocess, ``run_local_pipeline`` makes the inputs a real
user brings — a dataset in S3, a trained teacher and, for the KD gain, the
student trained alone — and runs the real pipeline with
``kfp.local.SubprocessRunner`` (each step a subprocess of this venv) or any
other KFP local runner (``DockerRunner``: each step in the image).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from video_kd.core.errors import UserError
from video_kd.data import dataset
from video_kd.distill import score_cache
from video_kd.runs import Manifest, RunLayout, new_run_id
from video_kd.steps.check_inputs import check_pipeline_params
from video_kd.steps.data_prep import VIDEO_CHECK_CACHE
from video_kd.storage import s3

if TYPE_CHECKING:
    from kfp.local import DockerRunner, SubprocessRunner

    from video_kd.data.dataset import GeneratorOptions

LOCAL_ACCESS_KEY = 'video-kd-local'
LOCAL_SECRET_KEY = 'video-kd-local-secret'
# kfp.local's per-task notices that settings for a cluster (display names, the image) do
# not apply to a subprocess run; run_local_pipeline silences exactly these two
LOCAL_RUNNER_NOTICES = (
    r'.*have no effect in the current local runner',
    r'.*custom or non-Python base image',
)
TINY_KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
TINY_TEACHER_CONFIG = 'tsm_r50_tiny'
TINY_STUDENT_CONFIG = 'tsm_mobilenetv2_tiny'
# Tiny runs on a laptop: no DataLoader worker processes (the batch sizes are the config's).
TINY_CFG_OPTIONS = [
    'train_dataloader.num_workers=0',
    'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.persistent_workers=False',
]
S3_ENV_OVERRIDDEN = ('AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_ENDPOINT_URL')


def student_cfg_options(lr: float | None) -> list[str]:
    """The KD student's and the baseline's ``--cfg-options``, the same for both
    (``lr``: None keeps the config's)."""
    return [*TINY_CFG_OPTIONS, *([f'optim_wrapper.optimizer.lr={lr}'] if lr is not None else [])]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class LocalS3:
    """A moto S3 server on 127.0.0.1 in a subprocess (``moto[server]``, the local extra)."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)]

    def start(self) -> LocalS3:
        """Start (or restart, on the same port, with no objects) and wait until it answers."""
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise UserError(
                'the local S3 server needs moto[server]: pip install -e ".[local]"'
            ) from exc
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, 'ab') as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        self._wait_until_answering(self.proc, timeout=30)
        return self

    def _wait_until_answering(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f'the local S3 server exited, see {self.log_path}')
            try:
                urllib.request.urlopen(self.endpoint + '/moto-api/', timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP status means it is up
            except OSError:
                time.sleep(0.1)
        raise UserError(
            f'the local S3 server did not start within {timeout:.0f}s, see {self.log_path}'
        )

    def stop(self) -> None:
        """Terminate it: connections are then refused."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment that points ``video_kd.storage.s3`` (and every step) at this server."""
        return {
            'S3_ENDPOINT_URL': self.endpoint,
            'AWS_ACCESS_KEY_ID': LOCAL_ACCESS_KEY,
            'AWS_SECRET_ACCESS_KEY': LOCAL_SECRET_KEY,
            'AWS_DEFAULT_REGION': 'us-east-1',
        }


@contextlib.contextmanager
def s3_environment(env: dict[str, str]) -> Iterator[None]:
    """Set the S3 env vars for this process and its children; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in (*env, *S3_ENV_OVERRIDDEN)}
    os.environ.update(env)
    for name in S3_ENV_OVERRIDDEN:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# the line video_kd.distill.progress_hook logs after each epoch, at the end of mmengine's prefix
PROGRESS_LINE = re.compile(r'(epoch \d+/\d+ loss .*)$')


def train_input_model(
    config: str, data_root: Path, work_dir: Path, epochs: int, cfg_options: list[str], label: str,
    threads: str | None = None,
) -> Path:  # fmt: skip
    """Train a tiny teacher / baseline once (reused by later run-local calls), printing one
    ``<label>: epoch 3/15 loss 0.843 12.3 clips/s ETA 2m10s`` line per epoch (``threads``:
    its OMP_NUM_THREADS; None: this process's)."""
    ckpt = work_dir / f'epoch_{epochs}.pth'
    if ckpt.is_file():
        print(f'  {label}: reusing {ckpt}')
        return ckpt
    if work_dir.exists():
        shutil.rmtree(work_dir)
    started = time.monotonic()
    command = [
        sys.executable, '-m', 'video_kd.distill.train', config, '--work-dir', str(work_dir),
        '--data-root', str(data_root), '--max-epochs', str(epochs), '--no-data-check',
        '--cfg-options', *cfg_options,
    ]  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=20)
    env = {**os.environ, **({'OMP_NUM_THREADS': threads} if threads else {})}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
    ) as proc:
        assert proc.stdout is not None  # PIPE
        for line in proc.stdout:
            tail.append(line.rstrip())
            progress = PROGRESS_LINE.search(line.rstrip())
            if progress:
                print(f'  {label}: {progress.group(1)}', flush=True)
    if proc.returncode != 0 or not ckpt.is_file():
        raise UserError(f'training {config} failed: {list(tail)[-1:]} (log: {work_dir})')
    print(f'  {label}: trained {config} for {epochs} epochs in {time.monotonic() - started:.0f}s')
    return ckpt


def train_input_models(
    jobs: dict[str, tuple[str, Path, int, list[str]]], data_root: Path, threads: str | None = None
) -> dict[str, Path]:
    """``train_input_model`` for each ``label: (config, work dir, epochs, cfg options)``,
    side by side (the teacher and the baseline do not depend on each other)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {
            label: pool.submit(
                train_input_model, config, data_root, work_dir, epochs, options, label, threads
            )
            for label, (config, work_dir, epochs, options) in jobs.items()
        }
        return {label: future.result() for label, future in futures.items()}


def upload_input(path: Path, uri: str) -> tuple[str, str]:
    """Put an input model in S3 once; returns its URI and sha256."""
    if not s3.exists(uri):
        s3.upload_file(path, uri)
    return uri, s3.sha256_file(path)


def released_weights(checkpoint: Path) -> Path:
    """A training checkpoint as models are released (and users bring them): the weights and
    meta, without the optimizer's state — for the tiny teacher a third of the bytes that
    every step downloading it (teacher, train, evaluate) has to fetch and hash."""
    # deferred: torch, only when an input model is first uploaded
    from video_kd.openmmlab.checkpoints import load_checkpoint_file, save_checkpoint

    out = checkpoint.parent / f'{checkpoint.parent.name}.pth'
    if not out.is_file():
        state, meta = load_checkpoint_file(checkpoint)
        save_checkpoint({'meta': meta, 'state_dict': state}, out)
    return out


def prepare_inputs(
    workdir: Path, bucket: str, data_opts: GeneratorOptions, teacher_epochs: int,
    kd_epochs: int, baseline: bool, lr: float | None = None, threads: str | None = None,
) -> dict[str, str]:  # fmt: skip
    """The generated dataset in S3, a tiny trained teacher and (optionally) the student alone,
    trained side by side (``lr``: the baseline's, as the KD student's; None: the config's;
    ``threads``: each training's OMP_NUM_THREADS, None: this process's)."""
    key = '-'.join(f'{k}{v}' for k, v in sorted(data_opts.items()))
    inputs = workdir / 'inputs' / key
    data_root = inputs / 'dataset'
    if not (data_root / dataset.CLASSES_FILE).is_file():
        print(f'generating the synthetic dataset in {data_root}')
        dataset.generate_dataset(data_root, **data_opts)
    dataset_uri = s3.join_uri(f's3://{bucket}', 'datasets', key)
    if not s3.exists(s3.join_uri(dataset_uri, dataset.CLASSES_FILE)):
        s3.upload_dir(data_root, dataset_uri)
    print(f'dataset: {dataset_uri}')
    models = s3.join_uri(f's3://{bucket}', 'models', key)
    teacher_name = f'teacher-{teacher_epochs}e'
    jobs = {
        'teacher': (TINY_TEACHER_CONFIG, inputs / teacher_name, teacher_epochs, TINY_CFG_OPTIONS)
    }
    baseline_name = f'baseline-{kd_epochs}e' + (f'-lr{lr:g}' if lr is not None else '')
    if baseline:
        jobs['baseline'] = (TINY_STUDENT_CONFIG, inputs / baseline_name, kd_epochs,
                            student_cfg_options(lr))  # fmt: skip
    print(
        f'training the tiny teacher ({TINY_TEACHER_CONFIG})'
        + (
            f' and the student alone, the no-KD baseline ({TINY_STUDENT_CONFIG})'
            if baseline
            else ''
        )
    )
    trained = train_input_models(jobs, data_root, threads)
    teacher_url, teacher_sha = upload_input(
        released_weights(trained['teacher']), s3.join_uri(models, f'{teacher_name}.pth')
    )
    args = {'dataset_uri': dataset_uri, 'teacher_url': teacher_url, 'teacher_sha256': teacher_sha}
    if baseline:
        base = trained['baseline']
        work_dir = s3.join_uri(models, base.parent.name)  # its mmengine work dir, as written
        for log in base.parent.glob('*/vis_data/scalars.json'):  # the report draws its curves
            upload_input(log, s3.join_uri(work_dir, str(log.relative_to(base.parent))))
        args['baseline_url'], args['baseline_sha256'] = upload_input(
            base, s3.join_uri(work_dir, base.name)
        )
    return args


def shared_cache_uris(dataset_uri: str, layout: RunLayout) -> list[str]:
    """The bucket's caches that a later run of the same inputs reads: the dataset's score
    cache (the teacher's and the baseline's test scores) and data prep's video verdicts.
    Content-addressed (an entry names what it is for), so safe to keep across runs."""
    return [score_cache.dataset_cache_root(dataset_uri), layout.shared_uri(VIDEO_CHECK_CACHE)]


def _kept_dir(kept: Path, uri: str) -> Path:
    bucket, key = s3.parse_s3_uri(uri)
    return kept / bucket / key


def restore_caches(kept: Path, uris: list[str]) -> int:
    """Put the caches kept by ``keep_caches`` back in S3: the local server keeps objects in
    memory only, where a cluster's bucket keeps them from one run to the next.  Returns the
    number of objects."""
    restored = 0
    for uri in uris:
        local = _kept_dir(kept, uri)
        if local.is_dir():
            restored += len(s3.upload_dir(local, uri, overwrite=True))
    return restored


def keep_caches(kept: Path, uris: list[str]) -> int:
    """Copy the caches at ``uris`` to ``kept`` (what ``restore_caches`` reads); returns the
    number of objects."""
    count = 0
    for uri in uris:
        try:
            count += len(s3.download_dir(uri, _kept_dir(kept, uri)))
        except s3.ObjectNotFoundError:
            continue  # nothing cached there yet
    return count


def run_arguments(
    bucket: str,
    prefix: str,
    kd_epochs: int,
    workers: int,
    run_id: str | None = None,
    pipeline_args: dict[str, Any] | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """The kd_pipeline arguments of a local run but its inputs (dataset, teacher, baseline),
    checked as the pipeline's steps will check them (``steps.check_inputs.check_pipeline_params``):
    a bad one is one line before anything is written or trained.  ``lr``: the KD student's
    (None: the config's)."""
    arguments = {
        'kd_config': TINY_KD_CONFIG,
        'student_config': TINY_STUDENT_CONFIG,
        'num_workers': workers,
        'gpus_per_worker': 0,
        'nproc_per_node': 0,
        'max_epochs': kd_epochs,
        'cfg_options': student_cfg_options(lr),
        'training_backend': 'local',
        'speed_repeats': 1,  # one timing round at the seed's size is enough for a demo
        'speed_batch_size': 1,  # and latency alone: a teacher batch at 224² costs a minute
        's3_bucket': bucket,
        's3_prefix': prefix,
        **({'run_id': run_id} if run_id else {}),
        **(pipeline_args or {}),
    }
    check_pipeline_params(arguments, backend_here=True)
    return arguments


def run_local_pipeline(
    workdir: Path,
    bucket: str,
    prefix: str,
    data_opts: GeneratorOptions,
    teacher_epochs: int,
    kd_epochs: int,
    baseline: bool,
    workers: int,
    run_id: str | None = None,
    pipeline_args: dict[str, Any] | None = None,
    runner: SubprocessRunner | DockerRunner | None = None,
    lr: float | None = None,
    input_threads: str | None = None,
    kept_caches: Path | None = None,
) -> dict[str, Any]:
    """Everything ``run-local`` does once the S3 env is set; returns where things are.

    ``pipeline_args``: more kd_pipeline parameters (teacher_precision, ...).
    ``lr``: the KD student's and the baseline's learning rate (None: the config's).
    ``input_threads``: OMP_NUM_THREADS of the teacher's and the baseline's trainings (None:
    this process's, as the pipeline's steps have it).
    ``runner``: a KFP local runner; default ``SubprocessRunner`` (this venv).
    ``kept_caches``: a directory where the bucket's shared caches are kept from one call to
    the next (``shared_cache_uris``; for a server that forgets them); None: not kept.
    """
    from kfp import local

    from pipelines.kd_pipeline import kd_pipeline

    run_id = run_id or new_run_id(uuid.uuid4().hex[:8])
    arguments = run_arguments(bucket, prefix, kd_epochs, workers, run_id, pipeline_args, lr)
    s3.ensure_bucket(bucket)
    inputs = prepare_inputs(
        workdir, bucket, data_opts, teacher_epochs, kd_epochs, baseline, lr, input_threads
    )
    layout = RunLayout(bucket, prefix, run_id)
    caches = shared_cache_uris(inputs['dataset_uri'], layout)
    if kept_caches and (restored := restore_caches(kept_caches, caches)):
        print(f'caches: {restored} objects restored from {kept_caches}')
    print(f'running the pipeline with the KFP local runner, run id {run_id}')
    local.init(
        runner=runner or local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / 'kfp-root'),
        raise_on_error=True,
    )
    with warnings.catch_warnings():
        # The local runner warns, per task, that our steps' image and display names do
        # not apply: by design here, the steps run in this venv (the image's own code).
        for message in LOCAL_RUNNER_NOTICES:
            warnings.filterwarnings('ignore', message=message)
        kd_pipeline(**inputs, **arguments)
    if kept_caches:
        keep_caches(kept_caches, caches)
    return {
        'run_id': run_id,
        'run_root': layout.root,
        'manifest': Manifest.load(layout),
        'metrics': s3.read_json(layout.uri('eval', 'metrics.json')),
        'kfp_root': str(workdir / 'kfp-root'),
    }


def mirror_run(run_root: str, dest: Path) -> Path:
    """Copy a run's S3 directory to disk (the local S3 server keeps it in memory only)."""
    s3.download_dir(run_root, dest)
    return dest


def kd_verdict(metrics: dict[str, Any]) -> str | None:
    """One line: the KD student against the student alone, the teacher beside them, and
    whether the gap is more than the noise of ``num_val`` validation clips (two standard
    errors of the difference of two accuracies).  None without a baseline."""
    student, baseline, teacher = (metrics.get(k) for k in ('student', 'baseline', 'teacher'))
    if not student or not baseline:
        return None
    kd, alone = student['top1_acc'], baseline['top1_acc']
    num_val = max(int(metrics.get('num_val') or 1), 1)
    noise = max(2 * ((kd * (1 - kd) + alone * (1 - alone)) / num_val) ** 0.5, 1 / num_val)
    gain = kd - alone
    if gain > noise:
        meaning = 'distillation helped'
    elif gain < -noise:
        meaning = 'distillation hurt'
    else:
        meaning = f'within noise (+-{noise:.1%} on {num_val} clips): no clear effect'
    teacher_part = f'; teacher {teacher["top1_acc"]:.1%}' if teacher else ''
    return (
        f'KD student {kd:.1%} vs {alone:.1%} trained alone '
        f'({100 * gain:+.1f} points{teacher_part}): {meaning}'
    )
