"""Each backend module implements its protocol of video_kd/backends/base.py: every member,
with the protocol's parameter names (mypy checks the types where ``get`` returns them)."""

import contextlib
import importlib
import inspect
import os
import signal
import subprocess
import sys
import time

import pytest

from video_kd import backends
from video_kd.backends.base import ClusterBackend, LocalBackend

PROTOCOL = {'pytorchjob': ClusterBackend, 'trainjob': ClusterBackend, 'local': LocalBackend}


def _members(protocol: type) -> dict[str, object]:
    names = {n for n in vars(protocol) if not n.startswith('_')} | set(protocol.__annotations__)
    return {n: getattr(protocol, n, None) for n in names}


@pytest.mark.parametrize('name', backends.BACKENDS)
def test_backend_module_implements_its_protocol(name):
    module = importlib.import_module(f'video_kd.backends.{name}')
    assert backends.get(name) is module
    for member, declared in _members(PROTOCOL[name]).items():
        assert hasattr(module, member), f'{name} lacks {member}'
        if callable(declared):
            wanted = [p for p in inspect.signature(declared).parameters if p != 'self']
            got = list(inspect.signature(getattr(module, member)).parameters)
            assert got == wanted, f'{name}.{member}{got} != protocol {wanted}'


def test_every_backend_has_a_protocol():
    assert set(PROTOCOL) == set(backends.BACKENDS)


def test_local_creates_no_kubernetes_object():
    with pytest.raises(backends.UnknownBackend, match='creates no Kubernetes object'):
        backends.cluster_backend('local')


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl(PR_SET_PDEATHSIG)')
def test_killing_the_local_step_takes_torchrun_and_its_workers_along(tmp_path):
    """Issue 25 point 7: SIGKILL of the train step's process (local backend) left torchrun's
    workers (in sessions of their own) training and uploading.  Here the step is a process
    running ``local.run_local`` over a tiny command: its workers must go within seconds."""
    pids = tmp_path / 'pids'
    pids.mkdir()
    worker = tmp_path / 'worker.py'
    worker.write_text(
        'import os, pathlib, time\n'
        f'pathlib.Path({str(pids)!r}, str(os.getpid())).write_text(str(os.getppid()))\n'
        'time.sleep(120)\n'
    )
    step = subprocess.Popen(
        [sys.executable, '-c',
         'import sys; from video_kd.backends import local; '
         f'sys.exit(local.run_local([{str(worker)!r}], 2))'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[int] = []
    agents: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2, 'torchrun did not start its 2 workers'
        agents = {int(p.read_text()) for p in pids.iterdir()}
        step.kill()
        step.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, [*workers, *agents])) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in [*workers, *agents] if _alive(pid)]
        assert not left, f'still running after the step was killed: {left}'
    finally:
        step.kill()
        for pid in [*workers, *agents]:  # what a failure would leave behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
