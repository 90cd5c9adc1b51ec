"""Teacher vs student inference speed on the CPU, PyTorch eager and ONNX Runtime, side by side.

Both recognizers of a KD config are wrapped as the export wraps the student
(``video_kd.deploy.export.RecognizerScores``: normalisation + recognizer in test mode +
clip averaging) and exported to ONNX the same way, so the four engines
(teacher/student x PyTorch/ONNX Runtime) run the same computation on the same
input.  Weights do not change speed, so the models are freshly initialised
(the step can pass its own checkpoints; nothing here depends on them).

How it is timed: one warm-up round, then ``repeats`` rounds; each round calls
every (model, engine, batch size) once, interleaved, so a neighbour's load on a
shared machine hits every variant alike.  Latency is the median seconds of a
batch-1 call; throughput is clips/s of a batch-B call (median); speedups are
medians of per-round teacher/student ratios.  Threads: ``torch.set_num_threads``
and ONNX Runtime's ``intra_op_num_threads`` get the same number.

FLOPs are mmengine's ``get_model_complexity_info`` (fvcore's counter: one
multiply-add counts as one FLOP) for one clip, i.e. batch 1.

Speed is a report, not a gate: a model that does not export to ONNX (the
teacher may use an op the exporter lacks) is timed in PyTorch eager only, with
one warning line; the result names it under ``onnx_failed`` and has no ONNX
Runtime speedup.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.checks import check_range
from video_kd.core.errors import one_line
from video_kd.deploy.export import (
    INPUT_NAME,
    ExportError,
    RecognizerScores,
    export_onnx,
    ort_session,
)
from video_kd.openmmlab.config import load_config, set_num_classes
from video_kd.openmmlab.runtime import register_all_modules

logger = logging.getLogger(__name__)

ENGINES = ('pytorch', 'onnxruntime')
SEED_CLIP_SHAPE = (8, 3, 224, 224)  # the seed's TSM test input: 8 segments, 224x224 centre crop
SEED_NUM_CLASSES = 400  # Kinetics-400


def build_pair(kd_config: str, num_classes: int) -> dict[str, RecognizerScores]:
    """Teacher and student of a KD config, freshly initialised, as exportable modules."""
    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope

    register_all_modules()
    init_default_scope('mmaction')
    cfg = load_config(kd_config)
    set_num_classes(cfg.model, num_classes)
    models = {}
    for name, role in (('teacher', 'teacher'), ('student', 'architecture')):
        recognizer = MODELS.build(cfg.model[role])
        with _quiet_mmengine():  # init_weights logs every parameter at INFO
            recognizer.init_weights()  # realistic activations (a fresh head is zero-ish)
        models[name] = RecognizerScores(recognizer).eval()
    return models


def count_complexity(module: nn.Module, clip_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters and FLOPs (fvcore convention) of one clip through ``module``."""
    from mmengine.analysis import get_model_complexity_info

    example = torch.zeros(1, *clip_shape)
    with torch.no_grad(), _quiet_mmengine():  # it warns per op it counts as free (norms, adds)
        info = get_model_complexity_info(
            module, inputs=(example,), show_table=False, show_arch=False
        )
    return {'params': int(sum(p.numel() for p in module.parameters())), 'flops': int(info['flops'])}


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    from mmengine.logging import MMLogger

    mm_logger = MMLogger.get_current_instance()
    level = mm_logger.level
    mm_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mm_logger.setLevel(level)


def _engines(
    models: dict[str, RecognizerScores], clip_shape: tuple[int, ...], work: Path, threads: int
) -> tuple[dict[tuple[str, str], Callable[[torch.Tensor], Any]], dict[str, str]]:
    """((model, engine) -> a function running one batch, model -> why ONNX failed)."""
    runners: dict[tuple[str, str], Callable[[torch.Tensor], Any]] = {}
    onnx_failed: dict[str, str] = {}
    example = torch.zeros(2, *clip_shape)
    for name, module in models.items():

        def eager(batch: torch.Tensor, module: RecognizerScores = module) -> Any:
            with torch.inference_mode():
                return module(batch)

        runners[(name, 'pytorch')] = eager
        try:
            onnx_path = export_onnx(module, example, work / f'{name}.onnx', model=name)
        except ExportError as error:
            onnx_failed[name] = one_line(error)
            logger.warning(
                'speed: %s; the %s is timed in PyTorch eager only', onnx_failed[name], name
            )
            continue
        session = ort_session(onnx_path, threads, spin=False)

        def onnx_run(batch: torch.Tensor, session: Any = session) -> Any:
            return session.run(None, {INPUT_NAME: batch.numpy()})

        runners[(name, 'onnxruntime')] = onnx_run
    return runners, onnx_failed


def time_rounds(
    runners: dict[tuple[str, str], Callable[[torch.Tensor], Any]],
    inputs: dict[int, torch.Tensor],
    repeats: int,
) -> dict[tuple[str, str, int], list[float]]:
    """Seconds per call of every (model, engine, batch), interleaved, after one warm-up round."""
    seconds: dict[tuple[str, str, int], list[float]] = {}
    for round_index in range(repeats + 1):
        for (name, engine), run in runners.items():
            for batch, tensor in inputs.items():
                started = time.perf_counter()
                run(tensor)
                elapsed = time.perf_counter() - started
                if round_index:  # round 0 warms caches and ORT's arenas
                    seconds.setdefault((name, engine, batch), []).append(elapsed)
        if round_index:
            logger.info('speed: round %d/%d done', round_index, repeats)
    return seconds


def summarise(values: list[float]) -> dict[str, float]:
    return {
        'median': statistics.median(values),
        'min': min(values),
        'max': max(values),
        'n': len(values),
    }


def speed_table(
    seconds: dict[tuple[str, str, int], list[float]], batch: int
) -> dict[str, dict[str, Any]]:
    """Per model and engine: batch-1 latency (ms) and batch-``batch`` throughput (clips/s)."""
    table: dict[str, dict[str, Any]] = {}
    for (name, engine, size), values in seconds.items():
        entry = table.setdefault(name, {}).setdefault(engine, {})
        if size == 1:
            entry['latency_ms'] = summarise([v * 1000 for v in values])
        if size == batch:
            entry['throughput_clips_per_s'] = summarise([batch / v for v in values])
    return table


def speedups(seconds: dict[tuple[str, str, int], list[float]], batch: int) -> dict[str, Any]:
    """Teacher time / student time per engine both were timed in, median of per-round ratios."""
    result = {}
    for engine in ENGINES:
        if not all((name, engine, 1) in seconds for name in ('teacher', 'student')):
            continue  # one of them did not export to ONNX
        latency = [
            t / s
            for t, s in zip(
                seconds[('teacher', engine, 1)], seconds[('student', engine, 1)], strict=True
            )
        ]
        throughput = [
            t / s
            for t, s in zip(
                seconds[('teacher', engine, batch)],
                seconds[('student', engine, batch)],
                strict=True,
            )
        ]
        result[engine] = {
            'latency': summarise(latency),
            'throughput': summarise(throughput),
        }
    return result


def measure_pair(
    models: dict[str, RecognizerScores],
    clip_shape: tuple[int, ...],
    batch: int = 8,
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Latency (batch 1), throughput (batch ``batch``), params, FLOPs and speedups of
    teacher vs student at one input shape (``clip_shape`` without the batch axis)."""
    check_range('speed repeats', repeats, 1)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    inputs = {size: torch.rand(size, *clip_shape) * 255 for size in sorted({1, batch})}
    with tempfile.TemporaryDirectory(prefix='video_kd_speed_') as tmp:
        runners, onnx_failed = _engines(models, clip_shape, Path(tmp), threads)
        seconds = time_rounds(runners, inputs, repeats)
    table = speed_table(seconds, batch)
    for name, module in models.items():
        table[name].update(count_complexity(module, clip_shape))
    return {
        'clip_shape': list(clip_shape),
        'batch': batch,
        'repeats': repeats,
        'threads': threads,
        'models': table,
        'speedup': speedups(seconds, batch),
        'flop_ratio': table['teacher']['flops'] / table['student']['flops'],
        'param_ratio': table['teacher']['params'] / table['student']['params'],
        'onnx_failed': onnx_failed,
    }


def measure_speed(
    kd_config: str,
    num_classes: int,
    clip_shapes: dict[str, tuple[int, ...]],
    batch: int = 8,
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """``measure_pair`` for each named input shape, e.g. {'seed': (8, 3, 224, 224),
    'run': (8, 3, 56, 56)}; the teacher and student of ``kd_config``."""
    models = build_pair(kd_config, num_classes)
    return {
        'kd_config': kd_config,
        'num_classes': num_classes,
        'shapes': {
            label: measure_pair(models, shape, batch, repeats, threads)
            for label, shape in clip_shapes.items()
        },
    }


def kfp_metrics(speed: dict[str, Any]) -> dict[str, float]:
    """Flat name -> number pairs for a KFP ``Output[Metrics]`` (``log_metric`` each)."""
    metrics: dict[str, float] = {}
    for label, result in speed['shapes'].items():
        for engine, ratio in result['speedup'].items():
            metrics[f'speedup_{engine}_latency_{label}'] = round(ratio['latency']['median'], 3)
            metrics[f'speedup_{engine}_throughput_{label}'] = round(
                ratio['throughput']['median'], 3
            )
        for name, entry in result['models'].items():
            metrics[f'{name}_gflops_{label}'] = round(entry['flops'] / 1e9, 3)
            for engine in (e for e in ENGINES if e in entry):  # ONNX may have failed
                metrics[f'{name}_{engine}_latency_ms_{label}'] = round(
                    entry[engine]['latency_ms']['median'], 2
                )
                metrics[f'{name}_{engine}_clips_per_s_{label}'] = round(
                    entry[engine]['throughput_clips_per_s']['median'], 2
                )
        metrics[f'flop_ratio_{label}'] = round(result['flop_ratio'], 2)
    for name in ('teacher', 'student'):
        first = next(iter(speed['shapes'].values()))
        metrics[f'{name}_params_m'] = round(first['models'][name]['params'] / 1e6, 3)
    return metrics
