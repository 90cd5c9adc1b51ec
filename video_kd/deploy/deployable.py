"""The export step's whole job on local files: ONNX + parity, speed, plots, model card.

The pipeline step fetches its inputs from S3 (student checkpoint, dataset, the
evaluation's metrics.json, the run's ``train/logs/``), calls ``package_student``
and publishes every file it returns under ``<run>/export/``.  Nothing here talks
to S3, so the same call works on a laptop.

Order matters for bad input: the training log is looked for first (cheap), then the
export and its parity check (fails with nothing published), then the slow speed
measurement, the plots and the card.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import DatasetContents, MetricsSummary
from video_kd.deploy import export, model_card, plots, serving, speed
from video_kd.storage.s3 import sha256_file

logger = logging.getLogger(__name__)

SPEED_NAME = 'speed.json'


def package_student(
    *,
    run_id: str,
    kd_config: str,
    student_config: str,
    checkpoint: str | Path,
    data_root: str | Path | DatasetContents,
    log_root: str | Path,
    metrics: MetricsSummary,
    lineage: dict[str, Any],
    out_dir: str | Path,
    tolerance: float = export.DEFAULT_TOLERANCE,
    torchscript: bool = True,
    speed_repeats: int = 3,
    speed_batch_size: int = 8,
    speed_shapes: dict[str, tuple[int, ...]] | None = None,
    uri_of: Callable[[str], str] | None = None,
    parity_clips: int | None = export.DEFAULT_PARITY_CLIPS,
    baseline_log_root: str | Path | None = None,
    image: str = '',
    model_name: str = '',
) -> dict[str, Any]:
    """Everything ``<run>/export/`` holds, written to ``out_dir``.

    ``metrics``: the evaluation step's metrics.json; ``lineage``: ``model_card.lineage(...)``;
    ``log_root``: a local copy of ``<run>/train/logs/``; ``speed_repeats=0`` skips the speed
    measurement; ``speed_batch_size`` is the throughput timing's clips per call;
    ``speed_shapes`` defaults to the seed's 8 x 224² and the run's own input;
    ``uri_of(name)`` gives the URI a file will be published at (for the card);
    ``parity_clips`` bounds the parity check (a seeded sample; None: every val clip);
    ``baseline_log_root``: the student-alone training's logs, drawn beside the KD curves.
    ``uri_of(name)`` gives the URI a file will be published at (for the card and the
    InferenceService's storage URI); ``image`` runs ``video-kd serve`` in the
    InferenceService (none without it); ``model_name`` names the served model
    (default: from ``kd_config``).
    Returns files (name -> path), parity, speed, the KFP metrics, the card.
    """
    out_dir = Path(out_dir)
    plots.training_curves(log_root)  # a missing log fails before the minutes of export work
    result = export.export_student(
        kd_config,
        checkpoint,
        data_root,
        out_dir,
        tolerance=tolerance,
        reference_top1=metrics['student']['top1_acc'],
        torchscript=torchscript,
        parity_clips=parity_clips,
    )
    files = {Path(p).name: Path(p) for p in result['files'].values()}
    files.update(_serving_files(out_dir, result, kd_config, image, model_name, uri_of))
    measured = None
    if speed_repeats:
        shapes = speed_shapes or {
            'seed': speed.SEED_CLIP_SHAPE,
            'run': tuple(result['input_shape'][1:]),
        }
        measured = speed.measure_speed(
            kd_config, len(metrics['classes']), shapes, speed_batch_size, speed_repeats
        )
        files[SPEED_NAME] = out_dir / SPEED_NAME
        files[SPEED_NAME].write_text(json.dumps(measured, indent=2) + '\n')
    card = model_card.build_model_card(  # first: the report opens with the card's verdict
        run_id=run_id,
        kd_config=kd_config,
        student_config=student_config,
        metrics=metrics,
        parity=result['parity'],
        preprocess=json.loads(files[export.PREPROCESS_NAME].read_text()),
        lineage=lineage,
        speed=measured,
    )
    drawn = plots.make_report(
        out_dir,
        metrics=metrics,
        log_root=log_root,
        speed=measured,
        parity=result['parity'],
        title=f'Distilled student of run {run_id}',
        baseline_log_root=baseline_log_root,
        headline=model_card.headline(card),
        parameters=lineage.get('pipeline_parameters'),
    )
    files.update({path.name: path for path in drawn.values()})
    card['export']['files'] = {
        name: _describe(path, uri_of) for name, path in sorted(files.items())
    }
    written = model_card.write_model_card(card, out_dir)
    files.update({path.name: path for path in written.values()})
    return {
        'files': files,
        'onnx': files[export.ONNX_NAME],
        'html': drawn['html'],
        'markdown': written['markdown'],
        'parity': result['parity'],
        'speed': measured,
        'kfp_metrics': kfp_metrics(result['parity'], measured),
        'card': card,
    }


def _serving_files(
    out_dir: Path,
    result: dict[str, Any],
    kd_config: str,
    image: str,
    model_name: str,
    uri_of: Callable[[str], str] | None,
) -> dict[str, Path]:
    """The InferenceService and the Triton repository of the exported student."""
    onnx_path = Path(result['files']['onnx'])
    storage_uri = uri_of(export.ONNX_NAME).rsplit('/', 1)[0] if uri_of else str(out_dir)
    if not image:
        logger.warning('no image given: the export has no %s', serving.INFERENCE_SERVICE_NAME)
    return serving.write_serving_files(
        out_dir,
        onnx_path,
        result['classes'],
        name=model_name or serving.serving_name(kd_config),
        image=image,
        storage_uri=storage_uri,
    )


def kfp_metrics(parity: dict[str, Any], measured: dict[str, Any] | None) -> dict[str, float]:
    """Scalars for the step's ``Output[Metrics]``: parity first, then speed."""
    metrics = {
        'export_max_abs_logit_diff': float(parity['max_abs_logit_diff']),
        'export_top1_agreement': float(parity['top1_agreement']),
        'onnx_top1_acc': float(parity['top1_acc_onnx']),
        'export_parity_clips': float(parity['num_clips']),  # a bounded sample of the val list
    }
    if measured:
        metrics.update(speed.kfp_metrics(measured))
    return metrics


def _describe(path: Path, uri_of: Callable[[str], str] | None) -> dict[str, Any]:
    return {
        'uri': uri_of(path.name) if uri_of else str(path),
        'sha256': sha256_file(path),
        'bytes': path.stat().st_size,
    }
