"""Render benchmarks/results/*.json as the Markdown tables of benchmarks/README.md.

Prints the Results section of benchmarks/README.md, one table per benchmark with
the machine, thread count, load average and command line of its run; paste it
there (tests/test_benchmarks.py fails while the README and the JSON disagree).
``--k400-summary`` prints the short Kinetics-400 table of the top-level README
(checked the same way), ``--checkpoint-bytes`` the checkpoint storage table of
docs/storage-and-faults.md, ``--serve-latency`` the serving table of docs/serving.md,
``--demo-wall`` the demo's wall time table of docs/local-run.md.
Nothing in those tables is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    if result.get('demo_settings'):
        kd_threads = result.get('kd_threads') or result.get('threads')
        lr += (
            f" (run-local's defaults, video_kd.cli.DEMO_*: {result.get('threads')} thread(s) "
            f'per student-alone training, {kd_threads} per KD training, no loader workers, '
            'validation as the tiny config has it: every epoch)'
        )
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


PHASES = {
    'install': '`make install` (the venv)',
    'cold': '`make demo`, first call: teacher + baseline trained, then the pipeline',
    'warm': '`make demo` again: teacher + baseline reused',
}


def demo(result):
    targets = result['targets_s']
    rows = []
    for name, phase in result['phases'].items():
        target = targets.get(name)
        met = (
            ''
            if target is None
            else f'{target / 60:g} min: {"yes" if phase["wall_s"] <= target else "**no**"}'
        )
        rows.append([PHASES[name], phase['returncode'], f"{phase['wall_s']:.0f} s",
                     f"{phase['cpu_s']:.0f} s", met,
                     ' / '.join(f'{v:.2f}' for v in phase['load_avg_1min'])])  # fmt: skip
    table = md(['phase', 'exit', 'wall', 'CPU', 'target', 'load avg (start / end)'], rows)
    for name in ('cold', 'warm'):
        phase = result['phases'].get(name, {})
        where = [f'{label} {seconds} s' for label, seconds in phase.get('trained_s', {}).items()]
        where += [f'{task} {seconds:.0f} s' for task, seconds in phase.get('tasks_s', {}).items()]
        if where:
            table += f"\n\nWhere the {name} call's time goes: {', '.join(where)}."
    return table


def s3_upload(result):
    rows = []
    for r in result['results']:
        old = r['variants']['check_then_managed_transfer']
        new = r['variants']['conditional']
        rows.append(
            [
                f'{r["size_mib"]} MiB',
                f'{old["seconds"]["median"]:.3f} ({old["mib_per_s"]:.0f} MiB/s)',
                f'{new["seconds"]["median"]:.3f} ({new["mib_per_s"]:.0f} MiB/s)',
                f'**{r["conditional_over_old"]:.2f}x**',
                old['seconds']['n'],
            ]
        )
    claims = result['claims_ms']
    rows.append(
        [
            'run.json claim',
            f'{claims["check_then_put"]["median"]:.1f} ms (HEAD + PUT)',
            f'{claims["create_if_absent"]["median"]:.1f} ms (one conditional PUT)',
            f'**{claims["create_if_absent"]["median"] / claims["check_then_put"]["median"]:.2f}x**',
            claims['check_then_put']['n'],
        ]
    )
    return md(
        [
            f'upload ({result["server"]})',
            'check-then-put, managed transfer: median s',
            'conditional (atomic): median s',
            'conditional / old',
            'rounds',
        ],
        rows,
    )


K400_TRAIN, K400_VAL = 240_000, 20_000  # videos, as the issue counts them


def data_scale(result):
    rows = []
    for r in result['results']:
        ratios = [
            s['steps_per_s'] / loc['steps_per_s']
            for s, loc in zip(r['pod_streamed'], r['pod_local'], strict=True)
        ]
        rate = statistics.median(ratios)
        # the median step is robust to the stalls a shared machine's neighbours cause
        median_step = statistics.median(p['step_s_median'] for p in r['pod_local']) / (
            statistics.median(p['step_s_median'] for p in r['pod_streamed'])
        )
        cpu = sum(p['pod_cpu_s'] for p in r['pod_streamed']) / sum(
            p['pod_cpu_s'] for p in r['pod_local']
        )
        rows.append(
            [
                f'{r["n_videos"]:,} ({r["n_train"]:,} / {r["n_val"]:,})' + _earlier(r),
                f'{r["data_prep_first_s"]:.1f} s ({r["n_videos"] / r["data_prep_first_s"]:.0f}/s)',
                f'{r["data_prep_rerun_s"]:.1f} s = {r["rerun_ratio"]:.1%} '
                + _met(r['rerun_ratio'] <= 0.10),
                f'{r["first_step_s_max"]:.1f} s ' + _met(r['first_step_s_max'] <= 30),
                f'{r["peak_disk_bytes_max"] / 2**20:.0f} MiB '
                + _met(r['peak_disk_bytes_max'] <= 2**30),
                _gets_per_epoch(r),
                f'{rate:.0%} ' + _met(rate >= 0.95) + f' ({min(ratios):.0%}–{max(ratios):.0%}, '
                f'{len(ratios)} rounds)',
                f'{median_step:.0%}',
                f'{cpu:.2f}',
                ', '.join(f'{p["server_cpu_share"]:.1%}' for p in r['pod_streamed']),
                f'{r["main_download_s"]:.0f} s' if r.get('main_download_s') else '',
            ]
        )
    text = (
        f'Every S3 request through a proxy adding {result["latency_ms"]:g} ms; pod = '
        f'`{result["pod"]["config"]}`, batch {result["pod"]["batch"]}, '
        f'{result["pod"]["workers"]} loader workers; clips {result["clip"]["side"]}px x '
        f'{result["clip"]["frames"]} frames.\n\n'
    )
    text += md(
        [
            'videos (train / val)',
            'data prep, first',
            'unchanged re-run (<= 10%)',
            'bare student pod: start -> first step (<= 30 s)',
            'pod peak disk (<= 1 GB)',
            'video GETs per epoch (extrapolated)',
            'streamed / local step rate (>= 95%; median, range)',
            'median step, local / streamed',
            'pod CPU streamed / local',
            'S3 server CPU share (streamed runs)',
            'main: download all first',
        ],
        rows,
    )
    text += '\n\n' + POD_COVERS + ' ' + GETS_EXTRAPOLATED
    if any(r.get('run') for r in result['results']):
        text += (
            '\n\n† measured by an earlier invocation of the script (other sizes); the line '
            'below describes the latest one.'
        )
    return text + '\n\n' + k400_projection(result)


POD_COVERS = (
    '*Bare student pod*: a fresh Python process that builds the student config, points its '
    'train loader at the streamed dataset, builds the mmengine Runner and trains the student '
    'alone, validation off; not `video_kd.distill.train_pod.main`: no torchrun, no download of the '
    "run's resolved config, of the teacher checkpoint (checksum verified) or of a checkpoint "
    'to resume from, no teacher built or run.'
)
GETS_EXTRAPOLATED = (
    '*GETs per epoch* are not an epoch counted: each pod run reads `iters x batch` videos '
    '(a part of an epoch); the column is its GETs per distinct video read x the training '
    'videos, + 1 for the list.'
)


def _gets_per_epoch(row: dict) -> str:
    """The extrapolated figure and what it was extrapolated from (the median pod run)."""
    read = statistics.median(p['gets']['distinct_videos'] for p in row['pod_streamed'])
    return (
        f'{row["gets_per_epoch"]:,} ({row["gets_per_distinct_video"]:.2f} GETs per video '
        f'over {read:.0f} read)'
    )


def _earlier(row: dict) -> str:
    """Rows kept from an earlier invocation (the largest N runs on its own) say so."""
    run = row.get('run')
    if not run:
        return ''
    if isinstance(run, dict):
        return f' † {run["created"]}, load {run["load_avg_start"]:.1f}'
    return ' †'


def _met(ok: bool) -> str:
    return 'yes' if ok else '**no**'


def k400_projection(result):
    """Kinetics-400 figures from the measured N (each row says what is measured, what is not)."""
    return md(
        ['Kinetics-400 (260k videos)', 'measured', 'projected', 'basis', 'how'],
        _k400_rows(result),
    )


def k400_summary(result):
    """The projection without the "how": the short table of the top-level README."""
    rows = [row[:4] for row in _k400_rows(result)]
    return md(['Kinetics-400 (260k videos)', 'measured', 'projected', 'basis'], rows)


def _k400_rows(result):
    results = result['results']
    big = results[-1]
    n_k400 = K400_TRAIN + K400_VAL
    at_big = f'N={big["n_videos"]:,}'
    worst_start = max(r['first_step_s_max'] for r in results)
    list_load = result.get('k400_list_load') or {}
    list_s = list_load.get('seconds')
    read = statistics.median(p['gets']['distinct_videos'] for p in big['pod_streamed'])
    gets = statistics.median(p['gets']['videos'] for p in big['pod_streamed'])
    rows = [
        [
            'data prep, first run',
            f'{big["data_prep_first_s"]:.0f} s at {at_big}',
            f'{big["data_prep_first_s"] / big["n_videos"] * n_k400 / 3600:.1f} h',
            'extrapolated',
            f'per-video time x {n_k400:,} (this box: bound by moto)',
        ],
        [
            'data prep, unchanged re-run',
            f'{big["data_prep_rerun_s"]:.1f} s at {at_big}',
            f'{big["data_prep_rerun_s"] / big["n_videos"] * n_k400 / 60:.1f} min',
            'extrapolated',
            f'per-video time x {n_k400:,} (listing + cache read)',
        ],
        [
            'bare student pod: start -> first step',
            f'{worst_start:.1f} s (slowest N) + {list_s:.1f} s (240k-line list)'
            if list_s
            else f'{worst_start:.1f} s (slowest N)',
            f'{worst_start + list_s:.0f} s' if list_s else '',
            'measured parts, summed',
            "not included: what `train_pod` adds (downloading the run's config, the teacher "
            'and any resume checkpoint; building and running the teacher)',
        ],
        [
            'pod peak disk',
            f'{max(r["peak_disk_bytes_max"] for r in results) / 2**20:.0f} MiB at every N',
            f'{max(r["peak_disk_bytes_max"] for r in results) / 2**20:.0f} MiB',
            'extrapolated',
            'flat in N (a checkpoint + logs; no video is stored)',
        ],
        [
            'video GETs per epoch',
            f'{gets:.0f} GETs of {read:.0f} distinct videos at {at_big}',
            f'{round(big["gets_per_distinct_video"] * K400_TRAIN) + 1:,}',
            'extrapolated',
            f'GETs per distinct video read (part of an epoch) x {K400_TRAIN:,} training '
            'videos + the list',
        ],
    ]
    probe = result.get('k400_like_check')
    if probe:
        rows.append(
            [
                'data prep check CPU',
                f'{probe["check_s"] * 1000:.0f} ms per K400-like clip',
                f'{probe["check_s"] * n_k400 / 3600:.1f} core-hours',
                'extrapolated',
                f'decode check of one {probe["side"]} {probe["frames"]}-frame clip '
                f'({probe["bytes"] / 2**20:.1f} MiB) x {n_k400:,}',
            ]
        )
    return rows


def export_speed(result):
    rows = []
    for r in result['results']:
        shape = f'{r["clip_shape"][0]}x{r["clip_shape"][2]}²'
        for name, m in r['models'].items():
            rows.append(
                [
                    r['pair'],
                    f'{r["size"]} ({shape})',
                    name,
                    f'{m["flops"] / 1e9:.2f}',
                    f'{m["params"] / 1e6:.2f}',
                    f'{m["pytorch"]["latency_ms"]["median"]:.0f}',
                    f'{m["onnxruntime"]["latency_ms"]["median"]:.0f}',
                    f'{m["pytorch"]["throughput_clips_per_s"]["median"]:.2f}',
                    f'{m["onnxruntime"]["throughput_clips_per_s"]["median"]:.2f}',
                ]
            )
    ratios = []
    for r in result['results']:
        for engine, q in r['speedup'].items():
            target = r.get('target') if engine == 'onnxruntime' else None
            met = ''
            if target:
                met = f'>= {target["onnxruntime_latency_speedup"]:g}x: '
                met += 'yes' if target['met'] else '**no**'
            ratios.append(
                [
                    r['pair'],
                    r['size'],
                    engine,
                    f'**{q["latency"]["median"]:.2f}x**',
                    f'{q["latency"]["min"]:.2f}–{q["latency"]["max"]:.2f}',
                    f'{q["throughput"]["median"]:.2f}x',
                    f'{r["flop_ratio"]:.1f}x',
                    met,
                ]
            )
    first = result['results'][0]
    text = (
        f'Batch 1 for latency, batch {first["batch"]} for throughput; median of '
        f'{first["repeats"]} interleaved rounds; {first["threads"]} thread(s) for PyTorch '
        'and ONNX Runtime alike.\n\n'
    )
    text += md(
        [
            'pair',
            'input',
            'model',
            'GFLOPs',
            'M params',
            'PyTorch ms',
            'ORT ms',
            'PyTorch clips/s',
            'ORT clips/s',
        ],
        rows,
    )
    text += '\n\n' + md(
        [
            'pair',
            'input',
            'engine',
            'latency speedup',
            'range',
            'throughput speedup',
            'FLOP ratio',
            'target',
        ],
        ratios,
    )
    return text


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


def reencode(result):
    rows = [
        [
            r['variant'],
            'x'.join(map(str, r['frame_shape'][:2])),
            f'{r["mb_per_video"]:.2f}',
            f'{r["clips_per_s"]:.1f}',
            f'{r["speedup"]:.1f}x',
            f'{r["reencode_s_per_video"]:.2f}' if 'gop' in r else '',
        ]
        for r in result['results']
    ]
    s = result['settings']
    head = (
        f'{s["videos"]} generated clips, {s["width"]}x{s["height"]}, {s["seconds"]:g} s at '
        f'{s["fps"]} fps; MMAction2 DecordInit + SampleFrames 8x1 (train) + DecordDecode, '
        'one process, one thread.\n\n'
    )
    return head + md(
        ['videos', 'frame (HxW)', 'MB/video', 'decode clips/s', 'vs source', 're-encode s/video'],
        rows,
    )


def checkpoint_bytes(result):
    """Checkpoint bytes per run in S3, before and after retention + teacher-free checkpoints."""
    rows = []
    for r in result['results']:
        measured = 'measured' in r
        size = r['measured'] if measured else r['computed']
        one = r['measured_checkpoint'] if measured else None
        files = r['files']
        per_file = (
            f'{one["whole"] / 1e6:.0f} -> {one["no_teacher"] / 1e6:.0f} MB (best {one["best"] / 1e6:.0f})'
            if one
            else f'{r["computed"]["checkpoint_before"] / 1e6:.0f} -> '
            f'{r["computed"]["checkpoint_after"] / 1e6:.0f} MB (best '
            f'{r["parts"]["student_bytes"] / 1e6:.0f})'
        )
        rows.append(
            [
                r['pair'],
                r['epochs'],
                'measured' if measured else 'computed',
                per_file,
                f'{files["written"]} (every {files["interval"]})',
                f'{size["before"] / 1e9:.2f} GB',
                f'{files["kept"]} + {files["best"]} best',
                f'{size["after"] / 1e9:.2f} GB',
                f'**{size["before"] / size["after"]:.0f}x**',
            ]
        )
    return md(
        [
            'run',
            'epochs',
            'how',
            'one checkpoint, with -> without the teacher',
            'files before',
            'S3 before',
            f'files after (keep_checkpoints={result["keep_checkpoints"]})',
            'S3 after',
            'less',
        ],
        rows,
    )


def eval_scale(result):
    """The evaluate step's wall time by processes and teacher scores; the K400 projection."""
    base = next(r['seconds'] for r in result['rows'] if r['processes'] == 1
                and r['teacher_scores'] == 'uncached')  # fmt: skip
    rows = [
        [r['processes'], f'{r["teacher_scores"]} (`teacher_scored: {r["teacher_scored"]}`)',
         f'{r["seconds"]:.1f} s', f'{r["seconds"] / base:.2f}']
        for r in result['rows']
    ]  # fmt: skip
    equal = result['per_sample_equal_1_vs_2']
    head = (
        f'The evaluate step on {result["num_val"]} generated val videos (`{result["dataset"]}`), '
        'test loops under local torchrun (gloo, CPU), student + TSM-R50 teacher (tiny configs, '
        'random weights); per-sample predictions of 1 vs 2 processes equal: '
        + ', '.join(
            f'{model}: {"yes" if e["top5_equal"] and e["labels_equal"] else "NO"} '
            f'({e["samples"]} samples, top-5 and labels; top-1 score within '
            f'{e["max_score_diff"]:.0e})'
            for model, e in equal.items()
        )
        + f'; metrics equal: {"yes" if result["metrics_equal_1_vs_2"] else "NO"}. '
        f'{result["note"][:1].upper()}{result["note"][1:]}.\n\n'
    )
    table = md(['processes', 'teacher scores', 'step wall time', 'vs 1 process, uncached'], rows)
    return head + table + '\n\n' + eval_projection(result)


def _duration(seconds):
    return f'{seconds:.1f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def eval_projection(result):
    """The Kinetics-400 evaluation projection (the docs' table)."""
    k400 = result['k400_projection']
    rows = [
        [name, f'{m["val_pflops"]:g} PFLOPs', _duration(m['seconds'])]
        for name, m in k400['models'].items()
    ]
    return (
        f'Kinetics-400 val ({k400["val_videos"]:,} videos) on {k400["gpus"]} GPUs: a '
        f'{k400["kind"]}. Basis: {k400["basis"]}.\n\n'
        + md(['model (test protocol)', 'forward FLOPs, val set', 'projected compute time'], rows)
    )


def serve_latency(result):
    """`video-kd serve` per size: HTTP + decoding, decoding alone, ONNX Runtime alone."""
    what = {
        'http_decode': 'HTTP v2 request: decode + sample + ONNX + top-k',
        'decode': 'decode + sample only (the test pipeline)',
        'onnx': 'ONNX Runtime only (decoding excluded)',
    }
    rows = []
    for size, r in result['sizes'].items():
        batch = r['batch']
        shape = 'x'.join(map(str, r['input_shape']))
        for name, e in r['engines'].items():
            batched = e.get(f'clips_per_s_batch{batch}')
            rows.append(
                [
                    f'{size} ({shape}, {r["num_classes"]} classes; {r["video"]})',
                    what[name],
                    f'{e["p50_ms"]:.1f}',
                    f'{e["p99_ms"]:.1f}',
                    f'{e["clips_per_s_batch1"]:.1f}',
                    f'{batched:.1f}' if batched else '',
                ]
            )
    headers = ['student', 'what', 'p50 ms (batch 1)', 'p99 ms (batch 1)', 'clips/s (batch 1)']
    headers.append(f'clips/s (batch {batch})')
    return md(headers, rows) + '\n\n' + env_line(result)


def runs_list(result):
    """`video-kd runs list` at 1,000 runs (benchmarks/runs_list.py)."""
    rows = [
        [f'listing, {name}', f'{stat["median"]:.2f} s ({stat["min"]:.2f}-{stat["max"]:.2f})',
         stat['n']]
        for name, stat in result['seconds'].items()
    ]  # fmt: skip
    rows += [
        [f'`video-kd runs list`, a new process, {where}', f'**{seconds:.2f} s**', 1]
        for where, seconds in result['cli_wall_s'].items()
    ]
    if 'cli_startup_s' in result:
        rows.append(['`video-kd runs --help`, a new process (Python, imports, parser)',
                     f'{result["cli_startup_s"]:.2f} s', 1])  # fmt: skip
    met = 'met' if result['met'] else 'not met'
    return (
        md([f'{result["runs"]} runs, {result["gets"]} GETs ({result["server"]})',
            'wall time: median (range)', 'rounds'], rows)
        + f'\n\nTarget: under {result["target_s"]:g} s at {result["runs"]} runs: **{met}**. '
        f'Parallel: {result["workers"]} threads on one client; +{result["latency_ms"]:g} ms: '
        'through benchmarks/s3_proxy.py, the latency of a real object store.'
    )  # fmt: skip


SECTIONS = [
    ('kd_step', 'KD step overhead', kd_step),
    ('logit_cache', 'Teacher-logit cache', logit_cache),
    ('kd_gain', 'KD gain (and what the cheaper teachers do to accuracy)', kd_gain),
    ('kd_gain_demo', "KD gain at the demo's settings (`kd_gain.py --demo`)", kd_gain),
    (
        'kd_gain_demo_fp32',
        "KD gain at the demo's settings, fp32 teacher (CPUs without native bf16)",
        kd_gain,
    ),
    ('data_loading', 'Data loading vs step time', data_loading),
    ('demo_wall', 'End-to-end local demo', demo),
    ('s3_upload', 'Atomic uploads vs check-then-put', s3_upload),
    ('data_scale', 'Data at Kinetics scale (streamed from S3)', data_scale),
    ('reencode', 'Re-encoding for decode (short side 256, dense GOP)', reencode),
    ('export_speed', 'Deployable student: teacher vs student inference speed', export_speed),
    ('image_ci', 'The image in CI (make image, tests/test_image.py)', image_ci),
    (
        'checkpoint_bytes',
        'Checkpoint bytes per run in S3 (retention, no teacher)',
        checkpoint_bytes,
    ),
    ('eval_scale', 'Evaluation on the training backend, teacher scores cached', eval_scale),
    ('runs_list', '`video-kd runs list` at 1,000 runs', runs_list),
]

# rendered once measured: the demo's settings over seeds (kd_gain.py --demo), with the
# teacher in bf16 (native-bf16 CPUs) and in fp32 (the others)
OPTIONAL = {'kd_gain_demo', 'kd_gain_demo_fp32'}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1]
    )
    parser.add_argument(
        '--k400-summary',
        action='store_true',
        help="only the Kinetics-400 projection's short table (the top-level README's)",
    )
    parser.add_argument(
        '--checkpoint-bytes',
        action='store_true',
        help="only the checkpoint storage table (docs/storage-and-faults.md's)",
    )
    parser.add_argument(
        '--eval-summary',
        action='store_true',
        help="only the evaluation's table and projection (docs/evaluation-export.md's)",
    )
    parser.add_argument(
        '--serve-latency', action='store_true', help="only the serving table (docs/serving.md's)"
    )
    parser.add_argument(
        '--runs-list',
        action='store_true',
        help="only `video-kd runs list`'s table (docs/promotion.md's)",
    )
    parser.add_argument(
        '--demo-wall',
        action='store_true',
        help="only the demo's wall time table (docs/local-run.md's)",
    )
    args = parser.parse_args(argv)
    if args.demo_wall:
        print(demo(load('demo_wall')) + '\n\n' + env_line(load('demo_wall')))
        return 0
    if args.checkpoint_bytes:
        result = load('checkpoint_bytes')
        print(checkpoint_bytes(result) + '\n\n' + env_line(result))
        return 0
    if args.eval_summary:
        print(eval_scale(load('eval_scale')) + '\n\n' + env_line(load('eval_scale')))
        return 0
    if args.serve_latency:
        print(serve_latency(load('serve_latency')))
        return 0
    if args.runs_list:
        print(runs_list(load('runs_list')) + '\n\n' + env_line(load('runs_list')))
        return 0
    if args.k400_summary:
        print(k400_summary(load('data_scale')))
        return 0
    for name, title, render in SECTIONS:
        result = load(name)
        if result is None and name in OPTIONAL:
            continue
        print(f'### {title}\n')
        print(render(result) + '\n\n' + env_line(result) if result else '_not run yet_')
        print()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
