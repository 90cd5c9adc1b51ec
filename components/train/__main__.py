"""python -m components.train: the KD training step on its own."""

from __future__ import annotations

import json

from components import DEFAULT_IMAGE, _cli
from video_kd import backends
from video_kd.core.errors import run_cli, setup_logging
from video_kd.distill.train_config import TrainOptions


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'train',
        "Distill the run's teacher into a student: resolve the training config once "
        '(<run>/train/config.py), then train as a Kubeflow PyTorchJob or TrainJob '
        '(--training-backend pytorchjob|trainjob, needs the operator on the cluster) or under '
        'torchrun on this machine (local, the same command and env vars a pod gets). Checkpoints go '
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
        '--training-backend',
        choices=backends.BACKENDS,
        default='local',
        help='pytorchjob (Training Operator v1), trainjob (Kubeflow Trainer v2) or local '
        '(torchrun here, with the env vars a pod gets); default local',
    )
    p.add_argument('--image', default=DEFAULT_IMAGE, help='image of the training pods')
    p.add_argument('--num-workers', type=int, default=1, help='training nodes (pods); local: 1')
    p.add_argument('--gpus-per-worker', type=int, default=0)
    p.add_argument('--nproc-per-node', type=int, default=0, help='0: one per GPU (1 without GPUs)')
    p.add_argument(
        '--backoff-limit-per-node', type=int, default=0, help="restarts per node; 0: the chart's"
    )
    p.add_argument(
        '--max-training-hours',
        type=float,
        default=backends.DEFAULT_MAX_TRAINING_HOURS,
        help="the training job's deadline (activeDeadlineSeconds) in hours; default 168",
    )
    p.add_argument(
        '--print-manifest',
        action='store_true',
        help='print the training job (PyTorchJob/TrainJob JSON) and exit; writes nothing',
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
        train.resolve_config(data, teacher, args.kd_config, options)
        backend = 'pytorchjob' if args.training_backend == 'local' else args.training_backend
        spec = train.job_spec(
            layout,
            layout.uri('train', 'config.py'),
            data,
            teacher,
            args.image,
            args.num_workers,
            args.gpus_per_worker,
            args.nproc_per_node,
            args.backoff_limit_per_node,
            args.max_training_hours,
        )
        print(json.dumps(backends.manifest(backend, spec), indent=2))
        return 0
    return _cli.finish(
        train.run(
            data,
            teacher,
            args.kd_config,
            options,
            training_backend=args.training_backend,
            image=args.image,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            nproc_per_node=args.nproc_per_node,
            backoff_limit_per_node=args.backoff_limit_per_node,
            max_training_hours=args.max_training_hours,
        )
    )


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
