"""Data prep at Kinetics scale: list once, check videos in parallel, remember the results.

* The video roots are listed once (one LIST per 1000 objects): a list line
  naming a missing object is rejected without a request of its own, and every
  object's ETag and size come with the listing.
* Videos are checked by a pool of processes (decoding is CPU-bound), as many
  as the CPUs this process may use (``usable_cpus``: its affinity and its
  cgroup's CPU quota, i.e. a pod's CPU limit, not the node's cores).  In each
  process a few threads GET the next videos (a GET is latency-bound) while
  the process decodes one video at a time: one decode per process, and at
  most ``FETCH_BUDGET`` bytes (or one video, if larger) fetched and not yet
  decoded, so a process's memory is bounded whatever the dataset's size.
  Each video is read whole: the check decodes its first and last frames (what
  catches a truncated upload), and decord needs the container's index (the
  ``moov`` atom, often at the end of Kinetics' files) and the frames' data:
  a range read of a header would not find truncation and would cost a second
  request per video; Kinetics' videos average ~2 MB, one GET each.
* Results are cached in S3 under ``<cache>/<settings>/<dataset>/batch-*.json``,
  keyed by each object's URI + ETag + size; the settings (``min_frames``, the
  check's version) name the directory.  A batch is written as the verdicts
  arrive (every ``CACHE_EVERY`` verdicts or ``CACHE_SECONDS``), so a run that
  is killed keeps what it checked; an unchanged dataset is checked again in
  the time of its listing; a grown one checks only its new objects.  Batches
  are merged when many (dropping the verdicts of objects no longer listed).
* Read failures (an object gone since the listing, a file a mounted volume
  cannot read) are not cached: they may pass.  Any of them stops data prep
  with the count ("re-run data prep"), as does a split with more than
  ``max_unusable`` (default 50%) unusable entries: a dataset that is mostly
  unreadable is not silently shrunk.
* An S3 outage (refused, reset, no answer, 5xx / 429 past the policy's
  retries) is no verdict on any video: the first read it fails stops data
  prep at once with ``s3.S3UnavailableError`` (one line, exit status 75),
  within ``S3Policy.request_budget_s()`` (63 s by default) of the outage; the
  checking processes are stopped and the cache is not written to the
  unavailable store (a re-run checks those videos again).
* Progress is one line every few seconds: ``validated 1200/20000 videos, 85/s, ETA 3m40s``.
* ``dataset_meta`` turns the check's report into the Dataset artifact's metadata (no torch,
  no OpenMMLab: data prep publishes it without importing them).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from video_kd.core.artifacts import DatasetContents, DatasetSplit
from video_kd.core.checks import check_number, check_range
from video_kd.core.errors import UserError, one_line, setup_logging
from video_kd.core.progress import Progress
from video_kd.data.data_layout import (
    CLASSES_FILE,
    SPLITS,
    TRAIN_LIST,
    VAL_LIST,
    DatasetSource,
    describe_root,
    resolve,
)
from video_kd.storage import s3, s3_fileio

log = logging.getLogger(__name__)

CHECK_VERSION = 1  # bump when check_video_bytes accepts or rejects differently
LIST_NAMES = {'train': TRAIN_LIST, 'val': VAL_LIST}
CLASSES_NAME = CLASSES_FILE
REPORT_NAME = 'report.json'
_CHUNK = 16  # at most this many videos per task handed to a process: few round trips
_COMPACT_AFTER = 16  # cache batches before they are merged into one
CACHE_EVERY = 1000  # verdicts per cache batch: a killed run loses at most this many...
CACHE_SECONDS = 60.0  # ...or this long of checking
FETCH_BUDGET = 128 * 2**20  # bytes a process may hold fetched but not yet decoded
MAX_UNUSABLE = 0.5  # a split with a larger share of unusable entries stops data prep
READ_FAILED = 'cannot read'
NO_SUCH_OBJECT = 'no such object under the video root'
CGROUP_ROOT = Path('/sys/fs/cgroup')


MAX_PROCESSES = 1024  # checking processes, one decoder each: more is a typo, not a machine
MAX_THREADS = 256  # fetching threads per process


def check_settings(
    min_frames: int, processes: int | None, max_unusable: float, threads: int = 8
) -> tuple[int, int | None, float]:
    """Data prep's numbers, ranged (one line, exit status 2 under ``run_cli``):
    ``min_frames`` >= 1, ``processes`` 1-1024 or None (the CPUs this process may use;
    0 is refused rather than read as the default, as a computed 0 is a bug upstream),
    ``max_unusable`` a share in [0, 1] (NaN would switch the check off: every
    comparison with it is false), ``threads`` 1-256.  Returns them as typed."""
    min_frames = check_range('min_frames', min_frames, 1)
    if processes is not None:
        processes = check_range('processes', processes, 1, MAX_PROCESSES)
    share = check_number('max_unusable (a share of a split, 0-1)', max_unusable, 0, 1)
    check_range('threads', threads, 1, MAX_THREADS)
    return min_frames, processes, share


class DataCheckError(UserError):
    """The dataset cannot be used (read failures, or too few usable videos in a split)."""


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


# --------------------------------------------------------------------------- CPUs
def usable_cpus(cgroup_root: str | os.PathLike | None = None) -> int:
    """The CPUs this process may use: its affinity mask and its cgroup's CPU quota, the smaller.

    ``os.cpu_count()`` is the node's cores; a Kubernetes pod's CPU limit is a
    CFS quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``) and a pinned pod's CPUs its affinity mask.  A
    fractional quota rounds up: its remainder is CPU time a process can use.
    ``cgroup_root``: where the cgroup files are (default ``CGROUP_ROOT``).
    """
    counts = [_affinity_cpus()]
    quota = _cgroup_cpu_quota(Path(cgroup_root or CGROUP_ROOT))
    if quota is not None:
        counts.append(math.ceil(quota))
    return max(1, min(counts))


def _affinity_cpus() -> int:
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of quota (``1.5`` for a 1500m limit); None when unlimited or unknown."""
    v2 = _read_fields(root / 'cpu.max')  # "max 100000" or "150000 100000"
    if v2:
        quota, period = [*v2, '100000'][:2]
        return _ratio(quota, period)
    for directory in ('cpu', 'cpu,cpuacct'):  # v1: -1 means no limit
        quotas = _read_fields(root / directory / 'cpu.cfs_quota_us')
        periods = _read_fields(root / directory / 'cpu.cfs_period_us')
        if quotas and periods:
            return _ratio(quotas[0], periods[0])
    return None


def _read_fields(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


# --------------------------------------------------------------------------- listing
def list_videos(videos_uri: str) -> dict[str, ObjectInfo]:
    """Every object under a video root, by its path relative to it (one pass)."""
    if videos_uri.startswith('s3://'):
        return _list_s3(videos_uri)
    return _list_local(Path(videos_uri))


def _list_s3(videos_uri: str) -> dict[str, ObjectInfo]:
    root = videos_uri.rstrip('/') + '/'
    return {
        rel: ObjectInfo(root + rel, etag, size) for rel, etag, size in s3_fileio.list_objects(root)
    }


def _list_local(root: Path) -> dict[str, ObjectInfo]:
    found: dict[str, ObjectInfo] = {}
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
        decord_says = str(error).strip().splitlines()[0][:200] if str(error).strip() else ''
        cause = ffmpeg_error(data)
        return (
            f'cannot decode: {cause} ({decord_says})' if cause else f'cannot decode: {decord_says}'
        )
    return None


def ffmpeg_error(data: bytes) -> str:
    """FFmpeg's own last error for a video that does not decode ('moov atom not found'),
    or '' if it decodes.

    decord's exception only says 'Error reading N bytes...'; the cause goes to the
    process's stderr, out of reach.  PyAV hands FFmpeg's log lines to Python instead, so
    the failed video is opened once more there (only on failure: it costs a decode).
    """
    import av
    import av.logging

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            try:
                with av.open(io.BytesIO(data)) as container:
                    for _ in container.decode(video=0):
                        pass
            except (av.FFmpegError, ValueError, IndexError):
                pass  # the log holds the reason; no video stream: IndexError
    finally:
        av.logging.set_level(previous)
    errors = [message.strip() for level, _, message in logs if level <= av.logging.ERROR]
    return errors[-1][:200] if errors else ''


def _fetch(uri: str) -> tuple[bytes | None, str | None]:
    """The video's bytes, or why they could not be read (a read failure: not cached).

    An S3 outage is raised (``s3.S3UnavailableError``): it says nothing about the video.
    """
    try:
        if uri.startswith('s3://'):
            return s3_fileio.get_object_bytes(uri), None
        return Path(uri).read_bytes(), None
    except s3.S3UnavailableError as error:
        raise s3.S3UnavailableError(
            f'{one_line(error)}; data prep stopped: S3 is unavailable, the videos are not '
            'unusable (re-run data prep once it is back)'
        ) from None  # pickled back from a checking process: the message is what counts
    except (s3.S3Error, OSError) as error:
        message = str(error)  # an S3 error's already reads "cannot read <uri>: ..."
        named = message.startswith(f'{READ_FAILED} {uri}')
        return None, message if named else f'{READ_FAILED} {uri}: {message}'


_fetchers: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _fetch_pool(threads: int) -> ThreadPoolExecutor:
    """This process's fetching threads (a forked process must not use its parent's)."""
    key = (os.getpid(), threads)
    if key not in _fetchers:
        _fetchers.clear()
        _fetchers[key] = ThreadPoolExecutor(threads, thread_name_prefix='fetch')
    return _fetchers[key]


def _check_in_order(
    items: list[tuple[str, int]], min_frames: int, threads: int, budget: int
) -> Iterator[tuple[str, str | None]]:
    """Check videos in order: GETs run ahead on ``threads`` threads while this thread decodes.

    One decode at a time per process (the CPU it has), at most ``threads``
    GETs in flight, and at most ``budget`` bytes fetched but not yet decoded
    (a single video larger than that is still read): the process's memory is
    bounded by the budget, not by the dataset or the node.
    """
    fetchers = _fetch_pool(threads)
    ahead: collections.deque = collections.deque()
    held = 0
    todo = collections.deque(items)
    while todo or ahead:
        while todo and (not ahead or (len(ahead) < threads and held + todo[0][1] <= budget)):
            uri, size = todo.popleft()
            ahead.append((uri, size, fetchers.submit(_fetch, uri)))
            held += size
        uri, size, fetching = ahead.popleft()
        data, reason = fetching.result()
        if reason is None:
            reason = check_video_bytes(data, min_frames)
        data = None  # its memory goes back before the next GETs run ahead
        held -= size
        yield uri, reason


def _check_chunk(args: tuple[list[tuple[str, int]], int, int, int]) -> list[tuple[str, str | None]]:
    """In a pool process: one task's videos (``_check_in_order``)."""
    return list(_check_in_order(*args))


def _pool_context():
    """fork where there is one: a spawned process re-imports torch via video_kd (~4 s each).

    Safe here: a checker touches no torch and builds its own S3 client
    (``s3_fileio.stream_client`` is per process) and fetching threads.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')


def check_videos(
    objects: list[ObjectInfo],
    min_frames: int,
    processes: int,
    threads: int,
    on_verdicts: Callable[[dict[str, str | None]], None] | None = None,
    fetch_budget: int = FETCH_BUDGET,
) -> dict[str, str | None]:
    """Check videos in parallel; returns uri -> None (usable) or the reason it is not.

    ``on_verdicts`` gets each task's verdicts as they arrive (the cache writes
    them in batches).  Memory: ``processes`` x (``fetch_budget`` + one decoder).
    """
    results: dict[str, str | None] = {}
    if not objects:
        return results
    size = max(1, min(_CHUNK, len(objects) // (processes * 4)))  # every process gets work
    items = [(info.uri, info.size) for info in objects]
    chunks = [
        (items[i : i + size], min_frames, threads, fetch_budget) for i in range(0, len(items), size)
    ]
    progress = Progress(len(objects), 'validated', 'videos', log)

    def arrived(done: list[tuple[str, str | None]]) -> None:
        results.update(done)
        progress.advance(len(done))
        if on_verdicts:
            on_verdicts(dict(done))

    processes = max(1, min(processes, len(chunks)))
    if processes == 1:  # no pool to fork: this process checks them, one stream of GETs
        for verdict in _check_in_order(items, min_frames, threads, fetch_budget):
            arrived([verdict])
        return results
    with _pool_context().Pool(processes) as pool:
        for done in pool.imap_unordered(_check_chunk, chunks):
            arrived(done)
    return results


# --------------------------------------------------------------------------- cache
def settings_key(min_frames: int) -> str:
    """Names the cache directory: results hold only for the same check settings."""
    settings = json.dumps({'check': CHECK_VERSION, 'min_frames': min_frames}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


class CheckCache:
    """Validation results in S3, append-only batches under ``<cache_uri>/<settings>/<dataset>/``.

    ``add`` buffers verdicts and writes a batch every ``every`` verdicts or
    ``seconds``, so a run killed halfway keeps what it checked; ``finish``
    writes the rest and merges the batches into one when they are many or
    when a quarter of the verdicts are for objects no longer listed (those
    are dropped).  Read failures are never stored: they may pass.  A failed
    write only warns: the verdicts of this run stand, the next run checks again.
    """

    def __init__(
        self,
        cache_uri: str | None,
        min_frames: int,
        dataset_root: str,
        every: int = CACHE_EVERY,
        seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # one directory per dataset root: a run reads only its own dataset's verdicts
        scope = hashlib.sha256(dataset_root.encode()).hexdigest()[:16]
        self.uri = s3.join_uri(cache_uri, settings_key(min_frames), scope) if cache_uri else None
        self._every = max(1, every)
        self._seconds = seconds
        self._clock = clock
        self._batches: list[str] = []  # every batch stored: loaded or written by this run
        self._stored: dict[str, str | None] = {}
        self._pending: dict[str, str | None] = {}
        self._last_write = clock()

    def load(self) -> dict[str, str | None]:
        """Cached reason (None = usable) by ``ObjectInfo.cache_key``."""
        if not self.uri:
            return {}
        self._batches = [u for u in s3.list_uris(self.uri + '/') if u.endswith('.json')]
        with ThreadPoolExecutor(8) as pool:  # a killed run may have left many small batches
            for batch in pool.map(s3.read_json, self._batches):
                self._stored.update(batch['entries'])
        return dict(self._stored)

    def add(self, entries: dict[str, str | None]) -> None:
        """Remember new verdicts (read failures excepted); write a batch when one is due."""
        if not self.uri:
            return
        self._pending.update({k: r for k, r in entries.items() if not _transient(r)})
        due = self._clock() - self._last_write >= self._seconds
        if len(self._pending) >= self._every or (self._pending and due):
            self.flush()

    def flush(self) -> None:
        """Write the verdicts not stored yet as one batch."""
        if not self.uri or not self._pending:
            return
        try:
            self._batches.append(self._write(self.uri, self._pending))
        except s3.S3Error as error:
            log.warning('validation cache not updated (no more writes this run): %s', error)
            self.uri = None
            return
        self._stored.update(self._pending)
        self._pending = {}
        self._last_write = self._clock()

    def finish(self, listed: set[str]) -> None:
        """Write the rest; merge the batches when many or mostly stale (keeping ``listed`` keys)."""
        self.flush()
        if not self.uri:
            return
        stale = len(self._stored.keys() - listed)
        if len(self._batches) <= _COMPACT_AFTER and stale * 4 <= len(self._stored):
            return
        keep = {key: reason for key, reason in self._stored.items() if key in listed}
        try:
            merged = self._write(self.uri, keep)
            self._delete(self._batches)
        except s3.S3Error as error:
            log.warning('validation cache not merged: %s', error)
            return
        self._batches, self._stored = [merged], keep

    def _write(self, root: str, entries: dict[str, str | None]) -> str:
        name = f'batch-{time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}-{uuid.uuid4().hex[:8]}'
        uri = s3.join_uri(root, name + '.json')
        s3_fileio.put_object_bytes(uri, json.dumps({'entries': entries}).encode())
        return uri

    def _delete(self, uris: list[str]) -> None:
        for uri in uris:
            s3_fileio.delete_object(uri)


# --------------------------------------------------------------------------- the whole step
def validate_source(
    source: DatasetSource,
    out_dir: str | Path,
    cache_uri: str | None = None,
    min_frames: int = 8,
    processes: int | None = None,
    threads: int = 8,
    max_unusable: float = MAX_UNUSABLE,
    cache_every: int = CACHE_EVERY,
) -> dict:
    """Check every listed video of both splits; write the clean lists, classes and report.

    ``out_dir`` gets ``train_list.txt``, ``val_list.txt`` (usable lines, paths
    relative to each split's video root, as given), ``classes.txt`` and
    ``report.json``.  ``processes``: checking processes (default: the CPUs
    this process may use, ``usable_cpus``).  A few bad videos are reported,
    not fatal; ``DataCheckError`` (one line, with the counts) when a video
    could not be read (not cached: a re-run retries only those) or when more
    than ``max_unusable`` of a split's entries are unusable.
    """
    min_frames, processes, max_unusable = check_settings(
        min_frames, processes, max_unusable, threads
    )
    start = time.monotonic()
    roots = sorted({source.splits[split].videos_uri for split in SPLITS})
    cache = CheckCache(cache_uri, min_frames, source.root, every=cache_every)
    with ThreadPoolExecutor(len(roots) + 1) as pool:  # independent round trips, at once
        cached_future = pool.submit(cache.load)
        listings = dict(zip(roots, pool.map(list_videos, roots), strict=True))
        cached = cached_future.result()
    _stop_if_empty(source, listings)
    wanted = _listed_objects(source, listings)
    todo = sorted((info for info in wanted if info.cache_key not in cached), key=lambda i: i.uri)
    processes = processes or usable_cpus()
    log.info(
        'dataset %s: %d listed videos, %d known from the cache, %d to check in %d processes',
        source.root,
        len(wanted),
        len(wanted) - len(todo),
        len(todo),
        processes,
    )
    fresh = _check_and_cache(todo, cache, min_frames, processes, threads)
    cache.finish({info.cache_key for listing in listings.values() for info in listing.values()})
    verdicts = {**cached, **fresh}
    num_classes = len(source.classes)
    checked = [_check_split(source, split, listings, verdicts, num_classes) for split in SPLITS]
    splits = [report for report, _ in checked]
    _stop_if_unusable(source, splits, max_unusable)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split_report, valid in checked:
        (out_dir / split_report.list_file).write_text('\n'.join(valid) + '\n')
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


def write_unchecked(source: DatasetSource, out_dir: str | Path) -> dict:
    """``validate_source``'s files without decoding a video: the lists as found (each video
    is read when used; the test loop stops on an unreadable one, training skips it), for
    the local entry points told not to check (``--no-data-check``) and for evaluation."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = []
    for split in SPLITS:
        found = source.splits[split]
        (out_dir / LIST_NAMES[split]).write_text('\n'.join(found.lines) + '\n')
        report = SplitReport(split, LIST_NAMES[split], found.videos_uri, total=len(found.lines))
        report.valid = len(found.lines)
        splits.append(asdict(report))
    (out_dir / CLASSES_NAME).write_text('\n'.join(source.classes) + '\n')
    report_dict = {'root': source.root, 'layout': source.layout, 'classes': source.classes,
                   'classes_from': source.classes_from, 'splits': splits, 'rejected_total': 0,
                   'checked': 0}  # fmt: skip
    (out_dir / REPORT_NAME).write_text(json.dumps(report_dict, indent=2))
    return report_dict


def dataset_meta(source: DatasetSource, report: dict, data_uri: str) -> DatasetContents:
    """The Dataset artifact's metadata: what ``use_dataset`` needs, and the counts.

    ``data_uri`` is where data prep published ``validate_source``'s output
    (the run's ``data/`` directory, s3:// or local).
    """
    join = s3.join_uri if data_uri.startswith('s3://') else _path_join
    splits: dict[str, DatasetSplit] = {
        entry['split']: {
            'list_uri': join(data_uri, LIST_NAMES[entry['split']]),
            'videos_uri': entry['videos_uri'],
            'num_videos': entry['valid'],
            'rejected': len(entry['rejected']),
        }
        for entry in report['splits']
    }
    return {
        'source': source.root,
        'layout': source.layout,
        'classes': source.classes,
        'num_classes': len(source.classes),
        'splits': splits,
        'classes_uri': join(data_uri, CLASSES_NAME),
        'report_uri': join(data_uri, REPORT_NAME),
        'num_train': splits['train']['num_videos'],
        'num_val': splits['val']['num_videos'],
        'rejected': report['rejected_total'],
        'videos_uri': splits['train']['videos_uri'],  # what the teacher-logit cache keys on
    }


def _path_join(root: str, name: str) -> str:
    return f'{root.rstrip("/")}/{name}'


def _check_and_cache(
    todo: list[ObjectInfo], cache: CheckCache, min_frames: int, processes: int, threads: int
) -> dict[str, str | None]:
    """Verdicts by cache key; stored in the cache as they arrive, and on the way out of a
    failure (a kill loses at most the last unwritten batch)."""
    key_of = {info.uri: info.cache_key for info in todo}
    fresh: dict[str, str | None] = {}

    def arrived(done: dict[str, str | None]) -> None:
        entries = {key_of[uri]: reason for uri, reason in done.items()}
        fresh.update(entries)
        cache.add(entries)

    try:
        check_videos(todo, min_frames, processes, threads, on_verdicts=arrived)
    except BaseException as error:
        if not s3.is_transient(error):  # S3 is out: a write would wait another request budget
            cache.flush()
        raise
    cache.flush()
    return fresh


def _transient(reason: str | None) -> bool:
    return bool(reason and reason.startswith(READ_FAILED))


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


def _check_split(
    source: DatasetSource,
    split: str,
    listings: dict,
    verdicts: dict[str, str | None],
    num_classes: int,
) -> tuple[SplitReport, list[str]]:
    """The split's report and its usable lines."""
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
    return report, valid


def _stop_if_empty(source: DatasetSource, listings: dict[str, dict]) -> None:
    """A split root without a single object: one line, before any decoding."""
    for split in SPLITS:
        videos_uri = source.splits[split].videos_uri
        if not listings[videos_uri]:
            raise DataCheckError(
                f'dataset {source.root}: the {split} videos root {videos_uri} is empty or '
                f'missing; {describe_root(source.root)}'
            )


def _stop_if_unusable(
    source: DatasetSource, splits: list[SplitReport], max_unusable: float
) -> None:
    """Read failures, a split without a usable video or mostly unusable: one line with the counts."""
    failed = [r for split in splits for r in split.rejected if _transient(r.reason)]
    if failed:
        total = sum(split.total for split in splits)
        raise DataCheckError(
            f'dataset {source.root}: {len(failed)} of {total} listed videos could not be read '
            f'(first: {failed[0].reason}); read failures are not cached and would shrink the '
            'dataset: re-run data prep (it checks only these again)'
        )
    for split in splits:
        first = split.rejected[0].reason if split.rejected else 'empty list'
        list_uri = source.splits[split.split].list_uri
        if not split.valid:
            raise DataCheckError(
                f'dataset {source.root}: no usable video among the {split.total} entries of '
                f'{list_uri} (first reason: {first}){_where_looked(source, split)}'
            )
        if len(split.rejected) > max_unusable * split.total:
            raise DataCheckError(
                f'dataset {source.root}: {len(split.rejected)} of the {split.total} entries of '
                f'{list_uri} are unusable (more than {max_unusable:.0%}; first reason: {first}; '
                'the log above names up to 20)'
            )


def _where_looked(source: DatasetSource, split: SplitReport) -> str:
    """For a split whose videos were all missing: the path looked for, the pattern, and
    what the root holds instead (with the layout options that would read it)."""
    missing = [r for r in split.rejected if r.reason == NO_SUCH_OBJECT]
    if not missing:
        return ''
    found = source.splits[split.split]
    pattern = f' ({found.path_pattern})' if found.path_pattern else ''
    return (
        f'; looked for {found.videos_uri}/{missing[0].path}{pattern}; {describe_root(source.root)}'
    )


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
        return NO_SUCH_OBJECT, rel, label
    return verdicts.get(info.cache_key, 'not checked'), rel, label


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m video_kd.data.data_check``: check a dataset before a pipeline run uses it."""
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.data.data_check',
        description='Check every listed video of a dataset (s3:// prefix or local directory, '
        "video-kd's or MMAction2's Kinetics layout) in parallel and write the usable lists, "
        'classes.txt and report.json to --out. Verdicts are cached in S3 (--cache-uri) by '
        "each object's URI + ETag + size, written as they arrive: a second run (also after a "
        'killed one) checks only new, changed or unchecked videos.',
        epilog='Other file names go in the URI query, e.g. '
        's3://bucket/k400?train_list=train.txt&val_videos=val_256 '
        '(train_list, val_list, train_videos, val_videos, label_map).',
    )
    parser.add_argument('dataset_uri', help='s3://bucket/prefix or a directory')
    parser.add_argument('--out', required=True, help='directory for the lists and report')
    parser.add_argument('--cache-uri', help='s3:// prefix for cached verdicts (default: none)')
    parser.add_argument('--min-frames', type=int, default=8, help='fewer frames: rejected')
    parser.add_argument(
        '--processes',
        type=int,
        help='checking processes, one decode each (default: the CPUs this process may use, '
        f'affinity and cgroup CPU limit: {usable_cpus()} here)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=8,
        help='fetching threads per process (GETs run ahead of the decoding, at most '
        f'{FETCH_BUDGET // 2**20} MiB fetched and not yet decoded per process)',
    )
    parser.add_argument(
        '--max-unusable',
        type=float,
        default=MAX_UNUSABLE,
        help='stop when a larger share of a split is unusable (default: %(default)s)',
    )
    args = parser.parse_args(argv)
    setup_logging()
    check_settings(args.min_frames, args.processes, args.max_unusable, args.threads)
    report = validate_source(
        resolve(args.dataset_uri),
        args.out,
        cache_uri=args.cache_uri,
        min_frames=args.min_frames,
        processes=args.processes,
        threads=args.threads,
        max_unusable=args.max_unusable,
    )
    print(
        ', '.join(f'{s["split"]} {s["valid"]}/{s["total"]} usable' for s in report['splits'])
        + f'; {report["checked"]} checked, {report["from_cache"]} from the cache'
    )
    return 0


if __name__ == '__main__':
    from video_kd.core.errors import run_cli

    raise SystemExit(run_cli(main))
