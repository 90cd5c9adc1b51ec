"""Where a dataset's lists, videos and class names are: ours, or MMAction2's Kinetics tree.

Two layouts are recognised, on S3 (``s3://bucket/prefix``) and on a mounted
volume (a local path) alike, and read as they are: nothing is copied or
renamed in the user's storage.

* video-kd's own: ``videos/``, ``train_list.txt``, ``val_list.txt``, ``classes.txt``.
* MMAction2's, as ``tools/data/kinetics`` prepares Kinetics-400:
  ``videos_train/``, ``videos_val/``, ``kinetics400_train_list_videos.txt``,
  ``kinetics400_val_list_videos.txt`` (``<class>/<file>.mp4 <label>`` lines),
  class names from a label map (``label_map_k400.txt``, one per line) or the
  official CSV annotations (``annotations/kinetics_{train,val}.csv``:
  ``label,youtube_id,time_start,time_end,split``).  Without list files the
  CSVs give the lists too: ``<class>/<youtube_id>_<start:06d>_<end:06d>.mp4``,
  labels in sorted class order (MMAction2's ``build_file_list.py`` rules;
  spaces in class directories become ``_`` as its download script makes them).
* The flat Kinetics copy (the CVDF download MMAction2's Kinetics README points
  to): ``train/``, ``val/`` with ``<youtube_id>_<start:06d>_<end:06d>.mp4``
  directly inside, no class folders, and ``annotations/{train,val}.csv``.

Where the CSVs give the lists, the video paths are probed on the first rows:
class folders or flat, under ``videos_<split>/`` or ``<split>/``; the first
that holds a listed video wins (on S3 told from one listing of each directory where
it can be, not a request per row: ``_video_exists``).

Any name can be overridden (``LayoutNames``), e.g. from a URI query:
``s3://bucket/k400?train_list=train.txt&train_videos=train_256``.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from video_kd.core.errors import UserError
from video_kd.storage import s3, s3_fileio

log = logging.getLogger(__name__)

SPLITS = ('train', 'val')


class LayoutError(UserError):
    """The dataset's files are not where either layout puts them."""


@dataclass(frozen=True)
class LayoutNames:
    """File and directory names inside a dataset root (relative to it)."""

    train_list: str
    val_list: str
    train_videos: str
    val_videos: str
    label_maps: tuple[str, ...] = ()
    annotations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flat: bool = False  # CSV rows name videos without a ``<class>/`` folder (the CVDF copy)
    # class folders named as labelled (MMAction2's download.py) rather than with ``_`` for
    # spaces (after its rename_classnames.sh); probed, see ``_probe_clip_paths``
    spaced_folders: bool = False


# video-kd's own layout, the one place its names are written (dataset, data_check... import them)
TRAIN_LIST = 'train_list.txt'
VAL_LIST = 'val_list.txt'
CLASSES_FILE = 'classes.txt'
VIDEO_DIR = 'videos'
OWN = LayoutNames(TRAIN_LIST, VAL_LIST, VIDEO_DIR, VIDEO_DIR, (CLASSES_FILE,))
MMACTION2 = LayoutNames(
    'kinetics400_train_list_videos.txt',
    'kinetics400_val_list_videos.txt',
    'videos_train',
    'videos_val',
    ('label_map_k400.txt', 'label_map.txt', 'annotations/label_map_k400.txt', 'classes.txt'),
    {  # MMAction2's download_annotations.sh names, then the CVDF copy's
        'train': ('annotations/kinetics_train.csv', 'annotations/train.csv'),
        'val': ('annotations/kinetics_val.csv', 'annotations/val.csv', 'annotations/validate.csv'),
    },
)
# the flat copy (CVDF): ``train/<youtube_id>_<start:06d>_<end:06d>.mp4``, no class folders
FLAT = replace(MMACTION2, train_videos='train', val_videos='val', flat=True)
LAYOUTS = {'video-kd': OWN, 'mmaction2': MMACTION2, 'kinetics-flat': FLAT}
OVERRIDABLE = ('train_list', 'val_list', 'train_videos', 'val_videos', 'label_map', 'flat')
VIDEO_SUFFIXES = ('.mp4', '.webm', '.mkv', '.avi', '.mov')
PROBED_ROWS = 20  # rows tried when probing where CSV-listed videos are (~8% of K400 is missing)


@dataclass
class SplitSource:
    """One split as found: where its videos are and its ``<path> <label>`` lines."""

    videos_uri: str
    lines: list[str]
    list_uri: str  # the list file it came from (or the CSV)
    path_pattern: str = ''  # how CSV rows became paths (for error lines); '' for list files


@dataclass
class DatasetSource:
    """A dataset as found in the user's storage; nothing in it is rewritten."""

    root: str
    layout: str  # 'video-kd' or 'mmaction2'
    classes: list[str]
    classes_from: str
    splits: dict[str, SplitSource]

    @property
    def is_s3(self) -> bool:
        return self.root.startswith('s3://')


# --------------------------------------------------------------------------- storage
def _join(root: str, name: str) -> str:
    return s3.join_uri(root, name) if root.startswith('s3://') else str(Path(root) / name)


def _exists(uri: str) -> bool:
    """Whether a file is there, from one listing of its directory (not a HEAD per name:
    finding the layout probes ~10 names, ~10 round trips to a remote store)."""
    directory, _, name = uri.rstrip('/').rpartition('/')
    return name in _names_in(directory)


@functools.lru_cache(maxsize=64)  # cleared by resolve(): a listing is valid for one call
def _names_in(directory: str) -> frozenset[str]:
    """The file names directly inside a directory or S3 prefix (empty when there is none)."""
    if not directory.startswith('s3://'):
        path = Path(directory)
        return (
            frozenset(p.name for p in path.iterdir() if p.is_file())
            if path.is_dir()
            else frozenset()
        )
    return frozenset(name for name, _, _ in s3_fileio.list_objects(directory, recursive=False))


def _read_text(uri: str) -> str:
    data = s3.read_bytes(uri) if uri.startswith('s3://') else Path(uri).read_bytes()
    return data.decode('utf-8-sig')


def _first_existing(root: str, names: tuple[str, ...]) -> str | None:
    return next((_join(root, n) for n in names if _exists(_join(root, n))), None)


# --------------------------------------------------------------------------- parsing
def split_uri_options(uri: str) -> tuple[str, dict[str, str]]:
    """``s3://b/k400?train_list=x.txt`` -> (``s3://b/k400``, {'train_list': 'x.txt'})."""
    base, _, query = uri.partition('?')
    options = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
    unknown = sorted(set(options) - set(OVERRIDABLE))
    if unknown:
        raise LayoutError(
            f'unknown dataset option(s) {", ".join(unknown)} in {uri!r}; '
            f'known: {", ".join(OVERRIDABLE)}'
        )
    return base.rstrip('/'), options


def _apply(names: LayoutNames, options: dict[str, str]) -> LayoutNames:
    changes: dict[str, Any] = {
        k: v for k, v in options.items() if k in {f.name for f in fields(LayoutNames)}
    }
    if 'label_map' in options:
        changes['label_maps'] = (options['label_map'],)
    if 'flat' in options:
        changes['flat'] = _flag('flat', options['flat'])
    return replace(names, **changes)


def _flag(name: str, value: str) -> bool:
    if value.lower() not in ('1', 'true', 'yes', '0', 'false', 'no'):
        raise LayoutError(f'dataset option {name}={value!r}: expected true or false')
    return value.lower() in ('1', 'true', 'yes')


def list_lines(text: str) -> list[str]:
    """The non-empty lines of a list file, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def unique_lines(lines: list[str], list_uri: str) -> list[str]:
    """``lines`` without repeats, first occurrences in order, with one warning naming how
    many were dropped and the first.

    Dropped, not refused: lists are often put together from parts (shards of a download,
    ``cat`` of two files, annotation CSVs with repeated rows), and a repeated line means
    nothing to MMAction2's one-label datasets but an accidental double weight in training
    and a video counted twice in evaluation.  Refusing would stop a Kinetics-size run for
    a harmless slip; keeping them (what MMAction2 does) silently skews both.  Repeats
    meant as oversampling belong in the sampler, not the list.  One video under two
    labels is not a repeat: both lines stay (each is judged on its own, an unknown label
    rejected) and a warning names the first such video.
    """
    seen: dict[str, str] = {}  # video path -> its first line
    kept, dropped, relabelled = [], [], []
    for line in lines:
        parts = line.rsplit(maxsplit=1)
        path = parts[0] if len(parts) == 2 else line  # a malformed line: rejected later
        first = seen.get(path)
        if first is None:
            seen[path] = line
            kept.append(line)
        elif first.split() == line.split():  # the same entry (spacing aside)
            dropped.append(line)
        else:
            relabelled.append(line)
            kept.append(line)
    if dropped:
        log.warning(
            '%s: %d repeated line(s) dropped (first: %r); each video is used once',
            list_uri,
            len(dropped),
            dropped[0],
        )
    if relabelled:
        log.warning(
            '%s: %d video(s) listed again with another label (first: %r, after %r)',
            list_uri,
            len(relabelled),
            relabelled[0],
            seen[relabelled[0].rsplit(maxsplit=1)[0]],
        )
    return kept


def check_class_names(classes: list[str], where: str) -> list[str]:
    """``classes`` if no name is repeated: label i is the i-th name, and two labels with
    one name cannot be told apart in the metrics, the model card or a deployed model."""
    first_line: dict[str, int] = {}
    for number, name in enumerate(classes, 1):
        if name in first_line:
            raise LayoutError(
                f'{where}: class name {name!r} is on lines {first_line[name]} and {number}; '
                'each class needs its own name'
            )
        first_line[name] = number
    return classes


def csv_rows(text: str, uri: str) -> list[dict[str, str]]:
    """Rows of a Kinetics CSV (``label,youtube_id,time_start,time_end,split``)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {'label', 'youtube_id', 'time_start', 'time_end'} - set(reader.fieldnames or [])
    if missing:
        raise LayoutError(f'{uri}: not a Kinetics annotation CSV (no {", ".join(sorted(missing))})')
    return list(reader)


CLIP_PATTERN = '<youtube_id>_<time_start:06d>_<time_end:06d>.mp4'


def clip_path(row: dict[str, str], names: LayoutNames = MMACTION2) -> str:
    """The video path of a CSV row: ``<class>/<clip>`` as MMAction2's Kinetics tools
    write it (spaces in the folder become ``_`` after its rename_classnames.sh), or the
    clip alone in a flat copy."""
    start, end = int(float(row['time_start'])), int(float(row['time_end']))
    clip = f'{row["youtube_id"]}_{start:06d}_{end:06d}.mp4'
    if names.flat:
        return clip
    folder = row['label'] if names.spaced_folders else row['label'].replace(' ', '_')
    return f'{folder}/{clip}'


def path_pattern(names: LayoutNames, split: str) -> str:
    """Where ``names`` looks for a CSV row's video, for error lines."""
    folder = '' if names.flat else '<label>/' if names.spaced_folders else '<label, _ for spaces>/'
    return f'{getattr(names, f"{split}_videos")}/{folder}{CLIP_PATTERN}'


def classes_from_lines(lines: list[str]) -> list[str]:
    """Class names from ``<class>/<file> <label>`` lines (the directory of each label)."""
    by_label: dict[int, str] = {}
    for line in lines:
        path, _, label = line.rpartition(' ')
        if label.isdigit() and '/' in path:
            by_label.setdefault(int(label), path.split('/', 1)[0])
    if not by_label or sorted(by_label) != list(range(max(by_label) + 1)):
        return []
    return [by_label[i] for i in range(len(by_label))]


# --------------------------------------------------------------------------- resolution
def detect_layout(root: str) -> tuple[str, LayoutNames]:
    """Which layout ``root`` holds: ours (``train_list.txt``), MMAction2's (its list files,
    or the Kinetics CSVs: then ``resolve`` probes class folders vs the flat copy)."""
    if _exists(_join(root, OWN.train_list)):
        return 'video-kd', OWN
    if _exists(_join(root, MMACTION2.train_list)):
        return 'mmaction2', MMACTION2
    if _first_existing(root, MMACTION2.annotations['train']):
        return 'mmaction2', MMACTION2
    raise LayoutError(
        f'dataset {root}: no layout matches: expected {OWN.train_list} (video-kd: videos/, '
        f'{OWN.train_list}, {OWN.val_list}, {CLASSES_FILE}), {MMACTION2.train_list} '
        f'(MMAction2: {MMACTION2.train_videos}/<class>/...), or {FLAT.annotations["train"][0]} '
        f'(Kinetics CSVs, class folders or flat); {describe_root(root)}'
    )


def _peek(directory: str) -> tuple[list[str], list[str]]:
    """``(folders, files)`` directly inside a directory or S3 prefix (a first look, bounded)."""
    if directory.startswith('s3://'):
        return s3_fileio.peek(directory)
    path = Path(directory)
    if not path.is_dir():
        return [], []
    entries = sorted(path.iterdir())[:100]
    return [p.name for p in entries if p.is_dir()], [p.name for p in entries if p.is_file()]


def describe_root(root: str) -> str:
    """What is at ``root``, and the layout options that would read it: for error lines."""
    folders, files = _peek(root)
    if not folders and not files:
        return 'found: nothing (an empty or missing directory)'
    shown = [f'{name}/' for name in folders[:8]] + files[:8]
    more = len(folders) + len(files) - len(shown)
    found = f'found: {", ".join(shown)}' + (f' and {more} more' if more else '')
    return f'{found}{_suggestion(root, folders)}'


def _suggestion(root: str, folders: list[str]) -> str:
    """A URI query that matches the split folders found, if any look like videos."""
    for train, val in (('videos_train', 'videos_val'), ('train', 'val')):
        if train not in folders:
            continue
        inner_folders, inner_files = _peek(_join(root, train))
        flat = any(name.endswith(VIDEO_SUFFIXES) for name in inner_files)
        if flat or inner_folders:
            kind = 'videos directly inside (flat)' if flat else 'class folders'
            return (
                f'; {train}/ holds {kind}: try ?train_videos={train}&val_videos={val}'
                f'&flat={str(flat).lower()}'
            )
    return ''


def resolve(uri: str, names: LayoutNames | None = None) -> DatasetSource:
    """Find a dataset's splits and classes at ``uri`` (``s3://`` or a local directory)."""
    _names_in.cache_clear()
    _page.cache_clear()
    root, options = split_uri_options(uri)
    if not root.startswith('s3://'):
        if not Path(root).is_dir():
            raise LayoutError(f'dataset {root}: no such directory')
        root = str(Path(root).resolve())
    layout = 'custom'
    if names is None:
        try:
            layout, names = detect_layout(root)
        except LayoutError:
            if 'train_list' not in options:
                raise
            names = OWN  # every name the user did not give defaults to ours
    names = _apply(names, options)
    rows = _annotation_rows(root, names)
    if 'train' in rows and not _exists(_join(root, names.train_list)):
        layout, names = _probe_clip_paths(root, layout, names, rows['train'], options)
    classes, classes_from = _declared_classes(root, names, rows)
    index = {name: i for i, name in enumerate(classes)}
    splits = {split: _split(root, names, split, rows.get(split), index) for split in SPLITS}
    if not classes:
        classes = classes_from_lines(splits['train'].lines)
        classes_from = f'directories of {splits["train"].list_uri}'
    if not classes:
        raise LayoutError(
            f'dataset {root}: no class names: expected one of {", ".join(names.label_maps)} '
            '(one class per line, line i = label i) or the Kinetics annotation CSVs'
        )
    check_class_names(classes, classes_from)
    for split in splits.values():
        _check_class_list_covers(split, classes, classes_from)
    return DatasetSource(root, layout, classes, classes_from, splits)


def _check_class_list_covers(split: SplitSource, classes: list[str], classes_from: str) -> None:
    """Stop when the class list is short: the list uses label ``len(classes)``, the first
    label without a name (a stray label far beyond it is one bad line, rejected by data
    check; a whole missing class would be thousands, and a model one output short)."""
    used = {int(label) for _, label in (line.rpartition(' ')[::2] for line in split.lines)
            if label.isdigit()}  # fmt: skip
    if len(classes) in used:
        raise LayoutError(
            f'{split.list_uri} uses labels up to {max(used)} but {classes_from} names '
            f'{len(classes)} classes (0..{len(classes) - 1}): every label needs a name'
        )


def _probe_clip_paths(
    root: str,
    layout: str,
    names: LayoutNames,
    rows: list[dict[str, str]],
    options: dict[str, str],
) -> tuple[str, LayoutNames]:
    """Where the CSV rows' videos are: class folders (``_`` for spaces, or as labelled)
    or flat, under ``videos_<split>/`` or ``<split>/`` (names the user gave are kept);
    the first candidate holding one of the first rows' videos wins.  Nothing found:
    ``names`` as they are (data check then says what it looked for)."""
    roots = [(names.train_videos, names.val_videos)]
    if 'train_videos' not in options:
        roots = [(n.train_videos, n.val_videos) for n in (names, MMACTION2, FLAT)]
        roots = list(dict.fromkeys(roots))
    styles = [(False, False), (False, True)]  # (flat, spaced_folders): class folders first
    if 'flat' not in options:
        styles.insert(0 if names.flat else len(styles), (True, False))
    elif names.flat:
        styles = [(True, False)]
    candidates = [
        replace(names, train_videos=train, val_videos=val, flat=flat, spaced_folders=spaced)
        for train, val in roots
        for flat, spaced in styles
    ]
    for row in rows[:PROBED_ROWS]:
        for candidate in candidates:
            video = _join(_join(root, candidate.train_videos), clip_path(row, candidate))
            if _video_exists(root, video):
                found = 'kinetics-flat' if candidate.flat else 'mmaction2'
                return (layout if layout == 'custom' else found), candidate
    return layout, names


def _video_exists(root: str, uri: str) -> bool:
    """Whether the file ``uri`` under ``root`` is there.  On S3, from one listing page of
    each directory on its way down from ``root`` (cached for this ``resolve``) wherever that
    page is the whole directory: a videos root or class folder that is not there rules out
    every row it would hold with no request per row (the probe's 20 rows x 3 roots x 3
    styles were ~180 HEADs when nothing matched).  A HEAD only where a directory is larger
    than a page (the flat copy's 240k clips)."""
    if not uri.startswith('s3://'):
        return Path(uri).is_file()
    *folders, name = uri[len(root) :].strip('/').split('/')
    if not name or '' in folders:  # an odd key ('a//b'): ask the store
        return s3.exists(uri)
    directory = root
    for folder in folders:
        inside, _, complete = _page(directory)
        if complete and folder not in inside:
            return False
        directory = s3.join_uri(directory, folder)
    _, files, complete = _page(directory)
    return name in files if complete else s3.exists(uri)


LISTING_PAGE = 1000  # entries per listing request (S3's most): K400's 400 class folders fit


@functools.lru_cache(maxsize=256)  # cleared by resolve(), as _names_in
def _page(directory: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """``(folders, files, complete)`` directly inside an S3 directory: one listing request."""
    folders, files, complete = s3_fileio.list_page(directory, LISTING_PAGE)
    return frozenset(folders), frozenset(files), complete


def _annotation_rows(root: str, names: LayoutNames) -> dict[str, list[dict[str, str]]]:
    rows = {}
    for split, candidates in names.annotations.items():
        found = _first_existing(root, candidates)
        if found:
            rows[split] = csv_rows(_read_text(found), found)
    return rows


def _declared_classes(
    root: str, names: LayoutNames, rows: dict[str, list[dict[str, str]]]
) -> tuple[list[str], str]:
    """Classes from a label map, else the CSVs' labels sorted; ([], '') when neither."""
    label_map = _first_existing(root, names.label_maps)
    if label_map:
        classes = list_lines(_read_text(label_map))
        if classes:
            return classes, label_map
    labels = {row.get('label') or '' for split_rows in rows.values() for row in split_rows}
    labels.discard('')
    return sorted(labels), 'annotations CSV' if labels else ''


def _split(
    root: str,
    names: LayoutNames,
    split: str,
    rows: list[dict[str, str]] | None,
    class_index: dict[str, int],
) -> SplitSource:
    list_uri = _join(root, getattr(names, f'{split}_list'))
    videos_uri = _join(root, getattr(names, f'{split}_videos'))
    if _exists(list_uri):
        lines = unique_lines(list_lines(_read_text(list_uri)), list_uri)
        return SplitSource(videos_uri, lines, list_uri)
    if rows is not None:  # the official CSVs stand in for the list files
        csv_uri = _first_existing(root, names.annotations[split]) or ''
        rows = [row for row in rows if row.get('label')]  # unlabelled rows (a test split)
        unknown = sorted({row['label'] for row in rows} - set(class_index))
        if unknown:
            raise LayoutError(
                f'{csv_uri}: label {unknown[0]!r} is not in the class list '
                f'({len(unknown)} such label(s)); the label map must name every label used'
            )
        lines = [f'{clip_path(row, names)} {class_index[row["label"]]}' for row in rows]
        pattern = path_pattern(names, split)
        return SplitSource(videos_uri, unique_lines(lines, csv_uri), csv_uri, pattern)
    raise LayoutError(f'dataset {root}: list file {list_uri} is missing')
