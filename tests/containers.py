"""The container side of the tests: podman, the image built by `make image`, KFP's DockerRunner.

Containers need root, podman and runc (and mmdebstrap for the base image); where they are
missing the container tests skip with one line, unless VIDEO_KD_REQUIRE_CONTAINERS=1 (what
.ci/run sets), which turns that skip into a failure: CI can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / 'docker' / 'build_image.sh'
CONTAINERS_CONF = ROOT / 'docker' / 'containers.conf'
REQUIRE_ENV = 'VIDEO_KD_REQUIRE_CONTAINERS'
TOOLS = ('podman', 'runc', 'mmdebstrap')
# The env a step gets in the cluster besides S3: one thread per process keeps two runs of
# the same inputs bit-identical, and the tests inside CI's two cores.
STEP_ENV = {'OMP_NUM_THREADS': '1'}


def engine_missing() -> str | None:
    """Why containers cannot run here, or None when they can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f'no container engine: {", ".join(missing)} not installed (apt-get install {" ".join(TOOLS)})'
    if os.geteuid() != 0:
        return 'containers need root here (podman with runc, see docker/containers.conf)'
    return None


def require_engine() -> None:
    """Skip with the reason, or fail where CI requires the container tests."""
    reason = engine_missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == '1':
        pytest.fail(f'{reason}; {REQUIRE_ENV}=1 makes the container tests mandatory')
    pytest.skip(reason)


def engine_env() -> dict[str, str]:
    """The environment podman runs under: runc and the lowered rlimits, unless set already."""
    return {'CONTAINERS_CONF': str(CONTAINERS_CONF), **os.environ}


def build_image(log: Path) -> str:
    """`make image`'s script: builds, or reuses the cached layers of, the CPU image."""
    env = {**engine_env(), 'PYTHON': sys.executable, 'BUILD_LOG': str(log)}
    result = subprocess.run(
        ['bash', str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        pytest.fail(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'failed')
    return DEFAULT_IMAGE


def podman(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['podman', *args],
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def run_in_image(
    image: str,
    *command: str,
    env: dict[str, str] | None = None,
    host_network: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`command` in a fresh container of `image`, as the image's user (uid 10001)."""
    flags = ['--rm', '--entrypoint', command[0]]
    if host_network:
        flags += ['--network', 'host']
    for name, value in {**STEP_ENV, **(env or {})}.items():
        flags += ['-e', f'{name}={value}']
    return podman('run', *flags, image, *command[1:], timeout=timeout)


@contextlib.contextmanager
def podman_service(directory: Path) -> Iterator[str]:
    """podman's Docker-compatible API on a socket in `directory`; yields its DOCKER_HOST."""
    socket = directory / 'podman.sock'
    url = f'unix://{socket}'
    log = open(directory / 'podman-service.log', 'wb')  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ['podman', 'system', 'service', '--time=0', url],
        env=engine_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'podman system service did not start: see {log.name}')
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def docker_runner(s3_env: dict[str, str]):
    """KFP's local DockerRunner as the steps need it here.

    Host networking: the containers reach the test's S3 server on 127.0.0.1. The S3
    settings are passed in as a cluster passes them from its Secret. The image's entry
    point (`video-kd`) is cleared because KFP gives each step its full command, as the
    container's `command` does in a pod. The user is the image's: uid 10001.
    """
    from kfp import local

    return local.DockerRunner(
        network_mode='host',
        environment={**STEP_ENV, **s3_env},
        entrypoint=[''],
    )


IMAGE_PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}$")


@contextlib.contextmanager
def task_images_resolved() -> Iterator[None]:
    """Resolve a task image given by a pipeline parameter, as KFP's backend does.

    The pipeline sets every step's image from its `image` parameter
    (`set_container_image(image)`); kfp 2.17.3's local runner resolves placeholders in the
    command but hands the image over as the literal `{{$.inputs.parameters[...]}}`, which
    no engine can pull. This resolves it from the task's own arguments, nothing else.
    """
    from kfp.local import task_dispatcher

    original = task_dispatcher.run_single_task_implementation

    def resolving(*args, **kwargs):
        spec = kwargs['executor_spec']
        match = IMAGE_PLACEHOLDER.match(spec.container.image)
        if match:
            spec = copy.deepcopy(spec)
            spec.container.image = str(kwargs['arguments'][match[1]])
            kwargs['executor_spec'] = spec
        return original(*args, **kwargs)

    task_dispatcher.run_single_task_implementation = resolving
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original
