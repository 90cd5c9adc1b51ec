"""python -m components.train: the KD training step on its own."""

from __future__ import annotations

import json

from components import DEFAULT_IMAGE, _cli
from video_kd.errors import run_cli, setup_logging
from video_kd.train_config import TrainOptions


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'train',
        "Distill the run's teacher into a student: resolve the training config once "
        '(<run>/train/config.py), then train as a Kubeflow PyTorchJob (--mode pytorchjob, '
        'needs a cluster with the Training Operator) or under torchrun on this machine '
        '(--mode local, the same command and env vars a PyTorchJob pod gets). Checkpoints go '
        'to <run>/train/checkpoints/ as they are written; running the step again resumes '
        'from the last one there.',
    )
    _cli.add_run_root(p)
    p.add_argument(
        '--kd-config',
        required=True,
        help='e.g. kd_logits_tsm-res50_tsm-mobilenetv2_tiny (see video-kd configs)',
    )
    TrainOptions.add_arguments(p)
    p.add_argument(
        '--teacher-logit-cache',
        action='store_true',
        help="keep the teacher's logits per augmented view next to the dataset in S3, so "
        'retraining with the same teacher skips its forward pass',
    )
    p.add_argument('--mode', choices=['local', 'pytorchjob'], default='local')
    p.add_argument('--image', default=DEFAULT_IMAGE, help='image of the PyTorchJob pods')
    p.add_argument(
        '--num-workers', type=int, default=1, help='replicas (Master included); local: processes'
    )
    p.add_argument('--gpus-per-worker', type=int, default=0)
    p.add_argument('--nproc-per-node', type=int, default=1)
    p.add_argument(
        '--print-manifest',
        action='store_true',
        help='print the PyTorchJob manifest (JSON) and exit; writes nothing',
    )
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.runs import RunLayout
    from video_kd.steps import train
    from video_kd.steps.common import run_data_meta, run_step_output

    options = TrainOptions.from_args(args)
    data = run_data_meta(args.run_root)
    teacher = run_step_output(args.run_root, 'teacher')
    if args.print_manifest:
        layout = RunLayout.from_root(args.run_root)
        train.resolve_config(data, teacher, args.kd_config, options, args.teacher_logit_cache)
        manifest = train.build_train_job(
            layout,
            layout.uri('train', 'config.py'),
            data,
            teacher,
            args.image,
            args.num_workers,
            args.gpus_per_worker,
            args.nproc_per_node,
        )
        print(json.dumps(manifest, indent=2))
        return 0
    return _cli.finish(
        train.run(
            data,
            teacher,
            args.kd_config,
            options,
            teacher_logit_cache=args.teacher_logit_cache,
            mode=args.mode,
            image=args.image,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            nproc_per_node=args.nproc_per_node,
        )
    )


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
