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

import logging
import math
from pathlib import Path
from typing import TypedDict

import numpy as np

from video_kd.core.checks import InvalidInputError, check_range
from video_kd.core.errors import UserError
from video_kd.data import data_check, data_layout
from video_kd.data.data_check import check_video_bytes
from video_kd.data.data_layout import (  # noqa: F401  (TRAIN_LIST, VAL_LIST: re-exported)
    CLASSES_FILE,
    TRAIN_LIST,
    VAL_LIST,
    VIDEO_DIR,
)

logger = logging.getLogger(__name__)

MOTIONS = ('move_up', 'move_down', 'grow', 'shrink', 'circle')
# generate_dataset's numeric options and their ranges (also the keys of ``generate://?...``)
GENERATOR_RANGES = {
    'num_classes': (2, len(MOTIONS)),
    'train_per_class': (1, 10_000),
    'val_per_class': (1, 10_000),
    'num_frames': (2, 1024),
    'size': (16, 1024),
    'seed': (0, 2**32 - 1),
}


class GeneratorOptions(TypedDict, total=False):
    """generate_dataset's numeric options, as keyword arguments (GENERATOR_RANGES' keys)."""

    num_classes: int
    train_per_class: int
    val_per_class: int
    num_frames: int
    size: int
    seed: int


# what generate_dataset writes, per layout (video_kd.data.data_layout reads both)
LAYOUT_FILES = {
    layout: dict(
        train_videos=names.train_videos,
        val_videos=names.val_videos,
        train_list=names.train_list,
        val_list=names.val_list,
        classes=names.label_maps[0],
    )
    for layout, names in (('video-kd', data_layout.OWN), ('mmaction2', data_layout.MMACTION2))
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
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*'mp4v'), fps, (width, height))
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
        reason = check_video_bytes(probe.read_bytes(), min_frames=len(frames))
    finally:
        probe.unlink()
    if reason:
        raise InvalidInputError(
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
    and the label map ``label_map_k400.txt`` (see ``video_kd.data.data_layout``).
    """
    if layout not in LAYOUT_FILES:
        raise InvalidInputError(f'layout must be one of {", ".join(LAYOUT_FILES)}, got {layout!r}')
    files = LAYOUT_FILES[layout]
    given = dict(num_classes=num_classes, train_per_class=train_per_class,
                 val_per_class=val_per_class, num_frames=num_frames, size=size, seed=seed)  # fmt: skip
    for name, value in given.items():
        check_range(f'generator option {name}', value, *GENERATOR_RANGES[name])
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = MOTIONS[:num_classes]
    _check_size_round_trips(root, size, num_frames)
    lists: dict[str, list[str]] = {'train': [], 'val': []}
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
def read_classes(root: str | Path) -> list[str]:
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f'{path} is missing: one class name per line, line i = label i')
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DatasetError(f'{path} lists no classes')
    return data_layout.check_class_names(classes, str(path))


def validate_dataset(
    root: str | Path, out_dir: str | Path | None = None, min_frames: int = 8
) -> dict:
    """Validate train and val lists; write a complete, clean dataset root to out_dir.

    The checks are data prep's (``video_kd.data.data_check.validate_source``, one
    implementation): out_dir (default <root>/validated) gets the cleaned list
    files, classes.txt, report.json, and here also a ``videos`` link to the
    original videos, so it can be used as a data root.  The user's own list
    files are never rewritten.  Bad videos are reported, not fatal; a split
    without a usable video raises ``data_check.DataCheckError``.
    """
    root = Path(root).resolve()
    out_dir = Path(out_dir or root / 'validated').resolve()
    if out_dir == root:
        raise DatasetError(
            f'out_dir must differ from the dataset root {root}: '
            'validation never rewrites the original list files'
        )
    source = data_layout.resolve(str(root), data_layout.OWN)
    report = data_check.validate_source(source, out_dir, min_frames=min_frames)
    if not (out_dir / VIDEO_DIR).exists():
        (out_dir / VIDEO_DIR).symlink_to(root / VIDEO_DIR, target_is_directory=True)
    return report
