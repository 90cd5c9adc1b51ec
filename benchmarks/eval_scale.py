"""Evaluation at scale: the evaluate step's wall time with 1 vs 2 local processes, with the
teacher's scores computed vs taken from the score cache; per-sample equality of 1 vs 2
processes; and a projection (not a measurement) of Kinetics-400 evaluation on 8 GPUs.

    python benchmarks/eval_scale.py            # -> benchmarks/results/eval_scale.json

Each variant is the real step (``video_kd.steps.evaluate.run``) on a run of its own, after
a real data prep of the generated dataset, against a local moto S3 server, the test loops
under torchrun (the ``local`` backend, gloo, CPU).  "uncached" is a run under a fresh
S3 prefix (an empty score cache), "cached" a second run under the same prefix: the same
teacher on the same val list, only the student scored.  The teacher (TSM-R50, tiny
config) and the student (TSM-MobileNetV2) have random weights: scores are not the point,
the work is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import common
import torch
from data_scale import start_moto

KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
VARIANTS = (  # (processes, teacher scores): run in this order, uncached first per prefix
    (1, 'uncached'),
    (1, 'cached'),
    (2, 'uncached'),
    (2, 'cached'),
)
# The issue's FLOPs table (the seed's test protocols on Kinetics-400's 19.8k val videos).
K400 = {
    'val_videos': 19_796,
    'models': {
        'TSM-MobileNetV2 student (8 frames x ThreeCrop 256)': 0.2e15,
        'TSM-R50 teacher (8 frames x TenCrop 224)': 6.5e15,
        'TSN-Swin-B teacher (25 clips x TenCrop 224)': 77e15,
    },
}
# Assumed sustained throughput per GPU in the test loops: ~1/5 of an H100's dense TF32 peak
# (~495 TFLOP/s; PyTorch runs fp32 convolutions in TF32 by default), as small batches of
# video clips keep a GPU far from its peak.  An assumption, not a measurement.
ASSUMED_GPU_TFLOPS = 100.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--val-per-class', type=int, default=6, help='generated val videos per class'
    )
    parser.add_argument('--num-classes', type=int, default=3)
    parser.add_argument('--gpus', type=int, default=8, help='GPUs of the K400 projection')
    parser.add_argument('--out', default='eval_scale', help='results/<out>.json')
    return parser.parse_args(argv)


def random_checkpoints(work: Path, num_classes: int) -> tuple[Path, Path]:
    """The KD config's teacher and student with random weights, sized to the dataset."""
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.config import load_config, set_num_classes, student_model_cfg
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    cfg = load_config(KD)
    paths = []
    for name, model_cfg in (('teacher', cfg.model.teacher), ('student', student_model_cfg(cfg))):
        set_num_classes(model_cfg, num_classes)
        torch.manual_seed(0)
        path = work / f'{name}.pth'
        torch.save({'state_dict': MODELS.build(model_cfg).state_dict()}, path)
        paths.append(path)
    return paths[0], paths[1]


def one_run(bucket: str, prefix: str, dataset: str, teacher_ckpt: Path, student_ckpt: Path,
            processes: int, work: Path) -> dict:  # fmt: skip
    """Data prep, teacher, student into a new run; the evaluate step timed."""
    from video_kd.runs import RunLayout, publish, run_info
    from video_kd.steps import data_prep, evaluate
    from video_kd.steps import teacher as teacher_step
    from video_kd.storage import s3

    data_meta = data_prep.run(dataset, bucket, prefix, workdir=work / 'prep')
    layout = RunLayout.from_root(data_meta['run_root'])
    teacher = teacher_step.run(
        layout.root, str(teacher_ckpt), s3.sha256_file(teacher_ckpt), kd_config=KD,
        num_classes=int(data_meta['num_classes']), workdir=work / 'teacher',
    )  # fmt: skip
    entry = publish(layout, 'student', student_ckpt, 'epoch_1_student.pth')
    student = {**run_info(layout), **entry.meta(), 'kd_config': KD}
    started = time.monotonic()
    result = evaluate.run(
        data_meta, student, KD, teacher=teacher, training_backend='local', num_workers=1,
        gpus_per_worker=0, nproc_per_node=processes, workdir=work / 'eval',
    )  # fmt: skip
    seconds = time.monotonic() - started
    predictions = s3.read_json(layout.uri('eval', 'predictions.json'))
    return {'seconds': seconds, 'metrics': result['metrics'], 'predictions': predictions}


def compare(a: list[dict], b: list[dict]) -> dict:
    """Per-sample predictions of two evaluations: indices, labels and top-5 exactly; the
    top-1 score to 1e-5 (a batch of other samples may change a float's last bits)."""
    same = [x['index'] for x in a] == [y['index'] for y in b] and len(a) == len(b)
    return {
        'samples': len(a),
        'top1_equal': same
        and all(x['top5'][0] == y['top5'][0] for x, y in zip(a, b, strict=False)),
        'top5_equal': same and all(x['top5'] == y['top5'] for x, y in zip(a, b, strict=False)),
        'labels_equal': same and all(x['label'] == y['label'] for x, y in zip(a, b, strict=False)),
        'max_score_diff': max(
            (abs(x['score'] - y['score']) for x, y in zip(a, b, strict=False)), default=0.0
        ),
    }


def k400_projection(gpus: int) -> dict:
    per_second = gpus * ASSUMED_GPU_TFLOPS * 1e12
    return {
        'kind': 'projection, not a measurement',
        'basis': 'forward FLOPs of the val set under the seed test protocols (issue 22 table) '
        f'/ ({gpus} GPUs x {ASSUMED_GPU_TFLOPS:.0f} TFLOP/s sustained each, assumed); '
        'video decoding, data loading and the gather are not in it (a lower bound)',
        'gpus': gpus,
        'assumed_tflops_per_gpu': ASSUMED_GPU_TFLOPS,
        'val_videos': K400['val_videos'],
        'models': {
            name: {'val_pflops': flops / 1e15, 'seconds': flops / per_second}
            for name, flops in K400['models'].items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.quiet_mmengine()
    os.environ.setdefault('OMP_NUM_THREADS', '1')  # each torchrun process: one thread
    with tempfile.TemporaryDirectory(prefix='eval_scale_') as tmp:
        work = Path(tmp)
        moto, endpoint = start_moto(work)
        try:
            os.environ.update({
                'S3_ENDPOINT_URL': endpoint, 'AWS_ACCESS_KEY_ID': 'x',
                'AWS_SECRET_ACCESS_KEY': 'x', 'AWS_DEFAULT_REGION': 'us-east-1',
            })  # fmt: skip
            from video_kd.storage import s3

            bucket = 'eval-scale'
            s3.ensure_bucket(bucket)
            dataset = (
                f'generate://?num_classes={args.num_classes}&train_per_class=2'
                f'&val_per_class={args.val_per_class}&num_frames=12'
            )
            teacher_ckpt, student_ckpt = random_checkpoints(work, args.num_classes)
            runs = {}
            for processes, teacher_scores in VARIANTS:
                name = f'{processes}proc_{teacher_scores}'
                runs[name] = one_run(bucket, f'p{processes}', dataset, teacher_ckpt,
                                     student_ckpt, processes, work / name)  # fmt: skip
                print(f'{name}: {runs[name]["seconds"]:.1f} s, teacher '
                      f'{runs[name]["metrics"]["teacher_scored"]}')  # fmt: skip
        finally:
            moto.terminate()
    one, two = runs['1proc_uncached'], runs['2proc_uncached']
    equal = {model: compare(one['predictions'][model], two['predictions'][model])
             for model in ('student', 'teacher')}  # fmt: skip
    rows = [
        {
            'processes': processes,
            'teacher_scores': teacher_scores,
            'teacher_scored': runs[f'{processes}proc_{teacher_scores}']['metrics'][
                'teacher_scored'
            ],
            'seconds': runs[f'{processes}proc_{teacher_scores}']['seconds'],
        }
        for processes, teacher_scores in VARIANTS
    ]
    common.print_table(
        ['processes', 'teacher', 'scored', 'wall s'],
        [[r['processes'], r['teacher_scores'], r['teacher_scored'], f'{r["seconds"]:.1f}']
         for r in rows],
    )  # fmt: skip
    print(f'per-sample predictions, 1 vs 2 processes, equal: {equal}')
    common.write_result(args.out, {
        'dataset': dataset,
        'num_val': one['metrics']['num_val'],
        'rows': rows,
        'per_sample_equal_1_vs_2': equal,
        'metrics_equal_1_vs_2': all(
            one['metrics'][m] == two['metrics'][m] for m in ('student', 'teacher')
        ),
        'k400_projection': k400_projection(args.gpus),
        'note': 'wall time of the whole evaluate step (torchrun start, model build, fetches, '
        'test loops, S3 writes) on a 2-core machine shared with other jobs: read the ratios, '
        'not the absolute seconds',
    })  # fmt: skip
    print(json.dumps(k400_projection(args.gpus), indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
