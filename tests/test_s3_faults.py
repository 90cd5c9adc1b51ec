"""S3 faults: a server stopped, refusing, or frozen (SIGSTOP), and coming back.

Each test runs its own moto server (tests/s3_servers.py), never the session's.
The policy is shortened through the environment (1 s connect, 2 s read, 2
attempts, 8 s retry window), so every case ends in seconds; the bound each
test checks is the one ``S3Policy`` computes (``request_budget_s()`` for one
request or streamed read, ``failure_bound_s()`` for a checkpoint upload), the
same formulas that give 63 s and 113 s for the defaults.

Faults are injected at a precise moment (after a GET's headers, during a
manifest save, after a multipart upload was created) by freezing or stopping
the real server from a botocore event or a wrapper of the step that comes next.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from s3_servers import MotoServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))

from video_kd.core.errors import TEMPORARY_FAILURE, one_line
from video_kd.distill import s3_hook
from video_kd.local_run import free_port
from video_kd.runs import Manifest, ManifestEntry, RunLayout
from video_kd.storage import s3, s3_conditional, s3_fileio
from video_kd.storage.s3_policy import (
    CONNECT_TIMEOUT_ENV,
    MAX_ATTEMPTS_ENV,
    READ_TIMEOUT_ENV,
    RETRY_WINDOW_ENV,
    S3Policy,
)

SHORT_POLICY = {
    CONNECT_TIMEOUT_ENV: '1',
    READ_TIMEOUT_ENV: '2',
    MAX_ATTEMPTS_ENV: '2',
    RETRY_WINDOW_ENV: '8',
}
SLACK_S = 3.0  # process scheduling on a busy 2-core machine


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A private moto server with one bucket; video_kd.storage.s3 points at it with the short policy."""
    with MotoServer(tmp_path / 'moto') as moto:
        for name, value in {**moto.env(), **SHORT_POLICY}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv('AWS_ENDPOINT_URL', raising=False)
        moto.bucket = moto.create_bucket(f'faults-{uuid.uuid4().hex[:8]}')
        yield moto


@pytest.fixture
def refusing_endpoint(monkeypatch):
    """A port that accepts connections and closes them at once, without an answer."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00'
            )
            conn.close()  # linger 0: a reset, as a crashing proxy sends

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    endpoint = f'http://127.0.0.1:{listener.getsockname()[1]}'
    monkeypatch.setenv('S3_ENDPOINT_URL', endpoint)
    for name, value in {
        'AWS_ACCESS_KEY_ID': 'k',
        'AWS_SECRET_ACCESS_KEY': 's',
        **SHORT_POLICY,
    }.items():
        monkeypatch.setenv(name, value)
    yield endpoint
    stop.set()
    thread.join(timeout=5)
    listener.close()


def timed(fn):
    """(the exception fn raised, seconds it took)."""
    start = time.monotonic()
    with pytest.raises(s3.S3Error) as info:
        fn()
    return info.value, time.monotonic() - start


def single_put_bound(policy: S3Policy) -> float:
    """``failure_bound_s()`` for a checkpoint small enough for one PUT: no multipart abort."""
    return policy.failure_bound_s() - policy.abort_budget_s()


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if 'retrying (attempt' in r.getMessage()]


def test_policy_defaults_bound_a_failure_within_two_minutes(monkeypatch):
    for name in SHORT_POLICY:
        monkeypatch.delenv(name, raising=False)
    policy = S3Policy.from_env()
    assert policy.request_budget_s() == 63
    assert policy.abort_budget_s() == 5  # a failed multipart checkpoint's abort: one attempt
    assert policy.failure_bound_s() == 45 + 63 + 5 == 113 <= 120


def test_bad_policy_value_is_one_line(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_ENV, 'soon')
    with pytest.raises(s3.UserError, match=f"{READ_TIMEOUT_ENV}='soon': expected a number"):
        S3Policy.from_env()


def test_stopped_server_is_one_clear_line_after_logged_retries(server, caplog):
    server.stop()
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    error, took = timed(lambda: s3.exists(f's3://{server.bucket}/run/run.json'))
    assert isinstance(error, s3.S3UnavailableError)
    assert one_line(error) == str(error)
    assert f'cannot connect to the S3 server at {server.endpoint}' in str(error)
    assert '(2 attempts)' in str(error) and 'S3_ENDPOINT_URL' in str(error)
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert len(retry_lines(caplog)) == 1  # attempt 2 of 2 was logged, with its cause
    assert 'HEAD' in retry_lines(caplog)[0] and 'Connect' in retry_lines(caplog)[0]


def test_refusing_server_is_one_clear_line(refusing_endpoint, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    error, took = timed(lambda: s3.read_bytes('s3://bucket/run/dataset.json'))
    assert isinstance(error, s3.S3UnavailableError)
    assert 'cannot read s3://bucket/run/dataset.json' in str(error)
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert retry_lines(caplog)


def test_frozen_server_times_out_with_one_line(server, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    server.freeze()
    try:
        error, took = timed(lambda: s3.create_if_absent(f's3://{server.bucket}/r/run.json', b'{}'))
    finally:
        server.thaw()
    assert isinstance(error, s3.S3UnavailableError)
    assert f'the S3 server at {server.endpoint} did not answer within 2 s' in str(error)
    policy = S3Policy.from_env()
    assert policy.read_timeout * policy.max_attempts <= took
    assert took <= policy.request_budget_s() + SLACK_S
    assert retry_lines(caplog) and 'timeout' in retry_lines(caplog)[0].lower()
    # nothing was half-written: the object is absent and can be created now
    assert s3.create_if_absent(f's3://{server.bucket}/r/run.json', b'{}')


# --------------------------------------------------------------------------- streamed reads
BIG = 32 * 1024 * 1024  # more than loopback's socket buffers hold: the body is still in flight


def put_object(server, key: str, body: bytes) -> str:
    server.client().put_object(Bucket=server.bucket, Key=key, Body=body)
    return f's3://{server.bucket}/{key}'


@contextlib.contextmanager
def on_event(client, event: str, action):
    """Run ``action`` once, the first time ``client`` emits ``event``."""
    done = []

    def once(**_):
        if not done:
            done.append(time.monotonic())
            action()

    client.meta.events.register(event, once, unique_id='test-fault')
    try:
        yield done
    finally:
        client.meta.events.unregister(event, unique_id='test-fault')


def test_streamed_read_from_a_stopped_server_is_one_line(server, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    uri = f's3://{server.bucket}/k400/videos_train/a/x.mp4'
    server.stop()
    error, took = timed(lambda: s3_fileio.get_object_bytes(uri))
    assert isinstance(error, s3.S3UnavailableError)
    assert str(error) == (
        f'cannot read {uri}: cannot connect to the S3 server at {server.endpoint} '
        '(2 attempts); check S3_ENDPOINT_URL and that the server is up'
    )
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert retry_lines(caplog) and 'GET' in retry_lines(caplog)[0]  # the policy's log line


def test_server_frozen_mid_body_ends_a_streamed_read_within_the_bound(server, caplog):
    """Issue 11/15: a server that stops answering after a GET's headers stalled a data
    loader for the stream client's own 30 s x 8 attempts, then raised a bare S3Error."""
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    uri = put_object(server, 'k400/videos_train/a/big.mp4', b'v' * BIG)
    client = s3_fileio.stream_client()
    try:
        with on_event(client, 'after-call.s3.GetObject', server.freeze) as frozen:
            error, _ = timed(lambda: s3_fileio.get_object_bytes(uri))
    finally:
        server.thaw()
    took = time.monotonic() - frozen[0]
    assert isinstance(error, s3.S3UnavailableError)
    assert str(error) == one_line(error)
    assert str(error).startswith(
        f'cannot read {uri}: the S3 server at {server.endpoint} did not answer within 2 s '
        '(2 attempts)'
    )
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    lines = retry_lines(caplog)  # the body's failure was retried, as attempt 2 of 2
    assert len(lines) == 1 and lines[0].startswith(f'S3 GET {uri}: retrying (attempt 2)')
    assert 'ReadTimeoutError' in lines[0]


def test_a_body_cut_short_is_fetched_again(server, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    body = hashlib.sha256(b'seed').digest() * (BIG // 32)
    uri = put_object(server, 'k400/videos_val/b/big.mp4', body)

    def freeze_for_a_while():  # past the first attempt's 2 s, within the second's
        server.freeze()
        threading.Timer(3.0, server.thaw).start()

    with on_event(s3_fileio.stream_client(), 'after-call.s3.GetObject', freeze_for_a_while):
        assert s3_fileio.get_object_bytes(uri) == body
    lines = retry_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith(f'S3 GET {uri}: retrying (attempt 2) after ReadTimeoutError')


# --------------------------------------------------------------------------- data during an outage
# Issue 25: an S3 outage was counted as unreadable videos. A server killed mid-epoch ended
# training with "the dataset is broken" (exit 2) ~20 reads later; a frozen one skipped a video
# per request budget and never stopped; evaluation's stalled reads exited 2. Now the first read
# the outage fails stops the loader (training, validation, evaluation) or data prep: one line,
# exit status 75, within the policy's request budget, nothing counted as unreadable.
# Each case is the dataset class (or data prep) with a real moto server, no training.
OUTAGES = ['killed', 'frozen', '503']


@pytest.fixture(scope='module')
def tiny_videos(tmp_path_factory) -> Path:
    from video_kd.data.dataset import generate_dataset

    root = tmp_path_factory.mktemp('outage') / 'd'
    return generate_dataset(root, num_classes=2, train_per_class=3, val_per_class=2, size=64)


@pytest.fixture
def outage(server, tiny_videos, monkeypatch):
    """The tiny dataset on the private server, and a way to start an outage of a given kind.

    killed: the server stopped (connections refused); frozen: SIGSTOP (accepted, never
    answered; thawed on the way out); 503: a proxy in front of it answers every request with
    503 SlowDown (what botocore retries, then gives up on)."""
    from s3_proxy import S3Proxy

    client = server.client()
    for path in sorted(p for p in tiny_videos.rglob('*') if p.is_file()):
        key = f'd/{path.relative_to(tiny_videos).as_posix()}'
        client.upload_file(str(path), server.bucket, key)
    proxy = S3Proxy(server.endpoint).start()
    state = SimpleNamespace(uri=f's3://{server.bucket}/d', server=server, proxy=proxy, kind='')

    def use(kind: str) -> None:  # the endpoint the code under test talks to
        state.kind = kind
        monkeypatch.setenv('S3_ENDPOINT_URL', proxy.url if kind == '503' else server.endpoint)

    def start() -> None:
        {'killed': server.stop, 'frozen': server.freeze, '503': proxy.fail_all}[state.kind]()

    state.use, state.start = use, start
    try:
        yield state
    finally:
        if state.kind == 'frozen':
            server.thaw()
        proxy.stop()


MODES = {  # the loaders' dataset settings: use_dataset's
    'training': dict(test_mode=False),
    'validation': dict(test_mode=True, skip_unreadable=True),
    'evaluation': dict(test_mode=True, skip_unreadable=False),
}


def streaming_dataset(uri: str, mode: str):
    """The loaders' dataset, streaming the tiny dataset's videos from S3 as use_dataset sets
    it up (its list read from S3 when it is built)."""
    from mmengine.registry import init_default_scope

    from video_kd.data.data_stream import StreamingVideoDataset
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')
    s3_fileio.register()
    settings = MODES[mode]
    sample = dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=2)
    pipeline = [
        dict(type='DecordInit', io_backend=s3_fileio.BACKEND_NAME),
        dict(sample, test_mode=settings['test_mode']),
        dict(type='DecordDecode'),
    ]
    return StreamingVideoDataset(
        ann_file=f'{uri}/train_list.txt',
        pipeline=pipeline,
        data_prefix={'video': f'{uri}/videos'},
        **settings,
    )


def assert_outage_line(error: BaseException, kind: str, endpoint: str, stopped: str) -> None:
    """One line, exit status 75, naming the object and the outage's cause."""
    assert error.exit_status == TEMPORARY_FAILURE, error
    assert str(error) == one_line(error)
    cause = {
        'killed': f'cannot connect to the S3 server at {endpoint}',
        'frozen': f'the S3 server at {endpoint} did not answer within 2 s (2 attempts)',
        '503': 'SlowDown Please reduce your request rate. (after 2 attempts)',
    }[kind]
    assert cause in str(error), str(error)
    assert str(error).startswith('cannot read s3://'), str(error)
    assert f'{stopped} stopped: S3 is unavailable' in str(error), str(error)


@pytest.mark.parametrize('kind', OUTAGES)
def test_an_outage_mid_epoch_stops_the_loader_within_the_bound(outage, kind):
    """The training, validation and evaluation loaders' datasets, each two videos into its
    epoch when the outage starts, each reading its next video at once (threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from video_kd.data.data_stream import StorageUnavailableError

    outage.use(kind)
    datasets = {mode: streaming_dataset(outage.uri, mode) for mode in MODES}
    for dataset in datasets.values():
        assert dataset[0] and dataset[1]  # mid-epoch: two videos read
    outage.start()
    with ThreadPoolExecutor(len(datasets)) as pool:
        reads = pool.map(lambda dataset: timed(lambda: dataset[2]), datasets.values())
        outcomes = dict(zip(datasets, reads, strict=True))
    endpoint = outage.proxy.url if kind == '503' else outage.server.endpoint
    for mode, (error, took) in outcomes.items():
        assert isinstance(error, StorageUnavailableError), (mode, error)
        assert_outage_line(error, kind, endpoint, 'the data loader')
        assert took <= S3Policy.from_env().request_budget_s() + SLACK_S, (mode, took)
        # nothing counted as unreadable, nothing skipped
        assert (datasets[mode].reads, datasets[mode].unreadable) == (2, 0), mode


def test_a_brief_freeze_mid_epoch_is_ridden_out(outage, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd')
    outage.use('frozen')
    dataset = streaming_dataset(outage.uri, 'training')
    assert dataset[0]
    outage.server.freeze()  # past the first attempt's 2 s read timeout, within the second's
    threading.Timer(3.0, outage.server.thaw).start()
    sample = dataset[1]
    assert sample['filename'].endswith(dataset.get_data_info(1)['filename'].rsplit('/', 1)[1])
    assert (dataset.reads, dataset.unreadable) == (2, 0)
    assert retry_lines(caplog) and 'ReadTimeoutError' in retry_lines(caplog)[0]
    assert not any('skipped' in m for m in caplog.messages)


def test_an_outage_in_a_loader_worker_is_one_line_and_exit_status_75(outage, capsys):
    """Through a forked DataLoader worker, which torch re-raises as ``type(message)``."""
    from torch.utils.data import DataLoader

    from video_kd.core.errors import run_cli
    from video_kd.data.data_stream import StorageUnavailableError

    outage.use('killed')
    dataset = streaming_dataset(outage.uri, 'training')
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=lambda batch: batch)
    batches = iter(loader)
    assert next(batches)
    outage.start()
    start = time.monotonic()

    def read_on():
        for _ in batches:
            pass

    assert run_cli(read_on) == TEMPORARY_FAILURE
    took = time.monotonic() - start
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('error: cannot read s3://'), line
    assert 'the data loader stopped: S3 is unavailable' in line and 'Caught' not in line
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    with pytest.raises(StorageUnavailableError):  # the class survives the worker's re-raise
        next(iter(loader))


@pytest.mark.parametrize(('kind', 'processes'), [('killed', 2), ('503', 2), ('frozen', 1)])
def test_an_outage_mid_data_prep_stops_it_within_the_bound(
    outage, kind, processes, tmp_path, monkeypatch
):
    """After the listing; with one process, after the first verdicts (whose cache batch is
    then not written to the frozen store: that would wait another request budget)."""
    from video_kd.data import data_check, data_layout

    outage.use(kind)
    real_check = data_check.check_videos
    started = []

    def outage_mid_check(objects, *args, on_verdicts=None, **kwargs):
        def arrived(done):
            on_verdicts(done)
            if not started:
                started.append(time.monotonic())
                outage.start()

        if processes > 1:
            started.append(time.monotonic())
            outage.start()
        return real_check(objects, *args, on_verdicts=arrived, **kwargs)

    monkeypatch.setattr(data_check, 'check_videos', outage_mid_check)
    source = data_layout.resolve(outage.uri)
    cache = f'{outage.uri}-cache'
    with pytest.raises(s3.S3UnavailableError) as caught:
        data_check.validate_source(source, tmp_path / 'out', cache, processes=processes, threads=1)
    took = time.monotonic() - started[0]
    endpoint = outage.proxy.url if kind == '503' else outage.server.endpoint
    assert_outage_line(caught.value, kind, endpoint, 'data prep')
    assert not isinstance(caught.value, data_check.DataCheckError)
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert not (tmp_path / 'out').exists()  # no lists: nothing shrunk


def test_data_prep_keeps_its_claim_while_s3_is_out(monkeypatch):
    """Releasing the claim lists and reads the run directory: during an outage that waited
    another request budget, then failed. A retry of the same KFP run continues its claim."""
    from video_kd.steps import data_prep

    released = []
    monkeypatch.setattr(data_prep, 'claim_run', lambda layout, job_id: None)
    monkeypatch.setattr(data_prep, 'release_claim', lambda layout, job_id: released.append(1))
    for error, release in (
        (s3.S3UnavailableError('cannot read s3://b/d/v.mp4: cannot connect'), False),
        (data_prep.data_check.DataCheckError('dataset s3://b/d: 1 of 2 ...'), True),
    ):
        released.clear()

        def fail(*_, error=error):
            raise error

        monkeypatch.setattr(data_prep, '_prepare', fail)
        with pytest.raises(type(error)):
            data_prep.run('s3://bucket-x/d', 'bucket-x', 'kd', run_id='run-1', job_id='job-1')
        assert bool(released) is release


# --------------------------------------------------------------------------- manifest saves
def test_manifest_save_to_a_stopped_server_is_one_line(server):
    # regression: the conditional-write probe ran outside the error mapping: a bare
    # botocore EndpointConnectionError and a traceback
    layout = RunLayout(server.bucket, 'kd', 'run-save')
    manifest = Manifest.load(layout)  # a new run: no manifest yet
    manifest.entries.append(ManifestEntry('data', layout.uri('data', 'a.txt'), '0' * 64, 1))
    server.stop()
    error, took = timed(manifest.save)
    assert isinstance(error, s3.S3UnavailableError)
    assert str(error) == (
        f'cannot write {layout.manifest_uri}: cannot connect to the S3 server at '
        f'{server.endpoint} (2 attempts); check S3_ENDPOINT_URL and that the server is up'
    )
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S


# --------------------------------------------------------------------------- the checkpoint hook
def hook_and_runner(server, tmp_path: Path, epoch: int = 1):
    run_root = f's3://{server.bucket}/kd/run-{uuid.uuid4().hex[:6]}'
    work_dir = tmp_path / 'work'
    work_dir.mkdir(exist_ok=True)
    (work_dir / f'epoch_{epoch}.pth').write_bytes(b'weights of epoch %d' % epoch)
    runner = SimpleNamespace(work_dir=str(work_dir), log_dir=str(work_dir / 'logs'))
    return s3_hook.S3CheckpointHook(run_root), runner


def test_hook_rides_out_a_short_freeze(server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.storage.s3')
    hook, runner = hook_and_runner(server, tmp_path)
    failed = 'uploading checkpoint epoch_1.pth failed'

    class ThawAfterTheFirstFailedUpload(logging.Handler):
        # Thawed by the event, not a timer: under load a timer could thaw the server while
        # the first upload is still inside its own request retries, and nothing would fail.
        def emit(self, record):
            if failed in record.getMessage():
                server.thaw()

    thaw = ThawAfterTheFirstFailedUpload()
    logging.getLogger('video_kd').addHandler(thaw)
    server.freeze()
    try:
        hook.after_train_epoch(runner)
    finally:
        logging.getLogger('video_kd').removeHandler(thaw)
        server.thaw()
    assert s3_hook.checkpoint_epochs(hook.layout) == [1]
    assert any(failed in m for m in caplog.messages)


@pytest.mark.parametrize('fault', ['frozen', 'stopped'])
def test_hook_fails_within_the_bound_then_resumes(server, tmp_path, fault):
    hook, runner = hook_and_runner(server, tmp_path)
    hook.after_train_epoch(runner)  # epoch 1 reaches S3
    (Path(runner.work_dir) / 'epoch_2.pth').write_bytes(b'weights of epoch 2')
    server.freeze() if fault == 'frozen' else server.stop()

    error, took = timed(lambda: hook.after_train_epoch(runner))

    assert isinstance(error, s3_hook.CheckpointUploadError)
    assert str(error) == one_line(error)
    assert 'checkpoint epoch_2.pth could not be uploaded' in str(error)
    assert 're-run the step to resume' in str(error)
    assert error.exit_status == TEMPORARY_FAILURE  # a training pod's restart is worth it
    assert took <= single_put_bound(S3Policy.from_env()) + SLACK_S
    # the server comes back: the next sync uploads what was missed
    if fault == 'frozen':
        server.thaw()
        expected = [1, 2]
    else:
        server.start()  # moto keeps objects in memory: it comes back empty (MinIO would not)
        server.create_bucket(hook.layout.bucket)
        expected = [2]
    hook.after_train_epoch(runner)
    assert s3_hook.checkpoint_epochs(hook.layout) == expected
    for uri in s3_hook.list_checkpoints(hook.layout):
        name = uri.rsplit('/', 1)[-1]
        assert s3.read_bytes(uri) == (Path(runner.work_dir) / name).read_bytes()


def test_hook_retries_a_failed_manifest_save_then_fails_with_one_line(
    server, tmp_path, monkeypatch, caplog
):
    # the checkpoint is stored, then the server stops before the manifest is saved
    caplog.set_level(logging.WARNING, logger='video_kd')
    hook, runner = hook_and_runner(server, tmp_path)
    save = Manifest.save

    def stop_then_save(manifest):
        server.stop()
        save(manifest)

    monkeypatch.setattr(Manifest, 'save', stop_then_save)
    error, took = timed(lambda: hook.after_train_epoch(runner))
    assert isinstance(error, s3_hook.CheckpointUploadError)
    assert str(error) == one_line(error)
    assert str(error).startswith('checkpoint epoch_1.pth could not be uploaded')
    assert 'cannot connect to the S3 server' in str(error)
    assert any('uploading checkpoint epoch_1.pth failed' in m for m in caplog.messages)
    assert took <= single_put_bound(S3Policy.from_env()) + SLACK_S


def test_a_retry_after_a_partial_success_leaves_no_duplicate(server, tmp_path, monkeypatch, caplog):
    """The object was stored, then the server could not be reached for the manifest save:
    the retry must find its own bytes under epoch_1.pth, not store them again as
    epoch_1.1.pth. (Unreachable, not frozen: a frozen moto applies the timed-out save
    once thawed, and the retry would find the entry.)"""
    caplog.set_level(logging.WARNING, logger='video_kd')
    hook, runner = hook_and_runner(server, tmp_path)
    save = Manifest.save
    unreachable = f'http://127.0.0.1:{free_port()}'  # nothing listens: refused
    failed = []

    def first_save_cannot_connect(manifest):
        if failed:
            return save(manifest)
        failed.append(True)
        monkeypatch.setenv('S3_ENDPOINT_URL', unreachable)
        try:
            save(manifest)
        finally:
            monkeypatch.setenv('S3_ENDPOINT_URL', server.endpoint)

    monkeypatch.setattr(Manifest, 'save', first_save_cannot_connect)
    hook.after_train_epoch(runner)
    assert any('uploading checkpoint epoch_1.pth failed' in m for m in caplog.messages)
    uris = s3_hook.list_checkpoints(hook.layout)
    assert [u.rsplit('/', 1)[1] for u in uris] == ['epoch_1.pth']
    local = (Path(runner.work_dir) / 'epoch_1.pth').read_bytes()
    assert Manifest.load(hook.layout).find(uris[0]).sha256 == hashlib.sha256(local).hexdigest()


def test_multipart_checkpoint_on_a_frozen_server_fails_within_the_bound(
    server, tmp_path, monkeypatch, caplog
):
    """s3transfer aborts a failed multipart upload: with botocore's retries that abort
    waited another full request budget on the frozen server, past the documented bound."""
    caplog.set_level(logging.WARNING, logger='video_kd')
    monkeypatch.setattr(s3_conditional, 'MULTIPART_THRESHOLD', 5 * 1024 * 1024)
    monkeypatch.setattr(s3_conditional, 'PART_SIZE', 5 * 1024 * 1024)
    hook, runner = hook_and_runner(server, tmp_path)
    checkpoint = Path(runner.work_dir) / 'epoch_1.pth'
    checkpoint.write_bytes(os.urandom(12 * 1024 * 1024))  # 3 parts
    client = s3.s3_client()
    try:
        with on_event(client, 'after-call.s3.CreateMultipartUpload', server.freeze) as frozen:
            error, _ = timed(lambda: hook.after_train_epoch(runner))
    finally:
        server.thaw()
    took = time.monotonic() - frozen[0]
    assert isinstance(error, s3_hook.CheckpointUploadError)
    assert str(error) == one_line(error)
    assert took <= S3Policy.from_env().failure_bound_s() + SLACK_S
    aborts = [line for line in retry_lines(caplog) if line.startswith('S3 DELETE')]
    assert not aborts  # the abort was one short attempt, not another request budget
    hook.after_train_epoch(runner)  # the server is back: the next sync uploads it
    uri = f'{hook.layout.uri("train", "checkpoints")}/epoch_1.pth'
    assert s3.read_bytes(uri) == checkpoint.read_bytes()


# --------------------------------------------------------------------------- real training
# `--cfg-options custom_hooks=[dict(...)]` cannot add the hook (mmengine's DictAction
# parses `dict(...)` inside a list as a string), so the driver adds it to the built
# config the way the training pod does.
TRAIN_WITH_HOOK = """
import sys
import video_kd.distill.s3_hook  # registers S3CheckpointHook
from video_kd.distill import train
from video_kd.core.errors import run_cli

def main(run_root, *argv):
    cfg = train.build_config(train.parse_args(list(argv)))
    cfg.custom_hooks = [dict(type='S3CheckpointHook', run_root=run_root, priority='LOWEST')]
    train.train(cfg)

sys.exit(run_cli(main, *sys.argv[1:]))
"""


def start_training(
    server, kd_data, work_dir: Path, run_root: str, epochs: int, retry_window: float = 20
):
    import os
    import subprocess
    import sys

    from conftest import TINY_TRAIN

    env = {**os.environ, **server.env(), **SHORT_POLICY, RETRY_WINDOW_ENV: str(retry_window)}
    command = [sys.executable, '-c', TRAIN_WITH_HOOK, run_root, 'tsm_mobilenetv2_tiny']
    command += ['--work-dir', str(work_dir), '--data-root', str(kd_data)]
    command += ['--max-epochs', str(epochs), '--no-data-check', *TINY_TRAIN]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, f'{path} never appeared'
        time.sleep(0.2)


@pytest.mark.slow
def test_training_rides_out_a_frozen_server(server, kd_data, tmp_path):
    run_root = f's3://{server.bucket}/kd/run-train'
    proc = start_training(server, kd_data, tmp_path / 'work', run_root, epochs=2)
    server.freeze()  # training needs S3 only from its first checkpoint on
    try:
        wait_for(tmp_path / 'work' / 'epoch_1.pth', proc)
        time.sleep(8)  # longer than one request's budget (5 s): the hook retries
    finally:
        server.thaw()
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output[-3000:]
    assert 'retrying (attempt 2)' in output
    assert 'uploading checkpoint epoch_1.pth failed' in output
    layout = RunLayout.from_root(run_root)
    assert s3_hook.checkpoint_epochs(layout) == [1, 2]  # each epoch once, none lost
    from video_kd.openmmlab.checkpoints import load_state_dict

    for epoch in (1, 2):  # the weights as trained (mmengine rewrites the local file after
        # validation with its new best score in the meta; the weights are the same)
        stored = s3.download_file(
            f'{run_root}/train/checkpoints/epoch_{epoch}.pth', tmp_path / f's3-{epoch}.pth'
        )
        local = load_state_dict(tmp_path / 'work' / f'epoch_{epoch}.pth')
        remote = load_state_dict(stored)
        assert local.keys() == remote.keys()
        assert all(local[k].equal(remote[k]) for k in local)


STAYS_DOWN_WINDOW_S = 8  # the whole-upload retry window: long enough for >= 2 tries


@pytest.mark.slow
@pytest.mark.parametrize('fault', ['frozen', 'stopped'])
def test_training_stops_with_one_line_when_the_server_stays_down(server, kd_data, tmp_path, fault):
    """Issue 15: a frozen server stalled training silently for minutes; a stopped one
    (connections refused) ended it after ~5 s, without retrying the checkpoint upload.
    Now both end a real training process with one line and the temporary-failure status
    after the retry window (~45 s of training + ~10 s of retries per case)."""
    run_root = f's3://{server.bucket}/kd/run-train-{fault}'
    work_dir = tmp_path / 'work'
    proc = start_training(
        server, kd_data, work_dir, run_root, epochs=2, retry_window=STAYS_DOWN_WINDOW_S
    )
    # training needs S3 only from its first checkpoint on: the fault is in place by then
    server.freeze() if fault == 'frozen' else server.stop()  # stopped: the port refuses
    try:
        wait_for(work_dir / 'epoch_1.pth', proc)
        started = time.monotonic()
        output = proc.communicate(timeout=300)[0].decode()
        took = time.monotonic() - started
    finally:
        if fault == 'frozen':
            server.thaw()
    # S3 out of reach: the temporary-failure status, which a training pod's launcher retries
    assert proc.returncode == TEMPORARY_FAILURE, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint epoch_1.pth could not be uploaded'), last
    assert 're-run the step to resume' in last
    cause = {
        'frozen': f'the S3 server at {server.endpoint} did not answer within 2 s',
        'stopped': f'cannot connect to the S3 server at {server.endpoint}',
    }[fault]
    assert cause in last, last
    assert 'Traceback' not in output, output[-3000:]
    # the whole upload was tried again before giving up (a refused connection used to end
    # the attempt at once), and it gave up within the documented bound
    assert 'uploading checkpoint epoch_1.pth failed' in output, output[-3000:]
    policy = S3Policy(
        read_timeout=2, max_attempts=2, connect_timeout=1, retry_window=STAYS_DOWN_WINDOW_S
    )
    assert policy.retry_window - 1 <= took, took  # - 1: epoch_1.pth is polled every 0.2 s
    assert took <= single_put_bound(policy) + 10, took  # + the process's own shutdown
    assert not (work_dir / 'epoch_2.pth').exists()  # it stopped at the failed upload
    # Nothing lost: the checkpoint is still on disk and goes up once S3 is back, as the
    # re-run's first sync would upload it. (The re-run itself resuming from the last
    # checkpoint in S3 is test_components.py::test_killed_worker_resumes_from_s3; another
    # training run here would add ~45 s per case.)
    layout = RunLayout.from_root(run_root)
    if fault == 'stopped':
        server.start()  # same port; moto keeps objects in memory: it comes back empty
        server.create_bucket(layout.bucket)
    uri = s3_hook.upload_checkpoint(layout, work_dir / 'epoch_1.pth')
    assert s3_hook.checkpoint_epochs(layout) == [1]
    assert s3.read_bytes(uri) == (work_dir / 'epoch_1.pth').read_bytes()
