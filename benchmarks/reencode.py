"""Decode clips/s before and after re-encoding (video_kd.data.reencode): does a dense GOP pay?

Generates 10 s clips (320x240, 25 fps, moving shapes on a noisy background)
encoded as downloads usually are: H.264 with one keyframe per 250 frames (x264's
default), then re-encodes them with ``reencode_dataset`` (short side 256, a
keyframe every ``gop`` frames) and times MMAction2's own decode pipeline
(``DecordInit`` + ``SampleFrames`` 8x1 as TSN/TSM train + ``DecordDecode``),
one process, one thread: clips/s of one data loader worker.  Also reports the
re-encoding time and the size of the files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    parser.add_argument('--videos', type=int, default=6, help='generated source clips')
    parser.add_argument('--seconds', type=float, default=10.0, help='length of each clip')
    parser.add_argument('--fps', type=int, default=25)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--source-gop', type=int, default=250, help='keyint of the source')
    parser.add_argument('--gops', type=int, nargs='+', default=[1, 4], help='derived GOPs')
    parser.add_argument('--passes', type=int, default=4, help='decode passes over the clips')
    parser.add_argument('--out', default='reencode')
    return parser.parse_args(argv)


def write_source(path: Path, args, rng: np.random.Generator) -> None:
    """A long-GOP H.264 clip as YouTube-style downloads are."""
    import av

    frames = round(args.seconds * args.fps)
    yy, xx = np.mgrid[0 : args.height, 0 : args.width]
    background = ((xx * 255 // args.width) // 2 + 60).astype(np.uint8)
    background = np.stack([background, background[::-1], np.full_like(background, 90)], -1)
    vx, vy = rng.uniform(1, 4, 2)
    with av.open(str(path), 'w') as out:
        stream = out.add_stream('libx264', rate=args.fps)
        stream.width, stream.height, stream.pix_fmt = args.width, args.height, 'yuv420p'
        stream.options = {'preset': 'veryfast', 'threads': '1', 'g': str(args.source_gop)}
        for i in range(frames):
            frame = background.copy()
            cx, cy = (40 + vx * i) % args.width, (30 + vy * i) % args.height
            frame[((xx - cx) ** 2 + (yy - cy) ** 2) < 900] = (230, 200, 40)
            frame = np.clip(frame + rng.integers(-12, 13, frame.shape), 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        out.mux(stream.encode(None))


def decode_rates(variants: dict[str, list[Path]], passes: int) -> dict[str, dict]:
    """clips/s of each variant; the variants take turns, pass by pass, so that a change in
    the machine's load (a shared CI box) hits them alike."""
    from mmaction.datasets.transforms import DecordDecode, DecordInit, SampleFrames
    from mmengine.registry import init_default_scope

    init_default_scope('mmaction')
    steps = [
        DecordInit(num_threads=1),
        SampleFrames(clip_len=1, frame_interval=1, num_clips=8),
        DecordDecode(),
    ]

    def load(path: Path) -> dict:
        results = {'filename': str(path), 'start_index': 0, 'modality': 'RGB'}
        for step in steps:
            results = step(results)
        return results

    shapes = {name: load(paths[0])['imgs'][0].shape for name, paths in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(passes):
        for name, paths in variants.items():
            for path in paths:
                start = time.perf_counter()
                load(path)
                times[name].append(time.perf_counter() - start)
    return {
        name: {
            'frame_shape': list(shapes[name]),
            'seconds_per_clip': common.summary(times[name]),
            'clips_per_s': len(times[name]) / sum(times[name]),
            'mb_per_video': sum(p.stat().st_size for p in paths) / len(paths) / 1e6,
        }
        for name, paths in variants.items()
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from video_kd.data import data_layout, reencode

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix='reencode_') as tmp:
        root = Path(tmp) / 'src'
        lines = []
        for i in range(args.videos):
            rel = f'clip/{i:03d}.mp4'
            (root / 'videos' / 'clip').mkdir(parents=True, exist_ok=True)
            write_source(root / 'videos' / rel, args, rng)
            lines.append(f'{rel} 0')
        for name in ('train_list.txt', 'val_list.txt'):
            (root / name).write_text('\n'.join(lines) + '\n')
        (root / 'classes.txt').write_text('clip\n')
        source = data_layout.resolve(str(root))
        variants = {f'source (keyint {args.source_gop})': sorted(root.rglob('*.mp4'))}
        encoded = {}
        for gop in args.gops:
            start = time.perf_counter()
            done = reencode.reencode_dataset(source, short_side=256, gop=gop, processes=1)
            seconds = time.perf_counter() - start
            name = f're-encoded, short side 256, gop {gop}'
            variants[name] = sorted(Path(done['videos_uri']).rglob('*.mp4'))
            encoded[name] = {'gop': gop, 'reencode_s_per_video': seconds / len(variants[name])}
        rates = decode_rates(variants, args.passes)
        results = [{'variant': name, **encoded.get(name, {}), **rates[name]} for name in variants]
    base = results[0]['clips_per_s']
    for r in results:
        r['speedup'] = r['clips_per_s'] / base
    common.print_table(
        ['variant', 'frame', 'MB/video', 'clips/s', 'speedup', 're-encode s/video'],
        [
            [
                r['variant'],
                'x'.join(map(str, r['frame_shape'])),
                f'{r["mb_per_video"]:.2f}',
                f'{r["clips_per_s"]:.1f}',
                f'{r["speedup"]:.1f}x',
                f'{r["reencode_s_per_video"]:.2f}' if 'gop' in r else '',
            ]
            for r in results
        ],
    )
    settings = {k: getattr(args, k) for k in ('videos', 'seconds', 'fps', 'width', 'height')}
    common.write_result(args.out, {'settings': settings, 'results': results})
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
