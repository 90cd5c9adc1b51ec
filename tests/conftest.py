"""Real servers on 127.0.0.1 for the tests: an S3 server (moto) and an HTTP file server.

No in-process mocks of boto3 or urllib: the code under test speaks real
HTTP to these servers, as it would to MinIO or a model zoo.
"""

from __future__ import annotations

import collections
import http.server
import multiprocessing.util
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from s3_servers import ACCESS_KEY, SECRET_KEY, MotoServer

from video_kd.local_run import TINY_CFG_OPTIONS, LocalS3, free_port  # noqa: F401  (free_port: for the tests)


@pytest.fixture(scope='session', autouse=True)
def session_tmpdir(tmp_path_factory):
    """The code under test and its subprocesses (torchrun, KFP's local runner) make their
    temporary files inside pytest's directory, which a green run removes."""
    path = tmp_path_factory.mktemp('tmpdir')
    patch = pytest.MonkeyPatch()
    patch.setenv('TMPDIR', str(path))
    patch.setattr(tempfile, 'tempdir', str(path))
    yield path
    patch.undo()
    remove_multiprocessing_tempdir(path)


def remove_multiprocessing_tempdir(under: Path) -> None:
    """Remove multiprocessing's pymp-* now if it lies under ``under``: its own removal runs
    at interpreter exit, after pytest removed ``under``, and prints a traceback then."""
    for finalizer in list(multiprocessing.util._finalizer_registry.values()):
        args = getattr(finalizer, '_args', None) or ()
        if any(isinstance(arg, str) and arg.startswith(str(under)) for arg in args):
            finalizer()


@pytest.fixture(scope='session')
def s3_server(tmp_path_factory):
    """Endpoint URL of a moto S3 server running as a subprocess for the whole session
    (the same harness as ``video-kd run-local``)."""
    with LocalS3(tmp_path_factory.mktemp('moto') / 'moto.log') as server:
        yield server.endpoint


@pytest.fixture(scope='session')
def serial_s3(tmp_path_factory):
    """A private moto server that applies conditions atomically (one request at a time):
    the races of tests/test_s3_atomic.py and tests/test_promotion.py."""
    with MotoServer(tmp_path_factory.mktemp('serial-moto'), serial=True) as server:
        yield server


@pytest.fixture(scope='session')
def image(tmp_path_factory) -> str:
    """The CPU image (tests/test_image*.py), built or reused from podman's layer cache once
    per session; skips (or fails, where CI requires containers) without a container engine."""
    import containers

    containers.require_engine()
    return containers.build_image(tmp_path_factory.mktemp('image') / 'build.log')


@pytest.fixture
def s3_env(monkeypatch, s3_server):
    """Point video_kd.storage.s3 at the test server with dummy credentials; returns the endpoint."""
    for name in ('AWS_ENDPOINT_URL', 'AWS_SESSION_TOKEN', 'AWS_PROFILE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('S3_ENDPOINT_URL', s3_server)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', ACCESS_KEY)
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', SECRET_KEY)
    monkeypatch.setenv('AWS_DEFAULT_REGION', 'us-east-1')
    monkeypatch.setenv('AWS_CONFIG_FILE', os.devnull)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', os.devnull)
    return s3_server


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh, empty bucket on the test server (created with plain boto3)."""
    name = f'test-{uuid.uuid4().hex[:12]}'
    boto3.client(
        's3',
        endpoint_url=s3_env,
        region_name='us-east-1',
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ).create_bucket(Bucket=name)
    return name


class FileServer:
    """An HTTP server for files in ``root`` that counts requests and can fail on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: collections.Counter[str] = collections.Counter()
        self._failures: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True
        )

    def url(self, name: str) -> str:
        """URL of ``root/name``."""
        return f'http://127.0.0.1:{self._httpd.server_address[1]}/{name}'

    def fail_next(self, name: str, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``name`` with 503 Service Unavailable."""
        with self._lock:
            self._failures['/' + name] += times

    def _take_failure(self, path: str) -> bool:
        with self._lock:
            self.requests[path.lstrip('/')] += 1
            if self._failures[path] > 0:
                self._failures[path] -= 1
                return True
            return False

    def _handler(self):
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def do_GET(self):
                if server._take_failure(self.path):
                    self.send_error(503, 'injected failure')
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    """A FileServer on 127.0.0.1 serving a fresh temporary directory."""
    root = tmp_path / 'www'
    root.mkdir()
    with FileServer(root) as server:
        yield server


# --------------------------------------------------------------------------- KD core
# A tiny real dataset and a tiny trained teacher, made once per session: generated
# MP4 files decoded by decord, a TSM-ResNet50 trained by the mmengine Runner.
TINY_DATA = dict(num_classes=3, train_per_class=4, val_per_class=2, num_frames=12, size=64)
TINY_TRAIN = [
    '--cfg-options',
    'train_dataloader.batch_size=4',
    'val_dataloader.batch_size=4',
    'train_dataloader.num_workers=0',
    'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'val_dataloader.persistent_workers=False',
]


def run_module(
    module: str, *args: str, cwd=None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m module args...` as a user would run it; output captured as text."""
    return subprocess.run(
        [sys.executable, '-m', module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope='session')
def local_run_workdir(tmp_path_factory) -> Path:
    """The work directory of the session's `run_local_pipeline` calls (its `inputs/` cache):
    kd_data and tiny_teacher are made where `local_run.prepare_inputs` looks for them, so the
    whole-pipeline runs reuse them instead of generating and training their own."""
    return tmp_path_factory.mktemp('local-run')


def _local_inputs(workdir: Path) -> Path:
    """`local_run.prepare_inputs`'s cache directory for TINY_DATA (its key, spelled as it
    spells it)."""
    return workdir / 'inputs' / '-'.join(f'{k}{v}' for k, v in sorted(TINY_DATA.items()))


@pytest.fixture(scope='session')
def kd_data(local_run_workdir) -> Path:
    from video_kd.data.dataset import generate_dataset

    return generate_dataset(_local_inputs(local_run_workdir) / 'dataset', **TINY_DATA)


def mmaction2_view(root: Path, seed_dir: Path) -> Path:
    """``root`` (our layout) as the seed has its data: ``<seed_dir>/data/kinetics400``, a link
    to an MMAction2 Kinetics tree (videos_train/, videos_val/, kinetics400_*_list_videos.txt,
    label_map_k400.txt) whose files link back to ``root``'s."""
    tree = seed_dir / 'mmaction2' / 'data' / 'kinetics400'
    tree.mkdir(parents=True)
    for split in ('train', 'val'):
        (tree / f'videos_{split}').symlink_to(root / 'videos', target_is_directory=True)
        (tree / f'kinetics400_{split}_list_videos.txt').symlink_to(root / f'{split}_list.txt')
    (tree / 'label_map_k400.txt').symlink_to(root / 'classes.txt')
    (seed_dir / 'data').symlink_to(tree.parent, target_is_directory=True)
    return seed_dir / 'data' / 'kinetics400'


@pytest.fixture(scope='session')
def tiny_teacher(kd_data, local_run_workdir) -> Path:
    """A tsm_r50_tiny checkpoint trained for one epoch on kd_data: the one teacher training of
    the session (the whole-pipeline runs find it as their 1-epoch teacher).  It trains as the
    seed's own command does, on the seed's data layout: kd_data seen as MMAction2's Kinetics
    tree behind a ``data/kinetics400`` link."""
    work_dir = _local_inputs(local_run_workdir) / 'teacher-1e'
    seed_data = mmaction2_view(kd_data, local_run_workdir / 'seed')
    result = run_module(
        'video_kd.distill.train',
        'tsm_r50_tiny',
        '--work-dir',
        work_dir,
        '--data-root',
        seed_data,
        '--max-epochs',
        1,
        *TINY_TRAIN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir / 'epoch_1.pth'


KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'


@pytest.fixture(scope='session')
def kd_training(
    kd_data, tiny_teacher, tmp_path_factory
) -> tuple[Path, subprocess.CompletedProcess]:
    """(work dir, finished process) of the session's one plain KD training: tsm_r50_tiny teacher
    -> tsm_mobilenetv2_tiny, 2 epochs, validation every epoch (the export tests' curves need
    points). The tests that change its work dir work on a copy (tests/test_train.py)."""
    work_dir = tmp_path_factory.mktemp('kd_export')
    result = run_module(
        'video_kd.distill.train',
        KD_CONFIG,
        '--work-dir',
        work_dir,
        '--teacher-ckpt',
        tiny_teacher,
        '--data-root',
        kd_data,
        '--max-epochs',
        2,
        *TINY_TRAIN,
        'train_cfg.val_interval=1',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir, result


# The deployable student of kd_training, shared by the export and serving tests.
@pytest.fixture(scope='session')
def kd_student(kd_training):
    """(work dir with the mmengine logs, student checkpoint) of conftest's 2-epoch tiny KD run."""
    work_dir = kd_training[0]
    converted = run_module('video_kd.distill.convert', work_dir / 'epoch_2.pth')
    assert converted.returncode == 0, converted.stderr[-2000:]
    return work_dir, work_dir / 'epoch_2_student.pth'


@pytest.fixture(scope='session')
def eval_metrics(kd_student, kd_data, tiny_teacher):
    """metrics.json as the evaluation step writes it (steps.summarise_metrics's layout),
    from MMAction2's real test loop on student and teacher."""
    from video_kd.distill.evaluate import evaluate

    student = evaluate(KD_CONFIG, str(kd_student[1]), str(kd_data))
    teacher = evaluate('tsm_r50_tiny', str(tiny_teacher), str(kd_data))
    keys = ('top1_acc', 'top5_acc', 'mean_class_acc')
    return {
        'run_id': 'test-run',
        'num_val': student['num_samples'],
        'classes': student['classes'],
        'student': {k: student[k] for k in keys},
        'confusion_matrix': student['confusion_matrix'],
        'teacher': {k: teacher[k] for k in keys},
    }


@pytest.fixture(scope='session')
def exported(kd_student, kd_data, eval_metrics, tmp_path_factory):
    """(out dir, export_student's result) of the kd_student's ONNX export, verified on the val
    clips: tests/test_export.py checks it, tests/test_serve.py serves it."""
    out = tmp_path_factory.mktemp('export') / 'out'
    from video_kd.deploy import export

    result = export.export_student(
        KD_CONFIG,
        kd_student[1],
        kd_data,
        out,
        batch_size=4,
        reference_top1=eval_metrics['student']['top1_acc'],
        torchscript=True,
    )
    return out, result


# --------------------------------------------------------------------------- the pipeline
# One whole-pipeline run with KFP's subprocess runner for the session: tests/test_pipeline.py
# checks its artifacts, tests/test_image.py compares the containerised run's metrics with it.
PIPELINE_RUN = dict(
    data_opts=TINY_DATA,
    teacher_epochs=1,
    kd_epochs=2,
    baseline=True,
    workers=1,
    pipeline_args={
        'teacher_precision': 'bf16',  # the fast teacher, set as a pipeline parameter
        # retention (issue 21): only the newest checkpoint and the best by the val metric stay
        'keep_checkpoints': 1,
        'cfg_options': [*TINY_CFG_OPTIONS, 'train_cfg.val_interval=1'],  # a best to keep
    },
)
# Pipeline runs can take 10+ minutes on CI's 2 shared cores: the tests that may be the first
# to ask for the run (its time counts toward theirs) get this instead of pyproject's 900 s.
PIPELINE_TIMEOUT = 1800
# The steps' env: one thread per process keeps two runs of the same inputs bit-identical
# (tests/containers.py's STEP_ENV, which the containerised run's steps get).
PIPELINE_ENV = {'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='session')
def pipeline_run(s3_server, local_run_workdir, tiny_teacher, tmp_path_factory) -> dict:
    """`local_run.run_local_pipeline`'s result for PIPELINE_RUN in a bucket of its own, plus
    `bucket`, `scratch` (the steps' TMPDIR) and `seconds` (the run's wall time)."""
    import time

    from video_kd import local_run

    env = {
        'S3_ENDPOINT_URL': s3_server,
        'AWS_ACCESS_KEY_ID': ACCESS_KEY,
        'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
        'AWS_DEFAULT_REGION': 'us-east-1',
    }
    bucket = f'pipeline-{uuid.uuid4().hex[:12]}'
    scratch = tmp_path_factory.mktemp('pipeline-tmp')  # the steps' temporary directories
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv('TMPDIR', str(scratch))
        for name, value in PIPELINE_ENV.items():
            patch.setenv(name, value)
        for name in ('AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE'):
            patch.setenv(name, os.devnull)
        with local_run.s3_environment(env):
            started = time.monotonic()
            result = local_run.run_local_pipeline(local_run_workdir, bucket, 'kd', **PIPELINE_RUN)
            seconds = time.monotonic() - started
    finally:
        patch.undo()
    return {**result, 'bucket': bucket, 'scratch': scratch, 'seconds': seconds}
