"""Step 6, export: the deployable student in ``export/`` — ONNX verified, speed, card, plots.

Runs after evaluation (the card and the top-1 cross-check read
``<run>/eval/metrics.json``).  ``video_kd.deploy.deployable.package_student`` does the
work on local files: the student exported to ONNX (dynamic batch) with its
``preprocess.json``, checked against PyTorch on a bounded, seeded sample of the val
clips (``parity_clips``, streamed), the
teacher vs student speed, the training curves and confusion heat map, the
HTML report and the model card.  The card's lineage is what the run recorded:
the resolved training config (``<run>/train/config.py``), the train step's
parameters (``<run>/train/train.json``) and the teacher's source URL
(``<run>/teacher/teacher.json``).

Publishing is all-or-nothing-ish and re-runnable: nothing is uploaded until
every file is built; ``export.json`` is uploaded last and marks the export
complete.  A re-run that finds it returns that export (same settings) or
refuses (other settings); a re-run that finds objects but no ``export.json``
replaces them, as they are an unfinished attempt of this very step (speed,
plots and card differ between attempts).  Earlier steps' objects are never
touched: only ``<run>/export/`` is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from video_kd.core.artifacts import (
    Dataset,
    Export,
    ExportRecord,
    ExportSettings,
    KDModel,
    MetricsSummary,
    StoredObject,
    Student,
    Teacher,
)
from video_kd.core.checks import check_number, check_range
from video_kd.core.errors import UserError
from video_kd.distill import train_config
from video_kd.runs import EXPORT_RECORD_NAME, Manifest, RunLayout, fetch_recorded, run_info
from video_kd.steps.common import output_uri, read_output, scratch_dir
from video_kd.storage import s3
from video_kd.storage.download import fetch_verified

log = logging.getLogger(__name__)

MAX_SPEED_REPEATS = 1000
DEFAULT_TOLERANCE = 1e-3  # the pipeline's export_tolerance
DEFAULT_SPEED_REPEATS = 3
DEFAULT_SPEED_BATCH_SIZE = 8  # the throughput timing's clips per call
MAX_SPEED_BATCH_SIZE = 256
DEFAULT_PARITY_CLIPS = 32  # video_kd.deploy.export's (not imported: torch)
MAX_PARITY_CLIPS = 1_000_000


def run(
    data_meta: Dataset,
    teacher: Teacher,
    student: Student,
    kd_config: str,
    student_config: str = '',
    image: str = '',
    tolerance: float = DEFAULT_TOLERANCE,
    torchscript: bool = True,
    speed_repeats: int = DEFAULT_SPEED_REPEATS,
    workdir: str | Path | None = None,
    parity_clips: int = DEFAULT_PARITY_CLIPS,
    baseline_url: str = '',
    speed_batch_size: int = DEFAULT_SPEED_BATCH_SIZE,
) -> Export:
    """Package the run's student; returns the ONNX URI, parity, KFP metrics, HTML and card.

    ``baseline_url``: the student-alone checkpoint the evaluation scored; when it sits in its
    mmengine work dir in S3, that training's curves are drawn beside the KD run's
    (``baseline_logs``)."""
    settings = export_settings(
        kd_config, student_config, image, tolerance, torchscript, speed_repeats, parity_clips,
        speed_batch_size,
    )  # fmt: skip
    layout = RunLayout.from_root(student['run_root'])
    done = completed_export(layout, settings)
    if done:
        return done
    metrics: MetricsSummary = read_output(layout.uri('eval', 'metrics.json'), 'the evaluate step')
    training: KDModel = read_output(output_uri(layout, 'train'), 'the train step')
    with scratch_dir(workdir, 'export') as work:
        checkpoint = fetch_verified(student['s3_uri'], work / 'student.pth', student.get('sha256'))
        s3.download_dir(layout.uri('train', 'logs'), work / 'logs')
        baseline = baseline_logs(baseline_url, work / 'baseline_logs')
        result = _package(
            layout, data_meta, teacher, training, metrics, settings, checkpoint, work, baseline
        )
        published = publish_export(layout, result['files'])
        output: ExportRecord = {
            **run_info(layout),
            'onnx': published[result['onnx'].name],
            'files': published,
            'parity': result['parity'],
            'kfp_metrics': result['kfp_metrics'],
            'settings': settings,
        }
        finish_export(layout, output, work)
        return {
            **output,
            'html': result['html'].read_text(),
            'model_card': result['markdown'].read_text(),
        }


def export_settings(
    kd_config: str,
    student_config: str = '',
    image: str = '',
    tolerance: float = DEFAULT_TOLERANCE,
    torchscript: bool = True,
    speed_repeats: int = DEFAULT_SPEED_REPEATS,
    parity_clips: int = DEFAULT_PARITY_CLIPS,
    speed_batch_size: int = DEFAULT_SPEED_BATCH_SIZE,
) -> ExportSettings:
    """The step's settings, checked (one line each, before anything is read or written)."""
    return {
        'kd_config': kd_config,
        'student_config': student_config,
        'image': image,
        'export_tolerance': check_number('export_tolerance (--tolerance)', tolerance, 0),
        'speed_repeats': check_range(
            'speed_repeats (0 skips the speed check)', speed_repeats, 0, MAX_SPEED_REPEATS
        ),
        'speed_batch_size': check_range(
            'speed_batch_size (clips per throughput call)',
            speed_batch_size,
            1,
            MAX_SPEED_BATCH_SIZE,
        ),
        'torchscript': bool(torchscript),
        'parity_clips': check_range(
            'parity_clips (val clips of the ONNX parity check)', parity_clips, 1, MAX_PARITY_CLIPS
        ),
    }


def _package(
    layout: RunLayout,
    data_meta: Dataset,
    teacher: Teacher,
    training: KDModel,
    metrics: MetricsSummary,
    settings: ExportSettings,
    checkpoint: Path,
    work: Path,
    baseline_log_root: Path | None = None,
) -> dict[str, Any]:
    # deferred: ONNX, ONNX Runtime and matplotlib, not needed by check inputs
    from video_kd.deploy import deployable

    return deployable.package_student(
        run_id=layout.run_id,
        kd_config=settings['kd_config'],
        student_config=settings['student_config'],
        checkpoint=checkpoint,
        data_root=data_meta,
        log_root=work / 'logs',
        metrics=metrics,
        lineage=run_lineage(layout, data_meta, teacher, training, settings, work),
        out_dir=work / 'out',
        tolerance=settings['export_tolerance'],
        torchscript=settings['torchscript'],
        speed_repeats=settings['speed_repeats'],
        speed_batch_size=settings['speed_batch_size'],
        parity_clips=settings['parity_clips'],
        baseline_log_root=baseline_log_root,
        uri_of=lambda name: layout.uri('export', name),
        image=settings['image'],
    )


def baseline_logs(baseline_url: str, local: Path) -> Path | None:
    """The student-alone training's mmengine logs, when its checkpoint sits in its work dir
    in S3 (``<dir>/epoch_N.pth`` beside ``<dir>/<timestamp>/vis_data/scalars.json``, as
    ``python -m video_kd.distill.train`` writes it and ``video-kd run-local`` uploads it);
    None otherwise (an https:// baseline, or one stored alone): the report then draws the
    KD run's curves only, and says nothing is missing."""
    if not baseline_url.startswith('s3://'):
        return None
    prefix = baseline_url.rsplit('/', 1)[0] + '/'
    found = [  # <timestamp>/vis_data/scalars.json right under it: not another training's
        uri
        for uri in s3.list_uris(prefix)
        if uri[len(prefix) :].count('/') == 2 and uri.endswith('/vis_data/scalars.json')
    ]
    for uri in found:
        s3.download_file(uri, local / uri[len(prefix) :])
    log.info('export: %d student-alone training logs beside %s', len(found), baseline_url)
    return local if found else None


def run_lineage(
    layout: RunLayout,
    data_meta: Dataset,
    teacher: Teacher,
    training: KDModel,
    settings: ExportSettings,
    work: Path,
) -> dict[str, Any]:
    """The card's lineage from what the run recorded, not from the named configs: the
    resolved training config (pretrained weights), the train step's parameters, the
    teacher step's source URL."""
    # deferred: ONNX, ONNX Runtime and matplotlib, not needed by check inputs
    from video_kd.deploy import model_card

    config_uri = layout.uri('train', train_config.CONFIG_NAME)
    manifest = Manifest.load(layout)
    resolved = train_config.load_resolved(  # Python: checked against the manifest first
        fetch_recorded(manifest, config_uri, work / 'train_config' / train_config.CONFIG_NAME)
    )
    dataset_record = manifest.find(layout.dataset_meta_uri)
    parameters = {
        **training.get('parameters', {}),
        'reencode': 'reencoded' in data_meta,
        **{key: value for key, value in settings.items() if key != 'image'},
        'training_config': config_uri,
    }
    return model_card.lineage(
        teacher_url=teacher_source(layout, teacher),
        teacher_sha256=teacher['sha256'],
        dataset_uri=data_meta['source'],
        dataset_manifest_sha256=dataset_record.sha256 if dataset_record else '',
        pretrained=model_card.pretrained_weights(resolved),
        pipeline_parameters=parameters,
        code_version=model_card.code_version(),
        image=settings['image'],
        run_uri=layout.root,
    )


def teacher_source(layout: RunLayout, teacher: Teacher) -> str:
    """The URL the teacher step fetched from (its artifact's, else its record in the run)."""
    if teacher.get('source_url'):
        return teacher['source_url']
    try:
        recorded = s3.read_json(output_uri(layout, 'teacher'))
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError:
        recorded = {}
    if recorded.get('source_url'):
        return recorded['source_url']
    return f'unknown (the teacher step recorded none; its copy is {teacher["s3_uri"]})'


# --------------------------------------------------------------------------- publishing


def publish_export(layout: RunLayout, files: dict[str, Path]) -> dict[str, StoredObject]:
    """Upload every built file under ``<run>/export/``; returns name -> manifest metadata.

    What an unfinished earlier attempt of this step left there (no ``export.json``)
    is replaced: its objects and their manifest entries go first, except those that
    hold the very same content.  Nothing outside ``<run>/export/`` is touched.
    """
    if s3.exists(layout.uri('export', EXPORT_RECORD_NAME)):
        raise UserError(
            f'{layout.uri("export")}/ holds a finished export: start a new run to export again'
        )
    _drop_unfinished_attempt(layout, {layout.uri('export', n): p for n, p in files.items()})
    with Manifest.load(layout).batch() as manifest:
        return {
            name: manifest.publish('export', path, layout.uri('export', name)).meta()
            for name, path in sorted(files.items())
        }


def _drop_unfinished_attempt(layout: RunLayout, files: dict[str, Path]) -> None:
    prefix = layout.uri('export') + '/'
    manifest = Manifest.load(layout)
    recorded = {e.uri: e.sha256 for e in manifest.entries if e.uri.startswith(prefix)}
    stored = set(s3.list_uris(prefix))
    wanted = {uri: s3.sha256_file(path) for uri, path in files.items()}
    stale = {
        uri
        for uri in stored | set(recorded)
        if not (uri in stored and uri in wanted and recorded.get(uri) == wanted[uri])
    }
    if not stale:
        return
    log.warning(
        'export: replacing %d objects an unfinished earlier attempt left in %s',
        len(stale),
        prefix,
    )
    # The manifest first: at worst it then misses objects that the next attempt lists
    # and replaces.  (A concurrent manifest writer would merge the dropped entries back;
    # no other step writes while the export runs.)
    manifest.entries = [e for e in manifest.entries if e.uri not in stale]
    manifest.save()
    for uri in sorted(stale & stored):
        s3.delete(uri)


def finish_export(layout: RunLayout, output: ExportRecord, work: Path) -> None:
    """Upload ``export.json`` (the step's output), last: from now on the export is complete."""
    path = work / EXPORT_RECORD_NAME
    path.write_text(json.dumps(output, indent=2, sort_keys=True))
    Manifest.load(layout).publish('export', path, layout.uri('export', EXPORT_RECORD_NAME))


def completed_export(layout: RunLayout, settings: ExportSettings) -> Export | None:
    """A finished export of this run, as ``run`` returns it; None when there is none.

    A re-run (a KFP retry after the work was done) gets the same result; other
    settings are refused, as the run's export was made with the recorded ones.
    """
    # deferred: ONNX, ONNX Runtime and matplotlib, not needed by check inputs
    from video_kd.deploy import model_card, plots

    try:
        recorded: ExportRecord = s3.read_json(layout.uri('export', EXPORT_RECORD_NAME))
    except s3.BucketNotFoundError:
        raise
    except s3.ObjectNotFoundError:
        return None
    if recorded.get('settings') != settings:
        raise UserError(
            f'{layout.uri("export")}/ holds a finished export made with other settings '
            f'({recorded.get("settings")}): start a new run to export again'
        )
    log.info('export: %s is complete, returning it', layout.uri('export'))

    def text(name: str) -> str:
        return s3.read_bytes(layout.uri('export', name)).decode()

    return {
        **recorded,
        'html': text(plots.REPORT_HTML),
        'model_card': text(model_card.CARD_MARKDOWN),
    }
