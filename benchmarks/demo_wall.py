"""Wall time of the end-to-end local demo (`video-kd run-local`, i.e. `make demo`).

Runs the real pipeline (KFP local runner, local S3 server, generated data,
tiny configs) in a subprocess and records its wall time.  ``--workdir``
decides whether the teacher and the student-alone baseline are reused from
an earlier call (warm: the default .local-run) or trained first (cold: a
fresh directory).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument(
        '--cold',
        action='store_true',
        help='fresh work dir: the teacher and baseline are trained too',
    )
    parser.add_argument('--workdir', default=str(common.ROOT / '.local-run'))
    parser.add_argument('--out', default='demo_wall')
    parser.add_argument(
        '--log', help="write the demo's whole output (progress lines included) here"
    )
    parser.add_argument('extra', nargs='*', help='more `video-kd run-local` arguments')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cold:  # a fresh work dir, removed afterwards (it holds ~2.5 GB)
        with tempfile.TemporaryDirectory(prefix='demo_cold_') as workdir:
            return run_demo(args, workdir)
    return run_demo(args, args.workdir)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_demo(args, workdir: str) -> int:
    import subprocess

    warm = not args.cold and any(Path(workdir).glob('inputs/*/teacher-*/epoch_*.pth'))
    command = [
        str(Path(sys.executable).parent / 'video-kd'),
        'run-local',
        '--workdir',
        workdir,
        *args.extra,
    ]
    start, cpu_start = time.perf_counter(), children_cpu_s()
    result = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu_start
    if args.log:
        Path(args.log).write_text(result.stdout + result.stderr)
    tail = (result.stdout + result.stderr).strip().splitlines()[-25:]
    print('\n'.join(tail))
    common.print_table(
        ['demo', 'teacher + baseline', 'exit', 'wall s', 'cpu s'],
        [
            [
                'video-kd run-local',
                'reused' if warm else 'trained',
                result.returncode,
                f'{wall:.0f}',
                f'{cpu:.0f}',
            ]
        ],
    )
    common.write_result(
        args.out,
        {
            'command': ' '.join(command),
            'returncode': result.returncode,
            'wall_s': wall,
            # user + system CPU of the demo and every process it waited for: on a loaded
            # machine the wall time is mostly waiting, this is the work
            'cpu_s': cpu,
            'teacher_and_baseline_reused': warm,
            'output_tail': tail,
        },
    )
    return result.returncode


if __name__ == '__main__':
    raise SystemExit(main())
