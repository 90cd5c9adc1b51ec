"""Optional re-encoding: a derived copy of a dataset that is cheap to decode.

Videos as distributed (Kinetics' YouTube downloads) have long GOPs: one
keyframe every few seconds.  ``SampleFrames`` picks frames spread over the
whole clip, and decord must decode from the keyframe before each of them, so
a training step may decode most of every video to use 8 of its frames.
MMAction2's benchmarks use "dense" encodings (a keyframe every frame or every
few frames) at short side 256; ``reencode_dataset`` writes one:

* every listed video of both splits, scaled to ``short_side`` (aspect kept,
  even sizes), H.264 with a keyframe every ``gop`` frames, frame rate kept;
* in video-kd's layout (``videos/``, ``train_list.txt``, ``val_list.txt``,
  ``classes.txt``) at ``<source root>/derived/<hash>/``, next to the source
  (s3:// or a mounted path); the hash covers the source's listing (paths,
  labels, ETags or mtimes, sizes), the classes and the encoding settings, so
  a changed dataset or other settings get a new directory;
* ``done.json`` is written last: a derived dataset with it is reused as it
  is; one without it (an interrupted run) is finished, keeping the videos
  already written (each is written whole: a local rename, an S3 PUT).
* on S3 every file is created if absent (``s3.create_if_absent``, atomic),
  never replaced: the keys are content-addressed, so a video or list already
  there holds the same bytes and counts as written.  Of two data preps
  re-encoding the same dataset at once, each writes what the other has not;
  the first ``done.json`` stays, and the later run returns it.

Encoder: PyAV (``av`` on PyPI), whose wheel bundles FFmpeg with libx264, and
sets the GOP (``gop_size``, ``keyint``).  OpenCV's ``VideoWriter`` (already
installed) was the alternative: its wheel's FFmpeg has no H.264 encoder
(``avc1``/``H264``/``X264`` fail to open; only MPEG-4 part 2 ``mp4v``) and
its API cannot set the GOP.  Measured in ``benchmarks/reencode.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from video_kd.core.errors import UserError, one_line
from video_kd.core.progress import Progress
from video_kd.data import data_check
from video_kd.data.data_layout import SPLITS, VIDEO_DIR, DatasetSource
from video_kd.storage import s3, s3_fileio

log = logging.getLogger(__name__)

ENCODE_VERSION = 1  # bump when the same settings would encode differently
DERIVED_DIR = 'derived'
DONE_NAME = 'done.json'
_CHUNK = 4  # videos per pool task


class ReencodeError(UserError):
    """The derived dataset cannot be written (output unusable, a video fails to encode)."""


@dataclass(frozen=True)
class EncodeSettings:
    """What the derived videos are: part of their content address."""

    short_side: int = 256
    gop: int = 1
    crf: int = 23
    preset: str = 'veryfast'
    codec: str = 'libx264'
    version: int = ENCODE_VERSION

    def check(self) -> None:
        if self.short_side < 16 or self.short_side % 2:
            raise ReencodeError(f'short_side must be an even number >= 16, got {self.short_side}')
        if self.gop < 1:
            raise ReencodeError(f'gop must be >= 1 (frames between keyframes), got {self.gop}')
        if not 0 <= self.crf <= 51:
            raise ReencodeError(f'crf must be in [0, 51], got {self.crf}')


# --------------------------------------------------------------------------- one video
def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side``, aspect kept, both even."""

    def even(value: float) -> int:
        return max(2, round(value / 2) * 2)

    if width <= height:
        return short_side, even(height * short_side / width)
    return even(width * short_side / height), short_side


def encode_video_bytes(data: bytes, settings: EncodeSettings) -> tuple[bytes, int]:
    """Re-encode one video (any container FFmpeg reads) to MP4/H.264; (bytes, frame count)."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src:
        stream = src.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        width, height = scaled_size(
            stream.codec_context.width, stream.codec_context.height, settings.short_side
        )
        with av.open(out, 'w', format='mp4') as dst:
            enc = dst.add_stream(settings.codec, rate=rate)
            enc.width, enc.height, enc.pix_fmt = width, height, 'yuv420p'
            enc.gop_size = settings.gop
            enc.options = {
                'crf': str(settings.crf),
                'preset': settings.preset,
                'threads': '1',  # one process per core does the parallelism
                'x264-params': f'keyint={settings.gop}:min-keyint={settings.gop}:scenecut=0',
            }
            count = 0
            for frame in src.decode(stream):
                frame = frame.reformat(width, height, 'yuv420p')
                frame.pts, frame.time_base = count, 1 / rate
                dst.mux(enc.encode(frame))
                count += 1
            dst.mux(enc.encode(None))
    if not count:
        raise ValueError('no frame decoded')
    body = out.getvalue()
    _check_decord(body, count, (height, width, 3))
    return body, count


def _check_decord(body: bytes, count: int, shape: tuple[int, int, int]) -> None:
    """Training reads with decord: it must see every frame, at the size written.

    decord mis-shapes a few frame sizes whatever the codec (48x48 and 72x64
    come back with 4 channels): such a copy would train on garbage.
    """
    import decord

    reader = decord.VideoReader(io.BytesIO(body), num_threads=1)
    found = (len(reader), tuple(reader[0].shape))
    if found != (count, shape):
        raise ValueError(
            f'decord reads the re-encoded video as {found[0]} frames of {found[1]}, '
            f'not {count} of {shape}; try another short_side'
        )


def _read(uri: str) -> bytes:
    if uri.startswith('s3://'):
        return s3_fileio.get_object_bytes(uri)
    return Path(uri).read_bytes()


def _write(uri: str, body: bytes) -> bool:
    """Write one file whole (a reader never sees half of it); errors name the target.

    False when an S3 object is there already (written by an interrupted or a
    concurrent run: same key, same content): it is kept, never replaced.
    """
    if uri.startswith('s3://'):
        return s3.create_if_absent(uri, body)
    path = Path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f'.{path.name}.{os.getpid()}.partial')
        partial.write_bytes(body)
        os.replace(partial, path)
    except OSError as error:
        raise ReencodeError(f'cannot write {uri}: {error.strerror or error}') from error
    return True


def _encode_one(src: str, dst: str, settings: EncodeSettings) -> tuple[str, str | None, int]:
    """(src, None or why it failed, bytes written); write failures raise (the output is bad)."""
    try:
        data = _read(src)
        body, _ = encode_video_bytes(data, settings)
    except Exception as error:  # av.FFmpegError, S3Error, ValueError...
        return src, one_line(error), 0
    _write(dst, body)
    return src, None, len(body)


def _encode_chunk(args: tuple[list[tuple[str, str]], EncodeSettings]) -> list:
    pairs, settings = args
    return [_encode_one(src, dst, settings) for src, dst in pairs]


# --------------------------------------------------------------------------- the dataset
def join(root: str, *parts: str) -> str:
    """``root``/``parts``: an S3 URI or a local path."""
    if root.startswith('s3://'):
        return s3.join_uri(root, *parts)
    return str(Path(root, *parts))


def read_text(uri: str) -> str:
    """A small text file of a derived dataset (its lists)."""
    return _read(uri).decode()


def _check_output(uri: str) -> None:
    if '://' in uri and not uri.startswith('s3://'):
        raise ReencodeError(f'cannot write a derived dataset to {uri}: not s3:// nor a local path')


def _plan(
    source: DatasetSource,
) -> tuple[dict[str, list[tuple[str, str, str]]], list[data_check.ObjectInfo]]:
    """Per split: (source rel path, derived rel path, label); and the listed objects."""
    roots = {source.splits[split].videos_uri for split in SPLITS}
    listings = {root: data_check.list_videos(root) for root in sorted(roots)}
    plan: dict[str, list[tuple[str, str, str]]] = {}
    objects = {}
    for split in SPLITS:
        found = source.splits[split]
        rows = []
        for line in found.lines:
            rel, _, label = line.rpartition(' ')
            info = listings[found.videos_uri].get(rel)
            if info is None:
                raise ReencodeError(f'cannot re-encode {join(found.videos_uri, rel)}: not found')
            derived = rel if rel.lower().endswith('.mp4') else rel + '.mp4'
            if len(roots) > 1:  # separate train/val roots (MMAction2's): keep them apart
                derived = f'{split}/{derived}'
            rows.append((rel, derived, label))
            objects[info.uri] = info
        plan[split] = rows
    return plan, list(objects.values())


def content_hash(
    source: DatasetSource, objects: list[data_check.ObjectInfo], settings: EncodeSettings
) -> str:
    """What the derived dataset is made of: the listed objects, lists, classes, settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update(json.dumps(source.classes).encode())
    for split in SPLITS:
        digest.update(json.dumps([split, source.splits[split].lines]).encode())
    for info in sorted(objects, key=lambda o: o.uri):
        digest.update(f'{info.cache_key}\n'.encode())
    return digest.hexdigest()[:16]


def _done(uri: str) -> dict[str, Any] | None:
    marker = join(uri, DONE_NAME)
    try:
        if uri.startswith('s3://'):
            return s3.read_json(marker) if s3.exists(marker) else None
        return json.loads(Path(marker).read_text()) if Path(marker).is_file() else None
    except (s3.S3Error, OSError, ValueError):
        return None


def reencode_dataset(
    source: DatasetSource,
    out_uri: str | None = None,
    short_side: int = 256,
    gop: int = 1,
    crf: int = 23,
    preset: str = 'veryfast',
    processes: int | None = None,
) -> dict[str, Any]:
    """Write (or reuse) the re-encoded copy of ``source``'s listed videos; returns its summary.

    ``source`` should list only usable videos (``data_check.validate_source``'s
    clean lists).  The copy goes to ``<out_uri>/<hash>/`` (``out_uri`` default:
    ``<source root>/derived``); the summary (``uri``, ``hash``, ``reused``,
    counts, sizes, settings) is also its ``done.json``.  A video that fails to
    re-encode raises ``ReencodeError`` naming it, after the others are done.
    """
    settings = EncodeSettings(short_side, gop, crf, preset)
    settings.check()
    start = time.monotonic()
    base = (out_uri or join(source.root, DERIVED_DIR)).rstrip('/')
    _check_output(base)
    plan, objects = _plan(source)
    digest = content_hash(source, objects, settings)
    uri = join(base, digest)
    done = _done(uri)
    if done is not None:
        log.info('re-encoded dataset %s: complete, reused', uri)
        return {**done, 'reused': True}
    for split in SPLITS:  # small files first: an unwritable output fails before any encoding
        lines = [f'{derived} {label}' for _, derived, label in plan[split]]
        _write(join(uri, data_check.LIST_NAMES[split]), ('\n'.join(lines) + '\n').encode())
    _write(join(uri, data_check.CLASSES_NAME), ('\n'.join(source.classes) + '\n').encode())
    videos_uri = join(uri, VIDEO_DIR)  # the derived dataset is in our own layout
    present = data_check.list_videos(videos_uri)  # what an interrupted run already wrote
    pairs = {}
    for split in SPLITS:
        for rel, derived, _ in plan[split]:
            if derived not in present:
                pairs[join(source.splits[split].videos_uri, rel)] = join(videos_uri, derived)
    total = sum(len(rows) for rows in plan.values())
    log.info(
        're-encoding %d videos (short side %d, keyframe every %d frames) -> %s; %d already there',
        len(pairs),
        short_side,
        gop,
        uri,
        total - len(pairs),
    )
    failed, written = _encode_all(sorted(pairs.items()), settings, processes)
    if failed:
        src, reason = failed[0]
        raise ReencodeError(
            f'{len(failed)} of {len(pairs)} videos failed to re-encode; first: {src}: {reason}'
        )
    summary = {
        'uri': uri,
        'hash': digest,
        'source': source.root,
        'settings': asdict(settings),
        'videos_uri': videos_uri,
        'num_videos': total,
        'encoded': len(pairs),
        'bytes_written': written,
        'seconds': round(time.monotonic() - start, 2),
    }
    marker = join(uri, DONE_NAME)
    if not _write(marker, json.dumps(summary, indent=2).encode()):  # last: the marker
        log.info('re-encoded dataset %s: completed by another run meanwhile, reused', uri)
        return {**s3.read_json(marker), 'reused': True}
    return {**summary, 'reused': False}


def _encode_all(
    pairs: list[tuple[str, str]], settings: EncodeSettings, processes: int | None
) -> tuple[list[tuple[str, str]], int]:
    """Encode in a pool of processes (CPU-bound), one video in memory per process."""
    failed: list[tuple[str, str]] = []
    written = 0
    if not pairs:
        return failed, written
    chunks = [(pairs[i : i + _CHUNK], settings) for i in range(0, len(pairs), _CHUNK)]
    progress = Progress(len(pairs), 're-encoded', 'videos', log)
    processes = max(1, min(processes or data_check.usable_cpus(), len(chunks)))
    with data_check._pool_context().Pool(processes) as pool:
        for done in pool.imap_unordered(_encode_chunk, chunks):
            for src, reason, size in done:
                written += size
                if reason:
                    failed.append((src, reason))
            progress.advance(len(done))
    return sorted(failed), written
