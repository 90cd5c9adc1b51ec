"""S3 faults: a server stopped, refusing, or frozen (SIGSTOP), and coming back.

Each test runs its own moto server (tests/s3_servers.py), never the session's.
The policy is shortened through the environment (1 s connect, 2 s read, 2
attempts, 8 s retry window), so every case ends in seconds; the bound each
test checks is the one ``S3Policy.failure_bound_s()`` computes, the same
formula that gives 113 s for the defaults.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from s3_servers import MotoServer

from video_kd import s3, s3_hook
from video_kd.errors import one_line
from video_kd.runs import RunLayout
from video_kd.s3_policy import (
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
    """A private moto server with one bucket; video_kd.s3 points at it with the short policy."""
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


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if 'retrying (attempt' in r.getMessage()]


def test_policy_defaults_bound_a_failure_within_two_minutes(monkeypatch):
    for name in SHORT_POLICY:
        monkeypatch.delenv(name, raising=False)
    policy = S3Policy.from_env()
    assert policy.request_budget_s() == 63
    assert policy.failure_bound_s() == 113 <= 120


def test_bad_policy_value_is_one_line(monkeypatch):
    monkeypatch.setenv(READ_TIMEOUT_ENV, 'soon')
    with pytest.raises(s3.UserError, match=f"{READ_TIMEOUT_ENV}='soon': expected a number"):
        S3Policy.from_env()


def test_stopped_server_is_one_clear_line_after_logged_retries(server, caplog):
    server.stop()
    caplog.set_level(logging.WARNING, logger='video_kd.s3')
    error, took = timed(lambda: s3.exists(f's3://{server.bucket}/run/run.json'))
    assert isinstance(error, s3.S3UnavailableError)
    assert one_line(error) == str(error)
    assert f'cannot connect to the S3 server at {server.endpoint}' in str(error)
    assert '(2 attempts)' in str(error) and 'S3_ENDPOINT_URL' in str(error)
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert len(retry_lines(caplog)) == 1  # attempt 2 of 2 was logged, with its cause
    assert 'HEAD' in retry_lines(caplog)[0] and 'Connect' in retry_lines(caplog)[0]


def test_refusing_server_is_one_clear_line(refusing_endpoint, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.s3')
    error, took = timed(lambda: s3.read_bytes('s3://bucket/run/dataset.json'))
    assert isinstance(error, s3.S3UnavailableError)
    assert 'cannot read s3://bucket/run/dataset.json' in str(error)
    assert took <= S3Policy.from_env().request_budget_s() + SLACK_S
    assert retry_lines(caplog)


def test_frozen_server_times_out_with_one_line(server, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.s3')
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


# --------------------------------------------------------------------------- the checkpoint hook
def hook_and_runner(server, tmp_path: Path, epoch: int = 1):
    run_root = f's3://{server.bucket}/kd/run-{uuid.uuid4().hex[:6]}'
    work_dir = tmp_path / 'work'
    work_dir.mkdir(exist_ok=True)
    (work_dir / f'epoch_{epoch}.pth').write_bytes(b'weights of epoch %d' % epoch)
    runner = SimpleNamespace(work_dir=str(work_dir), log_dir=str(work_dir / 'logs'))
    return s3_hook.S3CheckpointHook(run_root), runner


def test_hook_rides_out_a_short_freeze(server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger='video_kd.s3')
    hook, runner = hook_and_runner(server, tmp_path)
    server.freeze()
    # longer than one request's budget (2 x 2 s + 1 s), back before the retry window closes
    thaw = threading.Timer(6.0, server.thaw)
    thaw.start()
    try:
        hook.after_train_epoch(runner)
    finally:
        thaw.join()
    assert s3_hook.checkpoint_epochs(hook.layout) == [1]
    assert any('uploading checkpoint epoch_1.pth failed' in m for m in caplog.messages)


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
    assert took <= S3Policy.from_env().failure_bound_s() + SLACK_S
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


# --------------------------------------------------------------------------- real training
# `--cfg-options custom_hooks=[dict(...)]` cannot add the hook (mmengine's DictAction
# parses `dict(...)` inside a list as a string), so the driver adds it to the built
# config the way the training pod does.
TRAIN_WITH_HOOK = """
import sys
import video_kd.s3_hook  # registers S3CheckpointHook
from video_kd import train
from video_kd.errors import run_cli

def main(run_root, *argv):
    cfg = train.build_config(train.parse_args(list(argv)))
    cfg.custom_hooks = [dict(type='S3CheckpointHook', run_root=run_root, priority='LOWEST')]
    train.train(cfg)

sys.exit(run_cli(main, *sys.argv[1:]))
"""


def start_training(server, kd_data, work_dir: Path, run_root: str, epochs: int):
    import os
    import subprocess
    import sys

    from conftest import TINY_TRAIN

    env = {**os.environ, **server.env(), **SHORT_POLICY, RETRY_WINDOW_ENV: '20'}
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
    assert s3_hook.checkpoint_epochs(layout) == [1, 2]
    for epoch in (1, 2):
        local = (tmp_path / 'work' / f'epoch_{epoch}.pth').read_bytes()
        assert s3.read_bytes(f'{run_root}/train/checkpoints/epoch_{epoch}.pth') == local


@pytest.mark.slow
def test_training_stops_with_one_line_when_the_server_stays_frozen(server, kd_data, tmp_path):
    run_root = f's3://{server.bucket}/kd/run-train-frozen'
    proc = start_training(server, kd_data, tmp_path / 'work', run_root, epochs=2)
    server.freeze()
    try:
        wait_for(tmp_path / 'work' / 'epoch_1.pth', proc)
        started = time.monotonic()
        output = proc.communicate(timeout=300)[0].decode()
        took = time.monotonic() - started
    finally:
        server.thaw()
    assert proc.returncode == 2, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith('error: checkpoint epoch_1.pth could not be uploaded'), last
    assert 're-run the step to resume' in last
    policy = S3Policy(read_timeout=2, max_attempts=2, connect_timeout=1, retry_window=20)
    assert took <= policy.failure_bound_s() + 10  # + the process's own shutdown
    assert not (tmp_path / 'work' / 'epoch_2.pth').exists()  # it stopped at the failed upload
    # nothing lost: the checkpoint is still on disk and goes up once S3 is back
    layout = RunLayout.from_root(run_root)
    s3_hook.upload_checkpoint(layout, tmp_path / 'work' / 'epoch_1.pth')
    assert s3_hook.checkpoint_epochs(layout) == [1]
