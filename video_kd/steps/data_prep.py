"""Step 1, data prep: validate a dataset, claim the run, publish the cleaned lists under ``data/``."""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from video_kd.core.artifacts import Dataset, Reencoded
from video_kd.core.checks import check_bucket, check_range, check_run_id, check_s3_prefix
from video_kd.core.errors import UserError
from video_kd.data import data_check, data_layout, dataset, reencode
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
from video_kd.storage import s3

log = logging.getLogger(__name__)

GENERATED_SCHEME = 'generate://'
VIDEO_CHECK_CACHE = 'video-check'  # decode verdicts by object key + ETag + size, shared by runs


def run(
    dataset_uri: str,
    bucket: str,
    prefix: str,
    run_id: str = '',
    job_id: str = '',
    workdir: str | Path | None = None,
    min_frames: int = 8,
    out_dir: str | Path | None = None,
    reencode: bool = False,
    processes: int | None = None,
    max_unusable: float = data_check.MAX_UNUSABLE,
) -> Dataset:
    """Validate a dataset and publish the cleaned lists under ``<run>/data/``.

    ``dataset_uri``: an ``s3://`` prefix or a mounted path (a PVC, e.g.
    ``/cache/kinetics400``) holding our layout (``videos/``,
    ``train_list.txt``, ``val_list.txt``, ``classes.txt``) or MMAction2's
    Kinetics tree (``videos_train/``, ``videos_val/``,
    ``kinetics400_{train,val}_list_videos.txt``, a label map or the official
    ``annotations/*.csv``; see ``video_kd.data.data_layout``); or
    ``generate://[?num_classes=..]`` for the built-in synthetic dataset
    (published under ``<run>/data/source/``).  Videos stay where they are:
    training and evaluation stream them (``video_kd.data.data_stream``).  Every
    video is decoded in parallel, with the verdicts cached in S3 by key, ETag
    and size, so an unchanged dataset is not checked again.  ``out_dir``
    receives the cleaned lists and report (the KFP Dataset artifact's
    directory).  ``reencode``: train and evaluate on a derived copy of the
    usable videos, short side 256 with a keyframe every frame (cheap random
    seeks for ``SampleFrames``), written once at ``<dataset>/derived/<hash>/``
    and reused by later runs (``video_kd.data.reencode``).  ``processes``: checking
    (and re-encoding) processes, default the CPUs this pod may use (its CPU
    limit, ``data_check.usable_cpus``).  A read failure, or a split with more
    than ``max_unusable`` unusable entries, stops with the counts
    (``data_check.DataCheckError``).  A failure before anything is published
    gives the run id back (unless S3 is out: ``s3.S3UnavailableError``, exit status 75).
    """
    check_bucket(bucket)
    check_s3_prefix(prefix)
    check_dataset_uri(dataset_uri)  # a bad generate:// option is refused before the claim
    checks = _Checks(*data_check.check_settings(min_frames, processes, max_unusable))
    layout = RunLayout(bucket, prefix, check_run_id(run_id) if run_id else new_run_id(job_id))
    claim_run(layout, job_id)  # also refuses a prefix inside another run's directory
    try:
        meta = _prepare(dataset_uri, layout, workdir, checks, out_dir, reencode)
    except BaseException as error:
        # only if nothing but the claim was written; not while S3 is out (the release would
        # wait another request budget, then fail): a retry of this KFP run continues its claim
        if not s3.is_transient(error):
            release_claim(layout, job_id)
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


@dataclass(frozen=True)
class _Checks:
    """How data prep checks the videos (``data_check.validate_source``'s settings)."""

    min_frames: int
    processes: int | None
    max_unusable: float


def _prepare(
    dataset_uri: str,
    layout: RunLayout,
    workdir: str | Path | None,
    checks: _Checks,
    out_dir: str | Path | None,
    reencode_videos: bool = False,
) -> Dataset:
    with scratch_dir(workdir, 'data') as work, Manifest.load(layout).batch() as manifest:
        source = data_layout.resolve(_source_uri(dataset_uri, layout, work, manifest))
        clean = Path(out_dir) if out_dir else work / 'clean'
        report = data_check.validate_source(
            source,
            clean,
            cache_uri=layout.shared_uri(VIDEO_CHECK_CACHE),
            min_frames=checks.min_frames,
            processes=checks.processes,
            max_unusable=checks.max_unusable,
        )
        report['root'] = dataset_uri  # what the user gave, not a generated copy's place
        derived = _reencode(source, clean, report, checks.processes) if reencode_videos else None
        # what this attempt did, not what the data is: logged, so a retry publishes the same files
        stats = {key: report.pop(key) for key in ('checked', 'from_cache', 'seconds')}
        log.info('data check: %(checked)d videos decoded, %(from_cache)d known from the cache, '
                 '%(seconds).1fs', stats)  # fmt: skip
        (clean / data_check.REPORT_NAME).write_text(json.dumps(report, indent=2))
        files = {
            name: manifest.publish('data', clean / name, layout.uri('data', name)).meta()
            for name in (dataset.TRAIN_LIST, dataset.VAL_LIST, dataset.CLASSES_FILE, 'report.json')
        }
        meta: Dataset = {
            **run_info(layout),
            **data_check.dataset_meta(source, report, layout.uri('data')),
            'data_uri': layout.uri('data'),
            'dataset_meta_uri': layout.dataset_meta_uri,
            'source': dataset_uri,
            'files': files,
        }
        if derived:
            meta['reencoded'] = derived
        meta_path = work / DATASET_META_NAME
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        manifest.publish('data', meta_path, layout.dataset_meta_uri)
    return meta


def _reencode(
    source: data_layout.DatasetSource, clean: Path, report: dict, processes: int | None
) -> Reencoded:
    """Re-encode the usable videos; point the clean lists and the report at the copy."""
    usable = data_layout.DatasetSource(
        source.root,
        source.layout,
        source.classes,
        source.classes_from,
        {
            split: data_layout.SplitSource(
                source.splits[split].videos_uri,
                data_layout.list_lines((clean / data_check.LIST_NAMES[split]).read_text()),
                source.splits[split].list_uri,
            )
            for split in data_layout.SPLITS
        },
    )
    done = reencode.reencode_dataset(usable, processes=processes)
    log.info('re-encoded dataset %s (%s)', done['uri'], 'reused' if done['reused'] else 'written')
    for split in data_layout.SPLITS:
        derived_list = reencode.read_text(reencode.join(done['uri'], data_check.LIST_NAMES[split]))
        (clean / data_check.LIST_NAMES[split]).write_text(derived_list)
    for entry in report['splits']:
        entry['videos_uri'] = done['videos_uri']
    keep = ('uri', 'hash', 'videos_uri', 'settings', 'num_videos')
    report['reencoded'] = {key: done[key] for key in keep}
    return report['reencoded']


def _source_uri(dataset_uri: str, layout: RunLayout, work: Path, manifest: Manifest) -> str:
    """Where the dataset's videos and lists are read: where they are (s3:// or a mounted path),
    or, for ``generate://``, the generated tree published under ``<run>/data/source/``."""
    if not dataset_uri.startswith(GENERATED_SCHEME):
        return dataset_uri
    raw = dataset.generate_dataset(work / 'generated', **_generator_options(dataset_uri))
    files = sorted(p for p in raw.rglob('*') if p.is_file())
    manifest.publish_all(
        'data',
        [(path, layout.uri('data', 'source', path.relative_to(raw).as_posix())) for path in files],
    )
    return layout.uri('data', 'source')


def check_dataset_uri(uri: str) -> str:
    """What can be checked of ``dataset_uri`` before data prep reads it: given, and for
    ``generate://`` the generator's options."""
    if not uri:
        raise UserError(
            'dataset_uri is empty: give an s3:// prefix, a path on the mounted volume or '
            'generate:// (the synthetic demo data)'
        )
    if uri.startswith(GENERATED_SCHEME):
        _generator_options(uri)
    return uri


def _generator_options(uri: str) -> dataset.GeneratorOptions:
    """``generate://?num_classes=3&train_per_class=4`` -> generate_dataset kwargs, each
    checked against its range (``dataset.GENERATOR_RANGES``)."""
    options: dict[str, int] = {}
    for key, values in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).items():
        if key not in dataset.GENERATOR_RANGES:
            raise UserError(
                f'unknown generator option {key!r} in {uri!r}; '
                f'known: {", ".join(dataset.GENERATOR_RANGES)}'
            )
        options[key] = check_range(
            f'generator option {key}', values[-1], *dataset.GENERATOR_RANGES[key]
        )
    return cast('dataset.GeneratorOptions', options)  # its keys: checked above
