"""Serving latency and throughput of `video-kd serve`, decoding included and excluded.

For each size (``tiny``: the tiny KD config's student on 64 px videos; ``full``: the seed's
TSM-MobileNetV2, 8 x 224² crops, 400 classes, on 320x256 videos) a freshly initialised student is
exported as the export step does (ONNX + ``preprocess.json``; the weights do not change
the time), served by ``video-kd serve`` on 127.0.0.1 and measured side by side, in
interleaved rounds after a warm-up:

* ``http_decode``: a POST /v2/models/<name>/infer with the MP4 as base64: HTTP,
  decoding and sampling by the test pipeline, ONNX Runtime, top-k;
* ``decode``: the same test pipeline alone, in this process;
* ``onnx``: ONNX Runtime alone on the decoded clip (decoding excluded), same threads.

Latency is per request at batch 1 (p50, p99); throughput is clips/s at batch 1 (one request
after the other) and with ``--batch`` videos per request (``http_decode``) or per run (``onnx``).

    python benchmarks/serve_latency.py                  # -> benchmarks/results/serve_latency.json
    python benchmarks/serve_latency.py --sizes tiny --rounds 20
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, quiet_mmengine, write_result

SIZES = {
    'tiny': {'kd_config': 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny', 'video': 64, 'frames': 16},
    'full': {
        'kd_config': 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
        'video': 256,
        'frames': 64,
    },
}
NUM_CLASSES = {'tiny': 5, 'full': 400}
NAME = 'student'


def export_random_student(size: str, work: Path) -> tuple[Path, list[Path]]:
    """(model dir as export writes it, val videos) for a freshly initialised student."""
    quiet_mmengine()
    from video_kd.data.data_stream import use_test_data
    from video_kd.data.dataset import generate_dataset
    from video_kd.deploy import export, speed
    from video_kd.openmmlab.config import load_config, student_model_cfg

    spec = SIZES[size]
    data = generate_dataset(
        work / 'data', num_classes=5, train_per_class=1, val_per_class=2,
        num_frames=spec['frames'], size=spec['video'],
    )  # fmt: skip
    cfg = load_config(spec['kd_config'])
    cfg.model = student_model_cfg(cfg)  # the recipe is the student's, as export writes it
    classes = use_test_data(cfg, data)
    classes = (classes * (NUM_CLASSES[size] // len(classes) + 1))[: NUM_CLASSES[size]]
    module = speed.build_pair(spec['kd_config'], NUM_CLASSES[size])['student']
    first = next(export.iter_val_clips(cfg, limit=1))[0]
    example = first.unsqueeze(0).repeat(2, *[1] * first.dim())
    model_dir = work / 'model'
    export.export_onnx(module, example, model_dir / export.ONNX_NAME)
    recipe = export.preprocess_spec(cfg, [str(c) for c in classes], tuple(example.shape))
    (model_dir / export.PREPROCESS_NAME).write_text(json.dumps(recipe, indent=2))
    return model_dir, sorted((data / 'videos').rglob('val_*.mp4'))


def v2_request(videos: list[bytes]) -> dict:
    """An Open Inference Protocol request with the videos as base64 BYTES elements."""
    data = [base64.b64encode(video).decode() for video in videos]
    return {'inputs': [{'name': 'video', 'shape': [len(data)], 'datatype': 'BYTES', 'data': data}]}


def start_server(model_dir: Path, port: int, threads: int) -> subprocess.Popen:
    import requests

    process = subprocess.Popen(
        [sys.executable, '-m', 'video_kd.cli', 'serve', str(model_dir), '--model-name', NAME,
         '--http-port', str(port), '--no-grpc', '--threads', str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f'video-kd serve exited with {process.returncode}')
        try:
            if requests.get(f'http://127.0.0.1:{port}/v2/health/ready', timeout=2).ok:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit('video-kd serve did not get ready in 300 s')


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        'p50_ms': float(np.percentile(ms, 50)),
        'p99_ms': float(np.percentile(ms, 99)),
        'mean_ms': float(ms.mean()),
        'n': len(ms),
    }


def measure(size: str, rounds: int, batch: int, threads: int, port: int) -> dict:
    import requests

    from video_kd.deploy.export import INPUT_NAME, ONNX_NAME, PREPROCESS_NAME, ort_session
    from video_kd.deploy.serve import VideoRecipe

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, paths = export_random_student(size, Path(tmp))
        videos = [path.read_bytes() for path in paths]
        recipe = VideoRecipe(json.loads((model_dir / PREPROCESS_NAME).read_text()))
        session = ort_session(model_dir / ONNX_NAME, threads=threads, spin=False)
        server = start_server(model_dir, port, threads)
        url = f'http://127.0.0.1:{port}/v2/models/{NAME}/infer'
        try:
            times: dict[str, list[float]] = {'http_decode': [], 'decode': [], 'onnx': []}
            batched: dict[str, list[float]] = {'http_decode': [], 'onnx': []}
            clip = recipe(videos[0])[None]
            stack = np.concatenate([clip] * batch)
            many = v2_request([videos[i % len(videos)] for i in range(batch)])
            for index in range(rounds + 2):  # two warm-up rounds, not recorded
                video = videos[index % len(videos)]
                one = v2_request([video])
                started = time.perf_counter()
                answer = requests.post(url, json=one, timeout=300)
                http_s = time.perf_counter() - started
                answer.raise_for_status()
                started = time.perf_counter()
                recipe(video)
                decode_s = time.perf_counter() - started
                started = time.perf_counter()
                session.run(['scores'], {INPUT_NAME: clip})
                onnx_s = time.perf_counter() - started
                started = time.perf_counter()
                requests.post(url, json=many, timeout=300).raise_for_status()
                http_batch_s = time.perf_counter() - started
                started = time.perf_counter()
                session.run(['scores'], {INPUT_NAME: stack})
                onnx_batch_s = time.perf_counter() - started
                if index >= 2:
                    for name, value in (
                        ('http_decode', http_s),
                        ('decode', decode_s),
                        ('onnx', onnx_s),
                    ):
                        times[name].append(value)
                    batched['http_decode'].append(http_batch_s)
                    batched['onnx'].append(onnx_batch_s)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {name: percentiles(values) for name, values in times.items()}
    for name, entry in result.items():
        entry['clips_per_s_batch1'] = 1000 / entry['mean_ms']
        if name in batched:
            entry[f'clips_per_s_batch{batch}'] = batch / float(np.mean(batched[name]))
    return {
        'kd_config': SIZES[size]['kd_config'],
        'input_shape': list(clip.shape[1:]),
        'num_classes': NUM_CLASSES[size],
        'video': f'{SIZES[size]["video"]}px, {SIZES[size]["frames"]} frames, MP4',
        'video_bytes': int(np.mean([len(v) for v in videos])),
        'batch': batch,
        'engines': result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES), default=['tiny', 'full'])
    parser.add_argument('--rounds', type=int, default=50, help='measured rounds (default 50)')
    parser.add_argument('--batch', type=int, default=8, help='videos per batched request')
    parser.add_argument(
        '--threads', type=int, default=1, help='ONNX Runtime threads, server and here (default 1)'
    )
    parser.add_argument('--port', type=int, default=18650, help='the server port (default 18650)')
    args = parser.parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', str(args.threads))
    results = {}
    for size in args.sizes:
        results[size] = measure(size, args.rounds, args.batch, args.threads, args.port)
        rows = [
            [size, name, f'{e["p50_ms"]:.1f}', f'{e["p99_ms"]:.1f}', f'{e["clips_per_s_batch1"]:.1f}',
             f'{e.get(f"clips_per_s_batch{args.batch}", float("nan")):.1f}']
            for name, e in results[size]['engines'].items()
        ]  # fmt: skip
        print_table(
            ['size', 'what', 'p50 ms', 'p99 ms', 'clips/s b1', f'clips/s b{args.batch}'], rows
        )
    write_result(
        'serve_latency', {'threads': args.threads, 'rounds': args.rounds, 'sizes': results}
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
