"""Render benchmarks/results/*.json as the Markdown tables of benchmarks/README.md.

Prints the Results section of benchmarks/README.md, one table per benchmark with
the machine, thread count, load average and command line of its run; paste it
there (tests/test_benchmarks.py fails while the README and the JSON disagree).
Nothing in those tables is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def load(name):
    path = common.RESULTS / f'{name}.json'
    return json.loads(path.read_text()) if path.is_file() else None


def md(headers, rows):
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def env_line(result):
    env = result['environment']
    return (
        f'_{result["created"]}, {env.get("cpu", env["machine"])}, {env["threads"]} threads, '
        f'torch {env["torch"]}, load avg at start {env["load_avg_start"][0]:.2f}, at end '
        f'{env["load_avg_end"][0]:.2f}; `{result["command"]}`_'
    )


def kd_step(result):
    rows = []
    for r in result['results']:
        for name, v in r['variants'].items():
            s, q = v['seconds'], v['ratio_to_student']
            target = '' if name == 'student' else (1.05 if name == 'kd_cached' else 1.25)
            met = '' if not target else ('yes' if q['median'] <= target else '**no**')
            rows.append(
                [
                    r['pair'],
                    r['size'],
                    f'{r["batch_clips"]}x{r["segments_x_crop"][0]}x{r["segments_x_crop"][1]}²',
                    name,
                    f'{s["median"]:.3f}',
                    f'{s["min"]:.3f}–{s["max"]:.3f}',
                    f'**{q["median"]:.2f}x**',
                    f'{q["min"]:.2f}–{q["max"]:.2f}',
                    f'<= {target}x: {met}' if target else '',
                ]
            )
        for name, why in r['skipped'].items():
            rows.append([r['pair'], r['size'], '', name, 'n/a', '', '', why, ''])
    return md(
        [
            'pair',
            'size',
            'batch (clips x frames x px)',
            'step',
            'median s',
            'range s',
            'step/student',
            'ratio range',
            'target',
        ],
        rows,
    )


def kd_gain(result):
    rows = [
        [
            arm,
            ', '.join(f'{r["top1"]:.3f}' for r in runs),
            f'{result["summary_top1"][arm]["mean"]:.3f}',
            f'{result["summary_top1"][arm]["stdev"]:.3f}',
            f'{sum(r["wall_s"] for r in runs) / len(runs):.0f}',
        ]
        for arm, runs in result['runs'].items()
    ]
    rows.append(['teacher (tsm_r50_tiny)', f'{result["teacher"]["top1"]:.3f}', '', '', ''])
    gains = [
        [name, f'{g["mean"]:+.3f}', f'{g["stdev"]:.3f}', g['n']]
        for name, g in result['gains'].items()
    ]
    lr = f', AdamW lr {result["lr"]:g}' if result.get('lr') else ''
    budget = (
        f'Student and KD arms: {result["epochs"]} epochs{lr}, cosine schedule; top-1 on '
        f'{result.get("num_val", "?")} validation clips after the last epoch; '
        f'{result.get("jobs", 1)} training(s) at a time (wall s includes that sharing).'
    )
    return (
        budget
        + '\n\n'
        + md(['arm', 'top-1 per seed', 'mean', 'stdev', 'wall s per run'], rows)
        + '\n\n'
        + md(['paired difference (same seed)', 'mean', 'stdev', 'seeds'], gains)
    )


def data_loading(result):
    rows = []
    for r in result['results']:
        for step, v in r.get('vs_kd_step', {}).items():
            rows.append(
                [
                    r['size'],
                    f'{r["video_side"]}px, {r["frames_per_video"]} frames',
                    f'{r["clips_per_s_one_worker"]:.1f}',
                    step,
                    f'{v["step_s_per_clip"]:.3f}',
                    v['bound'],
                    v['workers_to_keep_up'],
                ]
            )
        if not r.get('vs_kd_step'):
            rows.append(
                [
                    r['size'],
                    f'{r["video_side"]}px',
                    f'{r["clips_per_s_one_worker"]:.1f}',
                    '',
                    '',
                    '',
                    '',
                ]
            )
    return md(
        [
            'size',
            'videos',
            'decode clips/s (1 worker)',
            'step',
            'step s/clip',
            'bound (1 worker)',
            'workers to keep up',
        ],
        rows,
    )


def logit_cache(result):
    rows = [
        [
            r['pair'],
            r['size'],
            f'{r["miss_s_per_clip"]["median"] * 1000:.1f}',
            f'{r["hit_s_per_clip"]["median"] * 1000:.3f}',
            'x'.join(map(str, r['entry_shape']['logits'])),
            r['entry_bytes'],
            f'{r["k400_cache_gib"]:.1f}',
        ]
        for r in result['results']
    ]
    store = result['storage']['local']
    text = md(
        [
            'pair',
            'size',
            'miss ms/clip (teacher fwd)',
            'hit ms/clip',
            'entry',
            'bytes',
            'K400 x4 views GiB',
        ],
        rows,
    )
    text += (
        f'\n\nShard of {result["storage"]["entries"]} entries: '
        f'{store["shard_bytes"] / 2**20:.1f} MiB, written in {store["write_s"]:.2f} s, '
        f'loaded in {store["load_s"]:.2f} s (local disk).'
    )
    return text


def demo(result):
    return md(
        ['demo', 'teacher + baseline', 'exit', 'wall time'],
        [
            [
                '`video-kd run-local` (make demo)',
                'reused' if result['teacher_and_baseline_reused'] else 'trained first',
                result['returncode'],
                f'{result["wall_s"]:.0f} s',
            ]
        ],
    )


def image_ci(result):
    builds = result['builds']
    base_s = builds.get('cold', {}).get('base_s')
    labels = {
        'cold': 'cold build: empty layer cache (torch, dependencies, ...); '
        + (f'base made by mmdebstrap in {base_s} s' if base_s else 'the mmdebstrap base reused'),
        'cached': 'build with nothing changed',
        'source_edit': 'build after a source edit',
    }
    rows = [
        [labels[name], f'{b["wall_s"]:.0f} s', b['steps_rebuilt']] for name, b in builds.items()
    ]
    tests = result.get('container_tests')
    if tests:
        rows.append(
            [
                '`pytest tests/test_image.py` (image cached; pipeline as subprocesses '
                f'{tests["subprocess_run_s"]} s, then in containers {tests["containerised_run_s"]} s)',
                f'{tests["wall_s"]:.0f} s',
                tests['summary'],
            ]
        )
    return md(['what', 'wall time', 'Dockerfile steps run / result'], rows)


SECTIONS = [
    ('kd_step', 'KD step overhead', kd_step),
    ('logit_cache', 'Teacher-logit cache', logit_cache),
    ('kd_gain', 'KD gain (and what the cheaper teachers do to accuracy)', kd_gain),
    ('data_loading', 'Data loading vs step time', data_loading),
    ('demo_wall', 'End-to-end local demo', demo),
    ('image_ci', 'The image in CI (make image, tests/test_image.py)', image_ci),
]


def main(argv=None) -> int:
    argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1]
    ).parse_args(argv)
    for name, title, render in SECTIONS:
        result = load(name)
        print(f'### {title}\n')
        print(render(result) + '\n\n' + env_line(result) if result else '_not run yet_')
        print()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
