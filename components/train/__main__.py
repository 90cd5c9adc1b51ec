"""python -m components.train: the KD training step on its own."""

from __future__ import annotations

import json

from components import DEFAULT_IMAGE, _cli
from video_kd.fast_teacher import PRECISIONS


def main(argv=None) -> int:
    p = _cli.parser(
        'train',
        "Distill the run's teacher into a student: as a Kubeflow "
        'PyTorchJob (--mode pytorchjob, needs a cluster with the Training '
        'Operator) or under torchrun on this machine (--mode local, the same '
        'command and env vars a PyTorchJob pod gets). Checkpoints go to '
        '<run>/train/checkpoints/ as they are written; running the step again '
        'resumes from the last one there.',
    )
    _cli.add_run_root(p)
    p.add_argument(
        '--kd-config',
        required=True,
        help='e.g. kd_logits_tsm-res50_tsm-mobilenetv2_tiny (see video-kd configs)',
    )
    p.add_argument('--mode', choices=['local', 'pytorchjob'], default='local')
    p.add_argument('--image', default=DEFAULT_IMAGE, help='image of the PyTorchJob pods')
    p.add_argument(
        '--num-workers', type=int, default=1, help='replicas (Master included); local: processes'
    )
    p.add_argument('--gpus-per-worker', type=int, default=0)
    p.add_argument('--nproc-per-node', type=int, default=1)
    p.add_argument('--max-epochs', type=int, default=0, help="0: the config's")
    p.add_argument(
        '--cfg-options',
        default='',
        help='mmengine overrides, space separated: "train_dataloader.batch_size=4 ..."',
    )
    p.add_argument(
        '--teacher-logit-cache',
        action='store_true',
        help="cache the teacher's logits per augmented view next to the dataset in "
        'S3, so retraining with the same teacher skips its forward pass',
    )
    p.add_argument(
        '--teacher-precision',
        choices=list(PRECISIONS),
        default='',
        help='run the teacher as an inference model (eval mode, inference_mode) in '
        'this precision; default: as MMRazor runs it',
    )
    p.add_argument(
        '--print-manifest',
        action='store_true',
        help='print the PyTorchJob manifest (JSON) and exit',
    )
    args = p.parse_args(argv)
    _cli.setup()
    from video_kd import steps

    data = steps.run_step(steps.run_data_meta, args.run_root)
    teacher = steps.run_step(steps.run_step_output, args.run_root, 'teacher')
    if args.print_manifest:
        manifest = steps.run_step(
            steps.build_train_job,
            args.run_root,
            data['dataset_meta_uri'],
            teacher,
            args.kd_config,
            args.image,
            args.num_workers,
            args.gpus_per_worker,
            args.nproc_per_node,
            args.max_epochs,
            args.cfg_options,
            teacher_logit_cache=args.teacher_logit_cache,
            teacher_precision=args.teacher_precision,
        )
        print(json.dumps(manifest, indent=2))
        return 0
    return _cli.finish(
        steps.run_step(
            steps.train,
            data,
            teacher,
            args.kd_config,
            mode=args.mode,
            image=args.image,
            num_workers=args.num_workers,
            gpus_per_worker=args.gpus_per_worker,
            nproc_per_node=args.nproc_per_node,
            max_epochs=args.max_epochs,
            cfg_options=args.cfg_options,
            teacher_logit_cache=args.teacher_logit_cache,
            teacher_precision=args.teacher_precision,
        )
    )


if __name__ == '__main__':
    raise SystemExit(main())
