"""Training under torchrun on this machine: one node, the same command as in a cluster pod.

Locally ``run_local`` starts the same launcher as a pod (``video_kd.backends.torchrun``),
passes torchrun the rendezvous as flags and sets the env vars the operators set
in a pod (``local_pod_env``), so what is tested on a laptop is what runs in the
cluster, exit statuses included.

torchrun dies with the step: it is started with ``PR_SET_PDEATHSIG`` (SIGTERM when the
step's process dies, SIGKILL included), and on SIGTERM it stops its workers, which run in
sessions of their own (a signal to the step's process group would not reach them); the
workers in turn die with torchrun (``video_kd.distill.train_pod``).  So killing the step
leaves no worker training and uploading into the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from video_kd.backends.kube import TrainingJobFailed
from video_kd.backends.spec import TrainingJobSpec
from video_kd.core.process import preexec_die_with_parent

log = logging.getLogger(__name__)


def local_pod_env(
    node_rank: int, nnodes: int, nproc_per_node: int, master_addr: str, master_port: int
) -> dict[str, str]:
    """The env vars the Training Operator (v1.9) and Trainer v2 give a training pod.

    RANK is the pod's (node's) rank, not a process rank: torchrun derives
    each process's RANK from it, and WORLD_SIZE counts processes.
    """
    values = {
        'PYTHONUNBUFFERED': 1,
        'MASTER_ADDR': master_addr,
        'PET_MASTER_ADDR': master_addr,
        'MASTER_PORT': master_port,
        'PET_MASTER_PORT': master_port,
        'WORLD_SIZE': nnodes * nproc_per_node,
        'RANK': node_rank,
        'PET_NODE_RANK': node_rank,
        'PET_NNODES': nnodes,
        'PET_NPROC_PER_NODE': nproc_per_node,
    }
    return {key: str(value) for key, value in values.items()}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for torchrun's rendezvous store."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_local(
    command: list[str],
    nproc_per_node: int,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
) -> int:
    """Run ``torchrun ... <command>`` on this machine as one node; return its exit code.

    torchrun is started as in a pod, through ``python -m video_kd.backends.torchrun``
    (torchrun's own main, from this interpreter's environment): the code is
    2 when a worker reported bad input, 128 for any other failure (see
    ``video_kd.backends.torchrun``).  Output goes to this module's logger, and to
    ``log_path`` if given.  The caller decides what a non-zero code means.
    """
    port = free_port()
    argv = [
        sys.executable,
        '-m',
        'video_kd.backends.torchrun',
        '--nproc_per_node',
        str(nproc_per_node),
        '--nnodes',
        '1',
        '--master_addr',
        '127.0.0.1',
        '--master_port',
        str(port),
        *command,
    ]
    child_env = {
        **os.environ,
        **local_pod_env(0, 1, nproc_per_node, '127.0.0.1', port),
        **(env or {}),
    }
    log.info('running %s', ' '.join(argv))
    with (
        open(log_path, 'w') if log_path else contextlib.nullcontext() as log_file,
        subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # SIGTERM to torchrun when this process dies (killed included): it stops its workers
            preexec_fn=preexec_die_with_parent(signal.SIGTERM),
        ) as proc,
    ):
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            log.info('[torchrun] %s', line.rstrip())
            if log_file:
                log_file.write(line)
        code = proc.wait()
    log.info('torchrun exited with %d', code)
    return code


def run(
    spec: TrainingJobSpec,
    timeout: float | None = None,
    log_path: str | os.PathLike | None = None,
    cwd: str | os.PathLike | None = None,
) -> None:
    """All of the spec's processes (nodes x procs per node) as one local node.

    ``timeout`` is accepted for the backends' common signature; a local run
    is stopped with Ctrl-C.  Raises ``TrainingJobFailed`` on a non-zero exit.
    """
    del timeout
    nproc = spec.num_nodes * spec.procs_per_node
    code = run_local(list(spec.command), nproc, dict(spec.env), cwd=cwd, log_path=log_path)
    if code != 0:
        where = f'see {Path(log_path)}' if log_path else 'see the log above'
        raise TrainingJobFailed(
            f'local torchrun ({nproc} processes)', 'ExitCode', f'exit code {code}', where
        )
