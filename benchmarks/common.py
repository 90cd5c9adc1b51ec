"""Shared helpers of the benchmarks: building the seed models, timing, JSON results.

Not a test module: each benchmark is a script (``python benchmarks/<name>.py --help``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import video_kd  # noqa: F401  (compat before OpenMMLab)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / 'results'
PAIRS = {
    'tsm': {
        'tiny': 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny',
        'full': 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
    },
    'tsn': {
        'tiny': 'kd_logits_tsn-swin_tsn-r50_tiny',
        'full': 'kd_logits_tsn-swin_tsn-r50_8xb16_k400',
    },
}
START_LOAD = os.getloadavg()  # when the benchmark started (imported first thing)
PAIR_NAMES = {'tsm': 'TSM-R50 -> TSM-MobileNetV2', 'tsn': 'TSN-Swin -> TSN-R50'}


def environment() -> dict:
    """Where the numbers come from."""
    info = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'cuda': torch.cuda.is_available(),
        'machine': platform.machine(),
        'load_avg_start': START_LOAD,
    }
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    try:
        info['git_commit'] = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=ROOT, text=True, capture_output=True
        ).stdout.strip()
    except OSError:
        pass
    for line in (
        Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []
    ):
        if line.startswith('model name'):
            info['cpu'] = line.split(':', 1)[1].strip()
            break
    return info


def summary(values: list[float]) -> dict:
    values = sorted(values)
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {
        'median': statistics.median(values),
        'min': values[0],
        'max': values[-1],
        'q1': q[0],
        'q3': q[2],
        'n': len(values),
        'mean': statistics.fmean(values),
        'stdev': statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        'benchmark': name,
        'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'command': ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        'environment': environment(),
        **payload,
    }
    payload['environment']['load_avg_end'] = os.getloadavg()
    path = RESULTS / f'{name}.json'  # an absolute --out is kept as it is (a scratch run)
    path.write_text(json.dumps(payload, indent=2, default=str) + '\n')
    print(f'\nresults written to {path}')
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print('  '.join(c.ljust(w) for c, w in zip(row, widths, strict=False)))
        if index == 0:
            print('  '.join('-' * w for w in widths))


def quiet_mmengine() -> None:
    """mmengine logs every parameter's init at INFO: keep the benchmark output readable."""
    import logging

    from mmengine.logging import MMLogger

    if MMLogger.check_instance_created('mmengine'):  # get_instance warns on arguments then
        MMLogger.get_instance('mmengine').setLevel(logging.WARNING)
    else:
        MMLogger.get_instance('mmengine', log_level='WARNING')
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    logging.getLogger('video_kd.openmmlab.config').setLevel(logging.ERROR)


def load_kd_config(name: str, num_classes: int):
    quiet_mmengine()
    from video_kd.openmmlab.config import load_config, set_num_classes
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    cfg = load_config(name)
    set_num_classes(cfg.model, num_classes)
    return cfg


def clip_shape(cfg) -> tuple[int, int]:
    """(segments, crop size) of a config's train pipeline."""
    pipeline = cfg.train_dataloader.dataset.pipeline
    segments = next(t['num_clips'] for t in pipeline if t['type'] == 'SampleFrames')
    size = next(
        (t['scale'][0] for t in pipeline if t['type'] == 'Resize' and t.get('keep_ratio') is False),
        None,
    )
    if size is None:
        size = next(t['input_size'] for t in pipeline if t['type'] == 'MultiScaleCrop')
    return segments, int(size if not isinstance(size, (list, tuple)) else size[0])
