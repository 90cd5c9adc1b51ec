"""What the image adds to CI: build times (cold, cached, after a source edit) and its tests.

Runs `docker/build_image.sh` (what `make image` runs) three ways and then the container
tests (`pytest tests/test_image.py`: imports and --help in the image, the bad cases, the
layer-cache check and the whole pipeline with every step in a container next to the same
inputs run as subprocesses), and records each wall time: the figures behind the claim that
CI stays well inside 60 minutes on 2 cores.

cold: podman's image store emptied first (base made again by mmdebstrap, torch and the
dependencies installed from the registries/the local wheel directory), as on a fresh CI
machine; cached: nothing changed; source edit: one comment added to a module in a copy of
the build context (only the source layers may run again). Needs root and podman, runc,
mmdebstrap (`apt-get install podman buildah runc mmdebstrap`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BUILD = common.ROOT / 'docker' / 'build_image.sh'
CONTEXT = ('pyproject.toml', 'README.md', 'docker', 'video_kd', 'components', 'pipelines')
ENV = {
    **os.environ,
    'CONTAINERS_CONF': os.environ.get(
        'CONTAINERS_CONF', str(common.ROOT / 'docker' / 'containers.conf')
    ),
    'PYTHON': sys.executable,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument(
        '--keep-cache', action='store_true', help='skip the cold build (keeps the layer cache)'
    )
    parser.add_argument('--no-tests', action='store_true', help='builds only')
    parser.add_argument('--out', default='image_ci')
    return parser.parse_args(argv)


def timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, **kwargs)
    return time.perf_counter() - start, result


def build(script: Path, image: str | None = None) -> dict:
    env_image = {'IMAGE': image} if image else {}
    start = time.perf_counter()
    result = subprocess.run(
        ['bash', str(script)], capture_output=True, text=True, env={**ENV, **env_image}
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr.strip().splitlines()[-1])
    base = re.search(r'base ready in (\d+)s', result.stderr)
    return {
        'wall_s': wall,
        'base_s': int(base[1]) if base else 0,
        'steps_rebuilt': len(re.findall(r'^STEP ', result.stderr, re.M))
        - result.stderr.count('--> Using cache')
        - 1,  # FROM
    }


def empty_image_store() -> None:
    subprocess.run(['podman', 'image', 'prune', '--all', '--force'], env=ENV, check=True)


def edit_build() -> dict:
    with tempfile.TemporaryDirectory(prefix='image_edit_') as tmp:
        context = Path(tmp)
        for name in CONTEXT:
            source = common.ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, context / name, ignore=shutil.ignore_patterns('__pycache__')
                )
            else:
                shutil.copy2(source, context / name)
        with open(context / 'video_kd' / 'compat.py', 'a') as f:
            f.write('\n# an edit\n')
        tag = 'localhost/video-kd-edit-bench:latest'
        try:
            return build(context / 'docker' / 'build_image.sh', tag)
        finally:
            subprocess.run(['podman', 'rmi', '--force', tag], env=ENV, capture_output=True)


def container_tests() -> dict:
    wall, result = timed(
        [
            sys.executable,
            '-m',
            'pytest',
            'tests/test_image.py',
            '-p',
            'no:cacheprovider',
            '-q',
            '-rf',
        ],
        cwd=common.ROOT,
        timeout=3600,
    )
    summary = result.stdout.strip().splitlines()[-1]
    runs = re.search(r'subprocess run (\d+)s .*containerised run (\d+)s', result.stdout)
    return {
        'wall_s': wall,
        'summary': summary,
        'returncode': result.returncode,
        'failed': [line for line in result.stdout.splitlines() if line.startswith('FAILED ')],
        'subprocess_run_s': int(runs[1]) if runs else None,
        'containerised_run_s': int(runs[2]) if runs else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    builds = {}
    if not args.keep_cache:
        empty_image_store()
        builds['cold'] = build(BUILD)
    builds['cached'] = build(BUILD)
    builds['source_edit'] = edit_build()
    tests = None if args.no_tests else container_tests()
    rows = [[name, f'{b["wall_s"]:.0f}', b['steps_rebuilt']] for name, b in builds.items()]
    if tests:
        rows.append(['tests/test_image.py', f'{tests["wall_s"]:.0f}', tests['summary']])
    common.print_table(['what', 'wall s', 'steps run / result'], rows)
    common.write_result(args.out, {'builds': builds, 'container_tests': tests})
    return 0 if not tests or tests['returncode'] == 0 else 1


if __name__ == '__main__':
    raise SystemExit(main())
