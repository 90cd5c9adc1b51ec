"""KD gain on the generated dataset: student alone vs KD (MMRazor's, inference teacher, cached).

One teacher (tsm_r50_tiny) is trained once; then, for each seed, the student
(tsm_mobilenetv2_tiny) is trained alone (student), distilled as MMRazor does it
(kd), with the teacher as an fp32 or bf16 inference model (kd_fp32, kd_bf16:
--teacher-precision, video_kd.distill.fast_teacher: eval mode, so the teacher's
head has no dropout) and with the teacher-logit cache (kd_cached:
video_kd.distill.logit_cache), all with the same data, schedule, learning rate and
seed.  Top-1 on the validation split after the last epoch is reported per run,
with mean and standard deviation over seeds, so the gain (and whether the
cheaper teachers change accuracy) can be read against the seed-to-seed noise.
Every training runs as a user runs it: ``python -m video_kd.distill.train ...`` in a
subprocess; --jobs runs several at once (give each --threads so that
jobs x threads <= cores).

Budget: from scratch on the generated data, the tiny MobileNetV2 student needs
a few hundred iterations before it leaves chance (measured, seed 0, AdamW
3e-3: 35% top-1 after 20 of 40 epochs, 87.5% after 40; the tiny config's
1e-3 for 15 epochs stays near chance).  The defaults (20 epochs, 3e-3) sit
where the student alone is still learning, which is where a teacher can help.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

TEACHER = 'tsm_r50_tiny'
STUDENT = 'tsm_mobilenetv2_tiny'
KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
ARMS = ('student', 'kd', 'kd_fp32', 'kd_bf16', 'kd_cached')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=ARMS)
    parser.add_argument('--epochs', type=int, default=20, help='student / KD epochs')
    parser.add_argument(
        '--lr',
        type=float,
        default=3e-3,
        help='AdamW learning rate of the student and KD arms (the same for both)',
    )
    parser.add_argument('--jobs', type=int, default=1, help='trainings run at once')
    parser.add_argument('--teacher-epochs', type=int, default=15)
    parser.add_argument(
        '--dataset',
        help='existing dataset root (default: generate one with '
        'video_kd.data.dataset.generate_dataset defaults)',
    )
    parser.add_argument(
        '--teacher-ckpt',
        help='a trained tsm_r50_tiny checkpoint for --dataset '
        '(default: train one, --teacher-epochs)',
    )
    parser.add_argument('--workdir', help='where runs go (default: a temporary directory)')
    parser.add_argument(
        '--threads',
        type=int,
        default=0,
        help="OMP_NUM_THREADS of each training (default: torch's own)",
    )
    parser.add_argument(
        '--kd-threads',
        type=int,
        default=0,
        help='OMP_NUM_THREADS of the KD arms (default: --threads)',
    )
    parser.add_argument(
        '--demo',
        action='store_true',
        help="the demo's settings (video_kd.cli.DEMO_*: data, epochs, lr, threads (the KD arms "
        "the pipeline's, the others the input trainings'), "
        'no loader workers, validation as the tiny config has it: every epoch); the teacher '
        'trains beside the students alone; writes kd_gain_demo.json (the committed one: '
        '--arms student kd_bf16, the demo on a CPU with native bf16; '
        'kd_gain_demo_fp32.json: --arms student kd_fp32 --out kd_gain_demo_fp32)',
    )
    parser.add_argument('--out', default='kd_gain')
    return parser.parse_args(argv)


THREADS: dict[str, str] = {}  # --threads: every training's OMP_NUM_THREADS
KD_THREADS: dict[str, str] = {}  # --kd-threads: the KD arms'
DEMO_OPTIONS: list[str] = []  # --demo: run-local's --cfg-options (video_kd.local_run)


def linked_root(data: Path, dest: Path) -> Path:
    """A data root whose entries link to ``data``'s: a teacher-logit cache of its own."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in data.iterdir():
        if item.name != 'teacher_logits' and not (dest / item.name).exists():
            (dest / item.name).symlink_to(item.resolve())
    return dest


def train(
    config: str,
    work_dir: Path,
    data: Path,
    epochs: int,
    seed: int,
    *extra: str,
    lr: float | None = None,
    threads: dict[str, str] = THREADS,
) -> dict:
    options = [
        f'randomness.seed={seed}',
        f'train_cfg.val_interval={epochs}',
        f'param_scheduler.0.T_max={epochs}',
    ]
    if lr is not None:
        options.append(f'optim_wrapper.optimizer.lr={lr}')
    if DEMO_OPTIONS:  # as run-local trains: no loader workers, the config's validation
        options = [o for o in options if not o.startswith('train_cfg.val_interval')]
        options += DEMO_OPTIONS
    command = [
        sys.executable,
        '-m',
        'video_kd.distill.train',
        config,
        '--work-dir',
        str(work_dir),
        '--data-root',
        str(data),
        '--max-epochs',
        str(epochs),
        '--no-data-check',
        *extra,
        '--cfg-options',
        *options,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **threads})
    wall = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))[-1]
    records = [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
    val = [r for r in records if any(k.endswith('acc/top1') for k in r)][-1]
    top1 = next(v for k, v in val.items() if k.endswith('acc/top1') and 'teacher' not in k)
    out = {'top1': top1, 'wall_s': wall, 'val_record': val}
    hits = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if 'teacher-logit cache:' in line and 'hits' in line
    ]
    if hits:
        out['cache'] = hits[-1].split('teacher-logit cache:', 1)[1].strip()
    return out


# (arm, reference): what each comparison isolates
COMPARISONS = (
    ('kd', 'student'),
    ('kd_fp32', 'student'),
    ('kd_bf16', 'student'),
    ('kd_cached', 'student'),
    ('kd_bf16', 'kd'),  # eval-mode bf16 teacher vs MMRazor's teacher
    ('kd_cached', 'kd'),  # the cache as a whole vs MMRazor's KD
    ('kd_cached', 'kd_bf16'),
)  # both eval-mode teachers: mostly the K fixed views


def paired_differences(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Top-1 of an arm minus its reference on the same seed, summarised over seeds."""
    out = {}
    for arm, reference in COMPARISONS:
        if arm in runs and reference in runs:
            diffs = [
                a['top1'] - r['top1'] for a, r in zip(runs[arm], runs[reference], strict=False)
            ]
            out[f'{arm}_minus_{reference}'] = common.summary(diffs)
    return out


def evaluate_teacher(ckpt: Path, data: Path, work_dir: Path) -> dict:
    out = work_dir / 'metrics.json'
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'video_kd.distill.evaluate',
            TEACHER,
            str(ckpt),
            '--data-root',
            str(data),
            '--out',
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f'evaluating the teacher failed:\n{result.stderr[-3000:]}')
    return {
        'top1': json.loads(out.read_text())['top1_acc'],
        'checkpoint': str(ckpt),
        'wall_s': time.perf_counter() - start,
    }


def use_demo_settings(args) -> None:
    """--demo: run-local's defaults (video_kd.cli.DEMO_*), so seed 0 here is the demo's own
    run on this host."""
    # deferred: the local harness (kfp, moto), --demo only
    from video_kd import cli, local_run

    args.epochs, args.lr = cli.DEMO_EPOCHS, cli.DEMO_LR
    args.teacher_epochs, args.threads = cli.DEMO_TEACHER_EPOCHS, cli.DEMO_INPUT_THREADS
    args.kd_threads = cli.DEMO_THREADS  # the KD student trains in the pipeline's train step
    if args.out == 'kd_gain':
        args.out = 'kd_gain_demo'
    DEMO_OPTIONS.extend(local_run.TINY_CFG_OPTIONS)


def make_dataset(args, work: Path) -> Path:
    # deferred: the generator, only without --dataset
    from video_kd.data.dataset import generate_dataset, validate_dataset

    if args.demo:  # as run-local makes it (no validation copy)
        from video_kd.cli import DEMO_DATA

        return generate_dataset(work / 'data', **DEMO_DATA)
    generate_dataset(work / 'raw')
    validate_dataset(work / 'raw', work / 'data')
    return work / 'data'


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.demo:
        use_demo_settings(args)
    if args.threads:
        THREADS['OMP_NUM_THREADS'] = str(args.threads)
    KD_THREADS.update({'OMP_NUM_THREADS': str(args.kd_threads)} if args.kd_threads else THREADS)
    work = Path(args.workdir or tempfile.mkdtemp(prefix='kd_gain_'))
    data = Path(args.dataset) if args.dataset else make_dataset(args, work)
    print(f'dataset {data}; runs in {work}', flush=True)
    pool = ThreadPoolExecutor(max_workers=args.jobs)  # each job is a subprocess

    def get_teacher() -> tuple[dict, Path]:
        if args.teacher_ckpt:  # evaluate the given teacher on the val split
            ckpt = Path(args.teacher_ckpt)
            found = evaluate_teacher(ckpt, data, work / 'teacher_eval')
        else:
            found = train(TEACHER, work / 'teacher', data, args.teacher_epochs, 0)
            ckpt = work / 'teacher' / f'epoch_{args.teacher_epochs}.pth'
        print(f'teacher top-1 {found["top1"]:.3f} ({found["wall_s"]:.0f} s)', flush=True)
        return found, ckpt

    # the students alone do not need the teacher: they train while it trains (jobs >= 2)
    teacher_job = pool.submit(get_teacher)

    def run_arm(seed: int, arm: str) -> dict:
        wd = work / f'{arm}_seed{seed}'
        if arm == 'student':
            run = train(STUDENT, wd, data, args.epochs, seed, lr=args.lr)
        else:
            extra = ['--teacher-ckpt', str(teacher_job.result()[1])]
            root = data
            if arm in ('kd_fp32', 'kd_bf16'):  # the teacher as an inference model
                extra += ['--teacher-precision', arm.removeprefix('kd_')]
            if arm == 'kd_cached':  # the cache lives with the data root: one root per seed
                extra += ['--teacher-logit-cache']
                root = linked_root(data, work / f'cache_seed{seed}')
            run = train(KD, wd, root, args.epochs, seed, *extra, lr=args.lr, threads=KD_THREADS)
        run['seed'] = seed
        print(
            f'seed {seed} {arm}: top-1 {run["top1"]:.3f} ({run["wall_s"]:.0f} s)'
            + (f'  cache: {run["cache"]}' if 'cache' in run else ''),
            flush=True,
        )
        return run

    # seed by seed, each seed's arms together: the paired differences come in as they finish;
    # KD arms with more threads than the others run after them, fewer at a time, so that no
    # more threads than --jobs x --threads share the cores (an oversubscribed OpenMP training
    # runs several times slower)
    jobs = [(seed, arm) for seed in args.seeds for arm in args.arms]
    kd_wider = args.kd_threads > max(args.threads, 1)
    first = [job for job in jobs if not (kd_wider and job[1] != 'student')]
    later = [job for job in jobs if job not in first]
    with pool:
        done = dict(zip(first, pool.map(lambda job: run_arm(*job), first), strict=True))
        kd_jobs = max(1, args.jobs * max(args.threads, 1) // max(args.kd_threads, 1))
        with ThreadPoolExecutor(max_workers=kd_jobs) as kd_pool:
            done.update(zip(later, kd_pool.map(lambda job: run_arm(*job), later), strict=True))
    done = [done[job] for job in jobs]
    teacher = teacher_job.result()[0]
    runs = {
        arm: [run for (_, a), run in zip(jobs, done, strict=False) if a == arm] for arm in args.arms
    }
    summary = {arm: common.summary([r['top1'] for r in rs]) for arm, rs in runs.items()}
    gains = paired_differences(runs)
    rows = [
        [
            arm,
            ' '.join(f'{r["top1"]:.3f}' for r in runs[arm]),
            f'{summary[arm]["mean"]:.3f}',
            f'{summary[arm]["stdev"]:.3f}',
            f'{statistics.fmean(r["wall_s"] for r in runs[arm]):.0f}',
        ]
        for arm in runs
    ]
    rows.append(['teacher', f'{teacher["top1"]:.3f}', '', '', f'{teacher["wall_s"]:.0f}'])
    common.print_table(['arm', 'top-1 per seed', 'mean', 'stdev', 'wall s'], rows)
    for name, g in gains.items():
        print(f'{name}: mean {g["mean"]:+.3f}, stdev {g["stdev"]:.3f} over {g["n"]} seeds')
    num_val = sum(1 for line in (data / 'val_list.txt').read_text().splitlines() if line.strip())
    common.write_result(
        args.out,
        {
            'dataset': str(data),
            'num_val': num_val,
            'demo_settings': args.demo,
            'cfg_options': DEMO_OPTIONS,
            'epochs': args.epochs,
            'lr': args.lr,
            'jobs': args.jobs,
            'teacher_epochs': args.teacher_epochs,
            'seeds': args.seeds,
            'threads': args.threads,
            'kd_threads': args.kd_threads or args.threads,
            'teacher': teacher,
            'runs': runs,
            'summary_top1': summary,
            'gains': gains,
        },
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
