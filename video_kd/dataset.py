"""Kinetics-400-style video datasets: a generator of small real ones, and a validator.

Layout (what MMAction2's ``VideoDataset`` reads)::

    <root>/videos/<class_name>/<clip>.mp4
    <root>/train_list.txt      # "<class_name>/<clip>.mp4 <label>" per line
    <root>/val_list.txt
    <root>/classes.txt         # class name of label i on line i

The generated dataset is made of real encoded MP4 files: a bright shape moves
over a cluttered, noisy background, and the class is *how* it moves (up, down,
growing, shrinking, circling).  Every class is invariant to horizontal flips
(the usual video augmentation) and a single frame does not tell the class,
so a model has to use time, as on Kinetics.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from video_kd.errors import UserError

logger = logging.getLogger(__name__)

TRAIN_LIST = 'train_list.txt'
VAL_LIST = 'val_list.txt'
CLASSES_FILE = 'classes.txt'
VIDEO_DIR = 'videos'
MOTIONS = ('move_up', 'move_down', 'grow', 'shrink', 'circle')
# what generate_dataset writes, per layout (video_kd.data_layout reads both)
LAYOUT_FILES = {
    'video-kd': dict(
        train_videos=VIDEO_DIR,
        val_videos=VIDEO_DIR,
        train_list=TRAIN_LIST,
        val_list=VAL_LIST,
        classes=CLASSES_FILE,
    ),
    'mmaction2': dict(
        train_videos='videos_train',
        val_videos='videos_val',
        train_list='kinetics400_train_list_videos.txt',
        val_list='kinetics400_val_list_videos.txt',
        classes='label_map_k400.txt',
    ),
}


class DatasetError(UserError):
    """The dataset cannot be used at all (nothing valid, missing lists...)."""


# --------------------------------------------------------------------------- generation
def _motion_params(motion: str, t: float, size: int, rng_state: dict) -> tuple[float, float, float]:
    """Centre (x, y) and radius of the shape at time t in [0, 1]."""
    x0, y0, r0, speed = (rng_state[k] for k in ('x0', 'y0', 'r0', 'speed'))
    travel = speed * size * 0.5
    if motion == 'move_up':
        return x0, y0 + travel * (0.5 - t), r0
    if motion == 'move_down':
        return x0, y0 - travel * (0.5 - t), r0
    if motion == 'grow':
        return x0, y0, r0 * (0.6 + 1.2 * t)
    if motion == 'shrink':
        return x0, y0, r0 * (1.8 - 1.2 * t)
    if motion == 'circle':
        angle = 2 * math.pi * t * rng_state['turns']
        radius = size * 0.18
        return x0 + radius * math.cos(angle), y0 + radius * math.sin(angle), r0
    raise ValueError(f'unknown motion {motion!r}')


def _render_clip(
    motion: str, num_frames: int, size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    import cv2

    state = dict(
        x0=rng.uniform(0.35, 0.65) * size,
        y0=rng.uniform(0.35, 0.65) * size,
        r0=rng.uniform(0.07, 0.12) * size,
        speed=rng.uniform(0.6, 1.0),
        turns=rng.uniform(0.7, 1.0),
    )
    background = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    for _ in range(3):  # static clutter: distractor shapes that never move
        cv2.rectangle(
            background,
            tuple(int(v) for v in rng.integers(0, size, 2)),
            tuple(int(v) for v in rng.integers(0, size, 2)),
            tuple(int(v) for v in rng.integers(60, 200, 3)),
            -1,
        )
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    frames = []
    for i in range(num_frames):
        x, y, r = _motion_params(motion, i / max(num_frames - 1, 1), size, state)
        frame = background.copy()
        cv2.circle(frame, (int(x), int(y)), max(int(r), 2), colour, -1)
        noise = rng.integers(-25, 26, size=frame.shape)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> None:
    """Encode frames (HxWx3 BGR uint8) as an MPEG-4 file."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot open a video writer for {path}')
    for frame in frames:
        writer.write(frame)
    writer.release()


def _check_size_round_trips(root: Path, size: int, num_frames: int) -> None:
    """Some sizes (48x48 seen) encode into files decord mis-decodes: refuse them early."""
    probe = root / '.size_probe.mp4'
    frames = [np.zeros((size, size, 3), np.uint8)] * max(num_frames, 2)
    write_video(probe, frames)
    try:
        reason = check_video(probe, min_frames=len(frames))
    finally:
        probe.unlink()
    if reason:
        raise ValueError(
            f'clips of {size}x{size} do not decode back ({reason}); '
            'use another size, e.g. 32, 64 or 96'
        )


def generate_dataset(
    root: str | Path,
    num_classes: int = 5,
    train_per_class: int = 20,
    val_per_class: int = 8,
    num_frames: int = 16,
    size: int = 64,
    seed: int = 0,
    layout: str = 'video-kd',
) -> Path:
    """Write a small real action dataset in the Kinetics-400 layout; returns root.

    ``layout='mmaction2'`` writes it as MMAction2's Kinetics tools do:
    ``videos_train/``, ``videos_val/``, ``kinetics400_{train,val}_list_videos.txt``
    and the label map ``label_map_k400.txt`` (see ``video_kd.data_layout``).
    """
    if layout not in LAYOUT_FILES:
        raise ValueError(f'layout must be one of {", ".join(LAYOUT_FILES)}, got {layout!r}')
    files = LAYOUT_FILES[layout]
    if not 2 <= num_classes <= len(MOTIONS):
        raise ValueError(f'num_classes must be in [2, {len(MOTIONS)}], got {num_classes}')
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = MOTIONS[:num_classes]
    _check_size_round_trips(root, size, num_frames)
    lists = {'train': [], 'val': []}
    for label, motion in enumerate(classes):
        for split, count in (('train', train_per_class), ('val', val_per_class)):
            for index in range(count):
                rel = f'{motion}/{split}_{index:04d}.mp4'
                video = root / files[f'{split}_videos'] / rel
                write_video(video, _render_clip(motion, num_frames, size, rng))
                lists[split].append(f'{rel} {label}')
    for split, lines in lists.items():
        (root / files[f'{split}_list']).write_text('\n'.join(lines) + '\n')
    (root / files['classes']).write_text('\n'.join(classes) + '\n')
    logger.info(
        'generated %d train + %d val videos of %d classes in %s (%s layout)',
        len(lists['train']),
        len(lists['val']),
        num_classes,
        root,
        layout,
    )
    return root


# --------------------------------------------------------------------------- validation
@dataclass
class Rejected:
    path: str
    label: str
    reason: str


@dataclass
class SplitReport:
    list_file: str
    total: int = 0
    valid: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def read_classes(root: str | Path) -> list[str]:
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f'{path} is missing: one class name per line, line i = label i')
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DatasetError(f'{path} lists no classes')
    return classes


def check_video(path: Path, min_frames: int) -> str | None:
    """None when the video decodes with enough frames, else the reason it is unusable."""
    import decord

    if not path.is_file():
        return 'file not found'
    if path.stat().st_size == 0:
        return 'empty file'
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        count = len(reader)
        if count < min_frames:
            return f'only {count} frames, need {min_frames}'
        reader.get_batch([0, count - 1])  # decode both ends: catches truncated files
    except Exception as error:  # decord raises bare DECORDError/RuntimeError
        return f'cannot decode: {str(error).splitlines()[0][:200]}'
    return None


def _check_line(line: str, video_dir: Path, num_classes: int, min_frames: int) -> Rejected | None:
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2:
        return Rejected(line, '', 'malformed line: expected "<path> <label>"')
    rel, label = parts
    if not label.isdigit() or int(label) >= num_classes:
        return Rejected(rel, label, f'unknown label (classes are 0..{num_classes - 1})')
    reason = check_video(video_dir / rel, min_frames)
    return Rejected(rel, label, reason) if reason else None


def validate_split(
    root: Path, list_name: str, num_classes: int, min_frames: int, out_dir: Path
) -> SplitReport:
    """Check every entry of a list file; write the valid lines to out_dir/list_name."""
    list_path = root / list_name
    if not list_path.is_file():
        raise DatasetError(f'list file {list_path} is missing')
    report = SplitReport(list_file=list_name)
    valid_lines = []
    lines = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    for index, line in enumerate(lines, 1):
        report.total += 1
        rejected = _check_line(line, root / VIDEO_DIR, num_classes, min_frames)
        if rejected:
            report.rejected.append(rejected)
            logger.warning('rejected %s: %s', rejected.path, rejected.reason)
        else:
            valid_lines.append(line)
        if index % 200 == 0:
            logger.info('%s: checked %d/%d videos', list_name, index, len(lines))
    report.valid = len(valid_lines)
    if not valid_lines:
        raise DatasetError(f'{list_path}: no usable video among {report.total} entries')
    (out_dir / list_name).write_text('\n'.join(valid_lines) + '\n')
    return report


def validate_dataset(
    root: str | Path, out_dir: str | Path | None = None, min_frames: int = 8
) -> dict:
    """Validate train and val lists; write a complete, clean dataset root to out_dir.

    out_dir (default <root>/validated) gets the cleaned list files, classes.txt,
    report.json and a ``videos`` link to the original videos, so it can be used
    as a data root.  The user's own list files are never rewritten.  Bad videos
    are reported, not fatal; only an unusable dataset raises DatasetError.
    """
    root = Path(root).resolve()
    out_dir = Path(out_dir or root / 'validated').resolve()
    if out_dir == root:
        raise DatasetError(
            f'out_dir must differ from the dataset root {root}: '
            'validation never rewrites the original list files'
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = read_classes(root)
    splits = [
        validate_split(root, name, len(classes), min_frames, out_dir)
        for name in (TRAIN_LIST, VAL_LIST)
    ]
    (out_dir / CLASSES_FILE).write_text('\n'.join(classes) + '\n')
    if not (out_dir / VIDEO_DIR).exists():
        (out_dir / VIDEO_DIR).symlink_to(root / VIDEO_DIR, target_is_directory=True)
    report = dict(
        root=str(root),
        classes=classes,
        min_frames=min_frames,
        splits=[asdict(split) for split in splits],
        rejected_total=sum(len(split.rejected) for split in splits),
    )
    (out_dir / 'report.json').write_text(json.dumps(report, indent=2))
    logger.info(
        'dataset %s: %s',
        root,
        ', '.join(f'{s.list_file} {s.valid}/{s.total} valid' for s in splits),
    )
    return report
