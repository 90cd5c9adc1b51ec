"""The shipped image, built here by `make image` and run: every step inside it, as uid 10001.

Builds docker/Dockerfile with docker/build_image.sh (podman, a Debian base made by mmdebstrap;
layers are cached, so a build with no change takes seconds), then: every module imports in
the image, every entry point's --help works there, and the whole pipeline runs with every
step in a container (KFP's DockerRunner against podman's Docker-compatible socket) and gives
the metrics that the subprocess run of the same inputs gives. See tests/containers.py for
when these tests skip and when they must not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import containers
import pytest

from components import STEPS
from video_kd import image_check
from video_kd.errors import TEMPORARY_FAILURE

ROOT = containers.ROOT
TRAIN_POD = ['python', '-m', 'video_kd.train_pod']  # every training process's entry point
ENTRY_POINTS = [
    ['video-kd'],
    *(['video-kd', command] for command in ('compile', 'run-local', 'upload', 'submit')),
    *(['python', '-m', f'components.{step}'] for step in __import__('components').STEPS),
    *(['python', '-m', f'video_kd.{tool}'] for tool in ('train', 'convert', 'evaluate')),
    ['python', '-m', 'video_kd.image_check'],
    TRAIN_POD,
]
TINY_DATA = dict(num_classes=3, train_per_class=4, val_per_class=2, num_frames=12, size=64)


@pytest.fixture(scope='session')
def docker_host(image, tmp_path_factory):
    """podman's Docker API for the session: what KFP's DockerRunner talks to."""
    with containers.podman_service(tmp_path_factory.mktemp('podman')) as url:
        yield url


# --- inside the image -----------------------------------------------------------------


def test_every_module_imports_in_the_image_as_uid_10001(image):
    # its home is its own (matplotlib's cache, written as root at build time, was not)
    script = (
        'f=$(find "$HOME" ! -user 10001); [ -z "$f" ] || { echo "not uid 10001\'s: $f" >&2; exit 9; }'
        ' && id -u && echo "commit=$VIDEO_KD_GIT_COMMIT" && python -m video_kd.image_check --list'
    )
    result = containers.run_in_image(image, 'sh', '-c', script)
    assert result.returncode == 0, result.stderr[-2000:]
    uid, commit, *modules = result.stdout.split()
    assert uid == '10001'
    assert modules == image_check.project_modules()  # the same modules as this checkout's
    # the model card's code version: the commit the image was built from (the image has no .git)
    head = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert commit.removeprefix('commit=').startswith(head), (commit, head)


# One container runs every --help (a container per command would cost ~10 s more).
HELP_SCRIPT = """
import json, subprocess, sys
out = {}
for argv in json.loads(sys.argv[1]):
    r = subprocess.run(argv + ['--help'], capture_output=True, text=True)
    out[' '.join(argv)] = [r.returncode, r.stdout, r.stderr[-500:]]
print(json.dumps(out))
"""


def test_help_of_every_entry_point_in_the_image(image):
    result = containers.run_in_image(
        image, 'python', '-c', HELP_SCRIPT, json.dumps(ENTRY_POINTS), timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout)
    assert len(answers) == len(ENTRY_POINTS)
    for command, (rc, stdout, stderr) in answers.items():
        assert rc == 0, f'{command} --help: exit {rc}: {stderr}'
        assert 'usage:' in stdout and len(stdout.splitlines()) > 3, (command, stdout)


def test_a_container_that_cannot_reach_s3_says_so_in_one_line(image, s3_env, bucket):
    """No host network: 127.0.0.1 is the container's own, where no S3 server listens."""
    env = {k: os.environ[k] for k in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')}
    result = containers.run_in_image(
        image,
        'python',
        '-m',
        'components.data_prep',
        '--dataset-uri',
        f's3://{bucket}/datasets/none',
        '--s3-bucket',
        bucket,
        env={**env, 'S3_ENDPOINT_URL': s3_env, 'AWS_DEFAULT_REGION': 'us-east-1'},
        host_network=False,
        timeout=300,
    )
    # S3 out of reach is not bad input: the one line, with the temporary-failure status
    assert result.returncode == TEMPORARY_FAILURE, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and s3_env in last, last
    assert 'Traceback' not in result.stderr


def test_an_image_that_lacks_a_module_says_which_in_one_line(image):
    """boto3 made unimportable in the container, as in an image built without it."""
    code = (
        'import sys; sys.modules["boto3"] = None\n'
        'from video_kd.errors import run_cli; from video_kd.image_check import main\n'
        'sys.exit(run_cli(main))'
    )
    result = containers.run_in_image(image, 'python', '-c', code)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: this installation lacks module 'boto3', imported by "), line


# --- the build -------------------------------------------------------------------------


def test_build_without_a_container_engine_is_one_line(tmp_path):
    """Runs anywhere: a PATH with the shell and coreutils the script needs, no podman."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for tool in ('bash', 'dirname', 'tr'):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [str(bin_dir / 'bash'), str(containers.BUILD_SCRIPT)],
        env={'PATH': str(bin_dir), 'HOME': str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'error: no container engine: podman runc mmdebstrap not found '
        '(apt-get install podman runc mmdebstrap, or VIDEO_KD_INSTALL_TOOLS=1 '
        f'{containers.BUILD_SCRIPT})'
    ]


def test_a_failing_build_names_the_layer(image, tmp_path):
    dockerfile = tmp_path / 'Dockerfile'
    dockerfile.write_text(
        'ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo fine\nRUN echo "no space left" && exit 3\n'
    )
    result = subprocess.run(
        ['bash', str(containers.BUILD_SCRIPT)],
        env={
            **containers.engine_env(),
            'PYTHON': sys.executable,
            'DOCKERFILE': str(dockerfile),
            'IMAGE': 'localhost/video-kd-failing-build:test',
            'BUILD_LOG': str(tmp_path / 'build.log'),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: image build failed at STEP 3/3: RUN echo "no space left"'), last
    assert 'no space left' in last.split('...: ', 1)[1] and str(tmp_path / 'build.log') in last


@pytest.mark.slow
def test_a_source_edit_rebuilds_only_the_source_layers(image, tmp_path):
    """A copy of the build context with one source file changed: the torch and dependency
    layers come from the cache, only the project's COPY/RUN layers run again."""
    context = tmp_path / 'context'
    context.mkdir()
    for name in ('pyproject.toml', 'README.md', 'docker', 'video_kd', 'components', 'pipelines'):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(source, context / name)
    with open(context / 'video_kd' / 'compat.py', 'a') as f:
        f.write('\n# an edit\n')
    log = tmp_path / 'build.log'
    tag = 'localhost/video-kd-edit-test:latest'
    try:
        result = subprocess.run(
            ['bash', str(context / 'docker' / 'build_image.sh')],
            env={
                **containers.engine_env(),
                'PYTHON': sys.executable,
                'IMAGE': tag,
                'BUILD_LOG': str(log),
            },
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        containers.podman('rmi', '--force', tag)
    steps = log.read_text().split('\nSTEP ')[1:]
    rebuilt = [
        s.splitlines()[0] for s in steps if '--> Using cache' not in s and ': FROM ' not in s
    ]
    assert rebuilt, 'nothing was rebuilt'
    assert all(
        s.split(': ', 1)[1].startswith(
            (
                'COPY README.md',
                'COPY video_kd',
                'COPY components',
                'COPY pipelines',
                'RUN pip install --no-deps',
                'ARG VIDEO_KD_GIT_COMMIT',  # the source's identity: one line, no code
                'RUN echo "${VIDEO_KD_GIT_COMMIT}"',
                'ENV VIDEO_KD_GIT_COMMIT',
                'USER',
                'WORKDIR /home',
                'ENTRYPOINT',
                'CMD',
            )
        )
        for s in rebuilt
    ), rebuilt


# --- the pipeline, every step in a container --------------------------------------------


@pytest.mark.slow
def test_pipeline_in_containers_gives_the_subprocess_runs_metrics(
    image, docker_host, s3_env, bucket, tmp_path, monkeypatch, capfd
):
    from video_kd import local_run

    workdir = tmp_path / 'w'
    # the steps run as uid 10001 and write their outputs under the bind-mounted pipeline
    # root, as a pod writes to its volume
    (workdir / 'kfp-root').mkdir(parents=True)
    os.chmod(workdir / 'kfp-root', 0o777)
    common = dict(teacher_epochs=1, kd_epochs=1, baseline=False, workers=1)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    started = time.monotonic()
    reference = local_run.run_local_pipeline(workdir, bucket, 'subprocess', TINY_DATA, **common)
    subprocess_s = time.monotonic() - started
    capfd.readouterr()

    monkeypatch.setenv('DOCKER_HOST', docker_host)
    old_umask = os.umask(0)  # KFP makes the task's output directories on this side
    started = time.monotonic()
    try:
        s3 = {
            'S3_ENDPOINT_URL': s3_env,
            'AWS_ACCESS_KEY_ID': os.environ['AWS_ACCESS_KEY_ID'],
            'AWS_SECRET_ACCESS_KEY': os.environ['AWS_SECRET_ACCESS_KEY'],
            'AWS_DEFAULT_REGION': 'us-east-1',
        }
        with containers.task_images_resolved():
            contained = local_run.run_local_pipeline(
                workdir,
                bucket,
                'container',
                TINY_DATA,
                runner=containers.docker_runner(s3),
                **common,
            )
    finally:
        os.umask(old_umask)
    container_s = time.monotonic() - started
    out = capfd.readouterr().out
    assert out.count(f'Found image {image!r}') == len(STEPS), out[-3000:]  # every step in it
    assert contained['run_id'] != reference['run_id']
    # the same inputs give the same numbers: every metric but the run's own id
    assert contained['metrics'].pop('run_id') == contained['run_id']
    assert reference['metrics'].pop('run_id') == reference['run_id']
    assert contained['metrics'] == reference['metrics']
    assert {e.step for e in contained['manifest'].entries} == {
        e.step for e in reference['manifest'].entries
    }
    with capfd.disabled():  # the measured figures, for the README and the CI budget
        print(
            f'\npipeline: subprocess run {subprocess_s:.0f}s (teacher training included), '
            f'containerised run {container_s:.0f}s; student {contained["metrics"]["student"]}'
        )
