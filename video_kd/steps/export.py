"""Step 6, export: the deployable student in ``export/`` — ONNX verified, speed, card, plots.

Runs after evaluation (the card and the top-1 cross-check read
``<run>/eval/metrics.json``).  ``video_kd.deployable.package_student`` does the
work on local files: the student exported to ONNX (dynamic batch) with its
``preprocess.json``, checked against PyTorch on the val clips (streamed), the
teacher vs student speed, the training curves and confusion heat map, the
HTML report and the model card.  Everything is published under
``<run>/export/``; earlier steps' objects are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from video_kd import __version__, s3
from video_kd.runs import Manifest, RunLayout, run_info
from video_kd.steps.common import fetch_verified, read_output, scratch_dir


def run(
    data_meta: dict[str, Any],
    teacher: dict[str, Any],
    student: dict[str, Any],
    kd_config: str,
    student_config: str = '',
    image: str = '',
    tolerance: float = 1e-3,
    torchscript: bool = True,
    speed_repeats: int = 3,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Package the run's student; returns the ONNX URI, parity, KFP metrics, HTML and card."""
    from video_kd import deployable, model_card

    layout = RunLayout.from_root(student['run_root'])
    metrics = read_output(layout.uri('eval', 'metrics.json'), 'the evaluate step')
    with scratch_dir(workdir, 'export') as work:
        checkpoint = fetch_verified(student['s3_uri'], work / 'student.pth', student.get('sha256'))
        s3.download_dir(layout.uri('train', 'logs'), work / 'logs')
        dataset_record = Manifest.load(layout).find(layout.dataset_meta_uri)
        lineage = model_card.lineage(
            teacher_url=teacher.get('source_url', teacher['s3_uri']),
            teacher_sha256=teacher['sha256'],
            dataset_uri=data_meta['source'],
            dataset_manifest_sha256=dataset_record.sha256 if dataset_record else '',
            pretrained=model_card.pretrained_weights(kd_config),
            pipeline_parameters={
                'kd_config': kd_config,
                'student_config': student_config,
                'training_config': layout.uri('train', 'config.py'),
                'export_tolerance': tolerance,
            },
            code_version=f'kubeflow-video-kd {__version__}',
            image=image,
            run_uri=layout.root,
        )
        result = deployable.package_student(
            run_id=layout.run_id,
            kd_config=kd_config,
            student_config=student_config,
            checkpoint=checkpoint,
            data_root=data_meta,
            log_root=work / 'logs',
            metrics=metrics,
            lineage=lineage,
            out_dir=work / 'out',
            tolerance=tolerance,
            torchscript=torchscript,
            speed_repeats=speed_repeats,
            uri_of=lambda name: layout.uri('export', name),
        )
        with Manifest.load(layout).batch() as manifest:
            published = {
                name: manifest.publish('export', path, layout.uri('export', name)).meta()
                for name, path in sorted(result['files'].items())
            }
        return {
            **run_info(layout),
            'onnx': published[result['onnx'].name],
            'files': published,
            'parity': result['parity'],
            'kfp_metrics': result['kfp_metrics'],
            'html': result['html'].read_text(),
            'model_card': result['markdown'].read_text(),
        }
