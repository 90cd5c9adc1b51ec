"""Wall time of the end-to-end local demo (`make demo`), the way a new user meets it.

By default: a clean clone of this repository's HEAD in a scratch directory, then
``make install`` (the venv, as `make demo` makes it on a fresh machine), ``make demo``
(cold: the tiny teacher and the student-alone baseline are trained first) and
``make demo`` again (warm: both reused from the first call's ``.local-run``), each
timed on its own; ``--targets`` are the issue's (cold <= 12 min, warm <= 5 min).
pip's download cache is the machine's (a fresh machine downloads the wheels once).

``--in-place`` times one ``video-kd run-local`` with this checkout's venv instead
(``--cold``: a fresh work dir; else ``.local-run``, warm once it holds a teacher).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TARGETS_S = {'cold': 12 * 60, 'warm': 5 * 60}
# what the demo prints of each training (distill/progress_hook.py) and its result
PROGRESS = re.compile(r'epoch \d+/\d+ .*loss .*clips/s.*ETA')
METRIC = re.compile(r'(teacher|student with KD|student without KD)\s*: top-1 ([\d.]+)')
# where the time goes: the input models' trainings and the KFP local runner's tasks
TRAINED = re.compile(r'  (\w+): trained \S+ for \d+ epochs in (\d+)s')
TASK = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task|Task) \S*'([\w-]+)'")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument(
        '--in-place',
        action='store_true',
        help="one `video-kd run-local` with this checkout's venv, not a clean clone",
    )
    parser.add_argument(
        '--cold',
        action='store_true',
        help='with --in-place: a fresh work dir, so the teacher and baseline are trained too',
    )
    parser.add_argument('--workdir', default=str(common.ROOT / '.local-run'))
    parser.add_argument('--out', default='demo_wall')
    parser.add_argument(
        '--log-dir', help="keep each phase's whole output (progress lines included) here"
    )
    return parser.parse_args(argv)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(name: str, command: list[str], cwd: Path, log_dir: str | None) -> dict:
    """Run one phase; its wall and CPU time, exit status, metrics and output's tail."""
    print(f'[{time.strftime("%H:%M:%S")}] {name}: {" ".join(command)}', flush=True)
    start, cpu_start, load_start = time.perf_counter(), children_cpu_s(), os.getloadavg()[0]
    result = subprocess.run(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu_start
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / f'{name}.log').write_text(result.stdout)
    lines = result.stdout.strip().splitlines()
    print(f'  exit {result.returncode}, {wall:.0f} s wall, {cpu:.0f} s CPU', flush=True)
    return {
        'command': ' '.join(command),
        'returncode': result.returncode,
        'wall_s': wall,
        # user + system CPU of the phase and every process it waited for: on a loaded
        # machine the wall time is mostly waiting, this is the work
        'cpu_s': cpu,
        'load_avg_1min': [load_start, os.getloadavg()[0]],
        'progress_lines': sum(bool(PROGRESS.search(line)) for line in lines),
        'top1': {m[1]: float(m[2]) for m in map(METRIC.match, lines) if m},
        'trained_s': {m[1]: int(m[2]) for m in map(TRAINED.match, lines) if m},
        'tasks_s': task_seconds(lines),
        'output_tail': lines[-25:],
    }


def task_seconds(lines: list[str]) -> dict[str, float]:
    """Each pipeline task's wall seconds, from the local runner's start and finish lines."""
    seen: dict[str, list[datetime.datetime]] = {}
    for found in filter(None, map(TASK.match, lines)):
        at = datetime.datetime.strptime(found[1], '%H:%M:%S.%f')
        seen.setdefault(found[2], []).append(at)
    return {
        task: round((times[-1] - times[0]).total_seconds() % 86400, 1)
        for task, times in seen.items()
    }


def clean_clone(args) -> dict:
    commit = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=common.ROOT, text=True, capture_output=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix='demo_clone_') as scratch:  # ~3 GB with the venv
        clone = Path(scratch) / 'video-kd'
        subprocess.run(['git', 'clone', '--quiet', str(common.ROOT), str(clone)], check=True)
        phases = {'install': timed('install', ['make', 'install'], clone, args.log_dir)}
        for name in ('cold', 'warm'):
            if all(p['returncode'] == 0 for p in phases.values()):
                phases[name] = timed(name, ['make', 'demo'], clone, args.log_dir)
    return {'mode': 'clean clone', 'commit': commit, 'phases': phases}


def in_place(args) -> dict:
    if args.cold:  # a fresh work dir, removed afterwards (it holds ~2.5 GB)
        with tempfile.TemporaryDirectory(prefix='demo_cold_') as workdir:
            return run_in_place(args, workdir)
    return run_in_place(args, args.workdir)


def run_in_place(args, workdir: str) -> dict:
    name = 'warm' if any(Path(workdir).glob('inputs/*/teacher-*/epoch_*.pth')) else 'cold'
    command = [str(Path(sys.executable).parent / 'video-kd'), 'run-local', '--workdir', workdir]
    return {'mode': 'in place', 'phases': {name: timed(name, command, common.ROOT, args.log_dir)}}


def main(argv=None) -> int:
    args = parse_args(argv)
    result = in_place(args) if args.in_place else clean_clone(args)
    phases = result['phases']
    common.print_table(
        ['phase', 'exit', 'wall s', 'cpu s', 'target s', 'progress lines', 'top-1'],
        [
            [
                name,
                p['returncode'],
                f'{p["wall_s"]:.0f}',
                f'{p["cpu_s"]:.0f}',
                TARGETS_S.get(name, ''),
                p['progress_lines'],
                ', '.join(f'{k} {v:.3f}' for k, v in p['top1'].items()),
            ]
            for name, p in phases.items()
        ],
    )
    common.write_result(args.out, {**result, 'targets_s': TARGETS_S})
    return max(p['returncode'] for p in phases.values())


if __name__ == '__main__':
    raise SystemExit(main())
