"""Step 1, data prep: validate a dataset, claim the run, publish the cleaned lists under ``data/``."""

from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from video_kd import dataset, s3
from video_kd.errors import UserError
from video_kd.runs import (
    DATASET_META_NAME,
    Manifest,
    RunLayout,
    claim_run,
    new_run_id,
    release_claim,
    run_info,
)
from video_kd.steps.common import scratch_dir
from video_kd.validation import check_bucket, check_run_id

log = logging.getLogger(__name__)

GENERATED_SCHEME = 'generate://'
_GENERATOR_OPTIONS = (
    'num_classes',
    'train_per_class',
    'val_per_class',
    'num_frames',
    'size',
    'seed',
)


def run(
    dataset_uri: str,
    bucket: str,
    prefix: str,
    run_id: str = '',
    job_id: str = '',
    workdir: str | Path | None = None,
    min_frames: int = 8,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Validate a dataset and publish the cleaned lists under ``<run>/data/``.

    ``dataset_uri``: an ``s3://`` prefix holding ``videos/<class>/*.mp4``,
    ``train_list.txt``, ``val_list.txt``, ``classes.txt``; or
    ``generate://[?num_classes=..]`` for the built-in synthetic dataset (its
    videos are uploaded under ``<run>/data/videos/``); or a local directory.
    Videos of an ``s3://`` dataset stay where they are and the lists refer to
    them.  ``out_dir`` receives the cleaned lists and report (the KFP Dataset
    artifact's directory).  A failure before anything is published gives the
    run id back.
    """
    check_bucket(bucket)
    layout = RunLayout(bucket, prefix, check_run_id(run_id) if run_id else new_run_id(job_id))
    claim_run(layout, job_id)
    try:
        meta = _prepare(dataset_uri, layout, workdir, min_frames, out_dir)
    except BaseException:
        release_claim(layout, job_id)  # only if nothing but the claim was written
        raise
    log.info(
        'data: %d train / %d val videos, %d classes, %d rejected -> %s',
        meta['num_train'],
        meta['num_val'],
        meta['num_classes'],
        meta['rejected'],
        meta['data_uri'],
    )
    return meta


def _prepare(
    dataset_uri: str,
    layout: RunLayout,
    workdir: str | Path | None,
    min_frames: int,
    out_dir: str | Path | None,
) -> dict[str, Any]:
    with scratch_dir(workdir, 'data') as work:
        raw = work / 'raw'
        videos_uri, upload_videos = _gather_dataset(dataset_uri, layout, raw)
        clean = Path(out_dir) if out_dir else work / 'clean'
        try:
            report = dataset.validate_dataset(raw, clean, min_frames=min_frames)
        except dataset.DatasetError as exc:
            raise UserError(f'dataset {dataset_uri}: {exc}') from exc
        (clean / dataset.VIDEO_DIR).unlink(missing_ok=True)  # the symlink: videos live in S3
        report['root'] = dataset_uri  # not this pod's temporary directory
        (clean / 'report.json').write_text(json.dumps(report, indent=2))
        classes = dataset.read_classes(clean)
        meta = {
            **run_info(layout),
            'data_uri': layout.uri('data'),
            'videos_uri': videos_uri,
            'dataset_meta_uri': layout.dataset_meta_uri,
            'source': dataset_uri,
            'classes': classes,
            'num_classes': len(classes),
            'num_train': _count_lines(clean / dataset.TRAIN_LIST),
            'num_val': _count_lines(clean / dataset.VAL_LIST),
            'rejected': int(report.get('rejected_total', 0)),
        }
        with Manifest.load(layout).batch() as manifest:
            meta['files'] = {
                name: manifest.publish('data', clean / name, layout.uri('data', name)).meta()
                for name in (
                    dataset.TRAIN_LIST,
                    dataset.VAL_LIST,
                    dataset.CLASSES_FILE,
                    'report.json',
                )
            }
            if upload_videos:
                for rel in listed_videos(clean):
                    local = raw / dataset.VIDEO_DIR / rel
                    manifest.publish('data', local, layout.uri('data', dataset.VIDEO_DIR, rel))
            meta_path = work / DATASET_META_NAME
            meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
            manifest.publish('data', meta_path, layout.dataset_meta_uri)
    return meta


def _generator_options(uri: str) -> dict[str, int]:
    """``generate://?num_classes=3&train_per_class=4`` -> generate_dataset kwargs."""
    options = {}
    for key, values in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).items():
        if key not in _GENERATOR_OPTIONS:
            raise UserError(
                f'unknown generator option {key!r} in {uri!r}; '
                f'known: {", ".join(_GENERATOR_OPTIONS)}'
            )
        try:
            options[key] = int(values[-1])
        except ValueError as exc:
            raise UserError(
                f'generator option {key} must be an integer, got {values[-1]!r}'
            ) from exc
    return options


def _gather_dataset(dataset_uri: str, layout: RunLayout, raw: Path) -> tuple[str, bool]:
    """Put the dataset's lists and videos under ``raw``.

    Returns where the run's videos live and whether they must be uploaded there
    (an s3:// dataset's videos stay where they are).
    """
    if dataset_uri.startswith(GENERATED_SCHEME):
        dataset.generate_dataset(raw, **_generator_options(dataset_uri))
        return layout.uri('data', dataset.VIDEO_DIR), True
    if dataset_uri.startswith('s3://'):
        src = dataset_uri.rstrip('/')
        for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE):
            try:
                s3.download_file(s3.join_uri(src, name), raw / name)
            except s3.BucketNotFoundError:
                raise
            except s3.ObjectNotFoundError as exc:
                raise UserError(
                    f'dataset {src} has no {name}: expected videos/, '
                    'train_list.txt, val_list.txt and classes.txt there'
                ) from exc
        s3.download_dir(s3.join_uri(src, dataset.VIDEO_DIR), raw / dataset.VIDEO_DIR)
        return s3.join_uri(src, dataset.VIDEO_DIR), False
    if Path(dataset_uri).is_dir():
        shutil.copytree(dataset_uri, raw, symlinks=False)
        return layout.uri('data', dataset.VIDEO_DIR), True
    raise UserError(
        f'dataset_uri {dataset_uri!r}: expected an s3:// prefix, '
        f'{GENERATED_SCHEME} or an existing local directory'
    )


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def listed_videos(root: Path) -> list[str]:
    """The video paths (relative to ``videos/``) the train and val lists name."""
    names = set()
    for list_name in (dataset.TRAIN_LIST, dataset.VAL_LIST):
        for line in (root / list_name).read_text().splitlines():
            if line.strip():
                names.add(line.rsplit(None, 1)[0])
    return sorted(names)


def fetch_dataset(data_meta: dict[str, Any], root: str | Path) -> Path:
    """Materialise a published dataset locally: lists (verified) + the listed videos."""
    from video_kd.steps.common import fetch_verified

    root = Path(root)
    for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE):
        info = data_meta['files'][name]
        fetch_verified(info['s3_uri'], root / name, info['sha256'])
    for rel in listed_videos(root):
        target = root / dataset.VIDEO_DIR / rel
        if not target.is_file():
            s3.download_file(s3.join_uri(data_meta['videos_uri'], rel), target)
    return root
