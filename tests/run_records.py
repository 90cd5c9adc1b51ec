"""Run directories as the pipeline's steps leave them, generated (for `video-kd runs`:
tests/test_run_index.py and benchmarks/runs_list.py).

Each run gets the records `video-kd runs` reads (eval/metrics.json, export/export.json,
promote/decision.json, manifest.json), with accuracies drawn from a seeded generator; every
seventh run stops after the evaluation, every eleventh before it (a failed or running run).
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

from video_kd.deploy import run_index
from video_kd.runs import RunLayout
from video_kd.storage import s3

TEACHER = 'tsm_r50_tiny'


def run_id(index: int) -> str:
    day, second = divmod(index, 86400)
    return f'202612{1 + day % 28:02d}-{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}-r{index}'


def records(index: int, seed: int = 0) -> dict[str, dict]:
    """What run ``index``'s steps wrote, by path under its directory."""
    rng = random.Random(seed * 100003 + index)
    student, baseline = rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6)
    found = {'manifest.json': {'entries': [{'uri': f'x{i}'} for i in range(20)]}}
    if index % 11 == 5:
        return found
    found['eval/metrics.json'] = {
        'run_id': run_id(index), 'num_val': 40, 'classes': ['a', 'b', 'c'],
        'student': {'top1_acc': student, 'top5_acc': 1.0, 'mean_class_acc': student},
        'teacher': {'top1_acc': 0.9, 'top5_acc': 1.0, 'mean_class_acc': 0.9},
        'baseline': {'top1_acc': baseline, 'top5_acc': 1.0, 'mean_class_acc': baseline},
        'kd_gain': {'top1_acc': student - baseline, 'top5_acc': 0.0,
                    'mean_class_acc': student - baseline},
        'scored_with': {'teacher': {'config': f'configs/{TEACHER}.py (model: the teacher)',
                                    'test_pipeline': []}},
    }  # fmt: skip
    if index % 7 == 3:
        return found
    found['export/export.json'] = {
        'kfp_metrics': {'speedup_onnxruntime_latency_b1': rng.uniform(2, 6),
                        'speedup_pytorch_latency_b1': 2.0},
    }  # fmt: skip
    decision = {'decision': {'promoted': index % 3 == 0, 'reasons': ['x']}}
    if index % 5:  # as the promote step writes it; without: an older run's decision
        decision['summary'] = run_index.summary(found['eval/metrics.json'],
                                                found['export/export.json'])  # fmt: skip
    found['promote/decision.json'] = decision
    return found


def generate(bucket: str, prefix: str, count: int, seed: int = 0, workers: int = 32) -> list[str]:
    """Write ``count`` runs' records (parallel PUTs); returns their ids."""
    writes = [
        (RunLayout(bucket, prefix, run_id(i)).root + '/' + path, body)
        for i in range(count)
        for path, body in records(i, seed).items()
    ]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: s3.put_bytes(w[0], json.dumps(w[1]).encode()), writes))
    return [run_id(i) for i in range(count)]
