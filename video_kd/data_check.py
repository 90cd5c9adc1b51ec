"""Data prep at Kinetics scale: list once, check videos in parallel, remember the results.

* The video roots are listed once (one LIST per 1000 objects): a list line
  naming a missing object is rejected without a request of its own, and every
  object's ETag and size come with the listing.
* Videos are checked by a pool of processes (decoding is CPU-bound), each
  fetching with a few threads (a GET is latency-bound); a process holds at
  most ``threads`` videos in memory, whatever the dataset's size.  Each
  video is read whole: the check decodes its first and last frames (what
  catches a truncated upload), and decord needs the container's index (the
  ``moov`` atom, often at the end of Kinetics' files) and the frames' data:
  a range read of a header would not find truncation and would cost a second
  request per video; Kinetics' videos average ~2 MB, one GET each.
* Results are cached in S3 under ``<cache>/<settings>/batch-*.json``, keyed by
  each object's URI + ETag + size; the settings (``min_frames``, the check's
  version) name the directory.  An unchanged dataset is checked again in the
  time of its listing; a grown one checks only its new objects.
* Progress is one line every few seconds: ``validated 1200/20000 videos, 85/s, ETA 3m40s``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from video_kd import s3, s3_fileio
from video_kd.data_layout import SPLITS, DatasetSource
from video_kd.errors import UserError
from video_kd.progress import Progress

log = logging.getLogger(__name__)

CHECK_VERSION = 1  # bump when check_video_bytes accepts or rejects differently
LIST_NAMES = {'train': 'train_list.txt', 'val': 'val_list.txt'}
CLASSES_NAME = 'classes.txt'
REPORT_NAME = 'report.json'
_CHUNK = 16  # videos per task handed to a process: few round trips, even spread
_COMPACT_AFTER = 16  # cache batches before they are merged into one
READ_FAILED = 'cannot read'


class DataCheckError(UserError):
    """The dataset cannot be used (no valid video in a split)."""


@dataclass(frozen=True)
class ObjectInfo:
    """A listed video: where it is and what identifies its content."""

    uri: str
    etag: str
    size: int

    @property
    def cache_key(self) -> str:
        return f'{self.uri}\t{self.etag}\t{self.size}'


@dataclass
class Rejected:
    path: str
    label: str
    reason: str


@dataclass
class SplitReport:
    split: str
    list_file: str
    videos_uri: str
    total: int = 0
    valid: int = 0
    rejected: list[Rejected] = field(default_factory=list)


# --------------------------------------------------------------------------- listing
def list_videos(videos_uri: str) -> dict[str, ObjectInfo]:
    """Every object under a video root, by its path relative to it (one pass)."""
    if videos_uri.startswith('s3://'):
        return _list_s3(videos_uri)
    return _list_local(Path(videos_uri))


def _list_s3(videos_uri: str) -> dict[str, ObjectInfo]:
    bucket, key = s3.parse_s3_uri(videos_uri.rstrip('/') + '/')
    found = {}
    with s3_fileio.storage_errors(videos_uri, 'list'):
        paginator = s3_fileio.stream_client().get_paginator('list_objects_v2')
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for obj in page.get('Contents', []):
                rel = obj['Key'][len(key) :]
                uri = f's3://{bucket}/{obj["Key"]}'
                found[rel] = ObjectInfo(uri, obj['ETag'].strip('"'), obj['Size'])
    return found


def _list_local(root: Path) -> dict[str, ObjectInfo]:
    found = {}
    if not root.is_dir():
        return found
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            stat = path.stat()
            rel = path.relative_to(root).as_posix()
            found[rel] = ObjectInfo(str(path), f'mtime:{stat.st_mtime_ns}', stat.st_size)
    return found


# --------------------------------------------------------------------------- checking
def check_video_bytes(data: bytes, min_frames: int) -> str | None:
    """None when the video decodes with enough frames, else why it is unusable."""
    import decord

    if not data:
        return 'empty file'
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        count = len(reader)
        if count < min_frames:
            return f'only {count} frames, need {min_frames}'
        reader.get_batch([0, count - 1])  # decode both ends: catches truncated files
    except Exception as error:  # decord raises bare DECORDError/RuntimeError
        return f'cannot decode: {str(error).splitlines()[0][:200]}'
    return None


def _read(uri: str) -> bytes:
    if uri.startswith('s3://'):
        return s3_fileio.get_object_bytes(uri)
    return Path(uri).read_bytes()


def _check_one(uri: str, min_frames: int) -> tuple[str, str | None]:
    try:
        data = _read(uri)
    except (s3.S3Error, OSError) as error:
        return uri, f'{READ_FAILED}: {error}'
    return uri, check_video_bytes(data, min_frames)


_threads: ThreadPoolExecutor | None = None


def _check_chunk(args: tuple[list[str], int, int]) -> list[tuple[str, str | None]]:
    """In a pool process: fetch with a few threads (latency), decode each (CPU)."""
    global _threads
    uris, min_frames, threads = args
    if _threads is None:
        _threads = ThreadPoolExecutor(threads, thread_name_prefix='fetch')
    return list(_threads.map(lambda uri: _check_one(uri, min_frames), uris))


def _pool_context():
    """fork where there is one: a spawned process re-imports torch via video_kd (~4 s each).

    Safe here: a checker touches no torch and builds its own S3 client
    (``s3_fileio.stream_client`` is per process).
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')


def check_videos(
    uris: list[str], min_frames: int, processes: int, threads: int
) -> dict[str, str | None]:
    """Check videos in parallel; returns uri -> None (usable) or the reason it is not."""
    results: dict[str, str | None] = {}
    if not uris:
        return results
    chunks = [(uris[i : i + _CHUNK], min_frames, threads) for i in range(0, len(uris), _CHUNK)]
    progress = Progress(len(uris), 'validated', 'videos', log)
    processes = max(1, min(processes, len(chunks)))
    with _pool_context().Pool(processes) as pool:
        for done in pool.imap_unordered(_check_chunk, chunks):
            results.update(done)
            progress.advance(len(done))
    return results


# --------------------------------------------------------------------------- cache
def settings_key(min_frames: int) -> str:
    """Names the cache directory: results hold only for the same check settings."""
    settings = json.dumps({'check': CHECK_VERSION, 'min_frames': min_frames}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


class CheckCache:
    """Validation results in S3, append-only batches under ``<cache_uri>/<settings>/``."""

    def __init__(self, cache_uri: str | None, min_frames: int, dataset_root: str) -> None:
        # one directory per dataset root: a run reads only its own dataset's verdicts
        scope = hashlib.sha256(dataset_root.encode()).hexdigest()[:16]
        self.uri = s3.join_uri(cache_uri, settings_key(min_frames), scope) if cache_uri else None
        self._batches: list[str] = []

    def load(self) -> dict[str, str | None]:
        """Cached reason (None = usable) by ``ObjectInfo.cache_key``."""
        if not self.uri:
            return {}
        self._batches = [u for u in s3.list_uris(self.uri + '/') if u.endswith('.json')]
        entries: dict[str, str | None] = {}
        for uri in self._batches:
            entries.update(s3.read_json(uri)['entries'])
        return entries

    def add(self, entries: dict[str, str | None], everything: dict[str, str | None]) -> None:
        """Store new results; merge the batches into one when there are many."""
        if not self.uri or not entries:
            return
        try:
            if len(self._batches) + 1 > _COMPACT_AFTER:
                self._write({**everything, **entries})
                self._delete(self._batches)
            else:
                self._write(entries)
        except s3.S3Error as error:  # the verdicts of this run stand; the next one rechecks
            log.warning('validation cache not updated: %s', error)

    def _write(self, entries: dict[str, str | None]) -> None:
        name = f'batch-{time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}-{uuid.uuid4().hex[:8]}'
        bucket, key = s3.parse_s3_uri(s3.join_uri(self.uri, name + '.json'))
        body = json.dumps({'entries': entries}).encode()
        with s3_fileio.storage_errors(f's3://{bucket}/{key}', 'write'):
            s3_fileio.stream_client().put_object(Bucket=bucket, Key=key, Body=body)

    def _delete(self, uris: list[str]) -> None:
        for uri in uris:
            bucket, key = s3.parse_s3_uri(uri)
            with s3_fileio.storage_errors(uri, 'delete'):
                s3_fileio.stream_client().delete_object(Bucket=bucket, Key=key)


# --------------------------------------------------------------------------- the whole step
def validate_source(
    source: DatasetSource,
    out_dir: str | Path,
    cache_uri: str | None = None,
    min_frames: int = 8,
    processes: int | None = None,
    threads: int = 8,
) -> dict:
    """Check every listed video of both splits; write the clean lists, classes and report.

    ``out_dir`` gets ``train_list.txt``, ``val_list.txt`` (usable lines, paths
    relative to each split's video root, as given), ``classes.txt`` and
    ``report.json``.  Bad videos are reported, not fatal; a split without one
    usable video raises ``DataCheckError``.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = sorted({source.splits[split].videos_uri for split in SPLITS})
    cache = CheckCache(cache_uri, min_frames, source.root)
    with ThreadPoolExecutor(len(roots) + 1) as pool:  # independent round trips, at once
        cached_future = pool.submit(cache.load)
        listings = dict(zip(roots, pool.map(list_videos, roots), strict=True))
        cached = cached_future.result()
    wanted = _listed_objects(source, listings)
    todo = sorted({info.uri for info in wanted if info.cache_key not in cached})
    log.info(
        'dataset %s: %d listed videos, %d known from the cache, %d to check',
        source.root,
        len(wanted),
        len(wanted) - len(todo),
        len(todo),
    )
    fresh = check_videos(todo, min_frames, processes or os.cpu_count() or 1, threads)
    by_uri = {info.uri: info for info in wanted}
    new_entries = {by_uri[uri].cache_key: reason for uri, reason in fresh.items()}
    # a failed read may be a passing outage: remembered only for this run
    cache.add({k: r for k, r in new_entries.items() if not _transient(r)}, cached)
    verdicts = {**cached, **new_entries}
    splits = [
        _write_split(
            source, split, listings, verdicts, num_classes=len(source.classes), out=out_dir
        )
        for split in SPLITS
    ]
    (out_dir / CLASSES_NAME).write_text('\n'.join(source.classes) + '\n')
    report = {
        'root': source.root,
        'layout': source.layout,
        'classes': source.classes,
        'classes_from': source.classes_from,
        'min_frames': min_frames,
        'splits': [asdict(s) for s in splits],
        'rejected_total': sum(len(s.rejected) for s in splits),
        'checked': len(todo),
        'from_cache': len(wanted) - len(todo),
        'cache_uri': cache.uri,
        'seconds': round(time.monotonic() - start, 2),
    }
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    log.info(
        'dataset %s: %s in %.1fs',
        source.root,
        ', '.join(f'{s.split} {s.valid}/{s.total} valid' for s in splits),
        report['seconds'],
    )
    return report


def _transient(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(READ_FAILED)


def _parse(line: str) -> tuple[str, str] | None:
    parts = line.rsplit(maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _listed_objects(source: DatasetSource, listings: dict) -> list[ObjectInfo]:
    wanted = {}
    for split in source.splits.values():
        listing = listings[split.videos_uri]
        for line in split.lines:
            parsed = _parse(line)
            if parsed and parsed[0] in listing:
                info = listing[parsed[0]]
                wanted[info.uri] = info
    return list(wanted.values())


def _write_split(
    source: DatasetSource,
    split: str,
    listings: dict,
    verdicts: dict[str, str | None],
    num_classes: int,
    out: Path,
) -> SplitReport:
    found = source.splits[split]
    listing = listings[found.videos_uri]
    report = SplitReport(split, LIST_NAMES[split], found.videos_uri, total=len(found.lines))
    valid = []
    for line in found.lines:
        reason, rel, label = _line_reason(line, listing, verdicts, num_classes)
        if reason:
            report.rejected.append(Rejected(rel, label, reason))
        else:
            valid.append(f'{rel} {label}')
    for rejected in report.rejected[:20]:  # the report has them all; the log a sample
        log.warning('rejected %s (%s): %s', rejected.path, split, rejected.reason)
    report.valid = len(valid)
    if not valid:
        raise DataCheckError(
            f'dataset {source.root}: no usable video among the {report.total} entries of '
            f'{found.list_uri} (first reason: '
            f'{report.rejected[0].reason if report.rejected else "empty list"})'
        )
    (out / LIST_NAMES[split]).write_text('\n'.join(valid) + '\n')
    return report


def _line_reason(
    line: str, listing: dict[str, ObjectInfo], verdicts: dict[str, str | None], num_classes: int
) -> tuple[str | None, str, str]:
    parsed = _parse(line)
    if not parsed:
        return 'malformed line: expected "<path> <label>"', line, ''
    rel, label = parsed
    if not label.isdigit() or int(label) >= num_classes:
        return f'unknown label (classes are 0..{num_classes - 1})', rel, label
    info = listing.get(rel)
    if info is None:
        return 'no such object under the video root', rel, label
    return verdicts.get(info.cache_key, 'not checked'), rel, label


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m video_kd.data_check``: check a dataset before a pipeline run uses it."""
    import argparse

    from video_kd.data_layout import resolve
    from video_kd.errors import setup_logging

    parser = argparse.ArgumentParser(
        prog='python -m video_kd.data_check',
        description='Check every listed video of a dataset (s3:// prefix or local directory, '
        "video-kd's or MMAction2's Kinetics layout) in parallel and write the usable lists, "
        'classes.txt and report.json to --out. Verdicts are cached in S3 (--cache-uri) by '
        "each object's URI + ETag + size: a second run checks only new or changed videos.",
        epilog='Other file names go in the URI query, e.g. '
        's3://bucket/k400?train_list=train.txt&val_videos=val_256 '
        '(train_list, val_list, train_videos, val_videos, label_map).',
    )
    parser.add_argument('dataset_uri', help='s3://bucket/prefix or a directory')
    parser.add_argument('--out', required=True, help='directory for the lists and report')
    parser.add_argument('--cache-uri', help='s3:// prefix for cached verdicts (default: none)')
    parser.add_argument('--min-frames', type=int, default=8, help='fewer frames: rejected')
    parser.add_argument(
        '--processes', type=int, default=os.cpu_count() or 1, help='decoding processes'
    )
    parser.add_argument('--threads', type=int, default=8, help='fetching threads per process')
    args = parser.parse_args(argv)
    setup_logging()
    report = validate_source(
        resolve(args.dataset_uri),
        args.out,
        cache_uri=args.cache_uri,
        min_frames=args.min_frames,
        processes=args.processes,
        threads=args.threads,
    )
    print(
        ', '.join(f'{s["split"]} {s["valid"]}/{s["total"]} usable' for s in report['splits'])
        + f'; {report["checked"]} checked, {report["from_cache"]} from the cache'
    )
    return 0


if __name__ == '__main__':
    from video_kd.errors import run_cli

    raise SystemExit(run_cli(main))
