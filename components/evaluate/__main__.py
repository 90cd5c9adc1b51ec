"""python -m components.evaluate: the evaluation step on its own."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'evaluate',
        "Evaluate the run's student (and teacher, and optionally the "
        'student trained without KD) on the validation set; writes '
        '<run>/eval/metrics.json and report.md.',
    )
    _cli.add_run_root(p)
    p.add_argument('--kd-config', required=True)
    p.add_argument('--student-config', default='', help='config of the baseline checkpoint')
    p.add_argument('--baseline-url', default='', help='student trained alone (for KD gain)')
    p.add_argument('--baseline-sha256', default='')
    p.add_argument('--no-teacher', action='store_true', help='do not evaluate the teacher')
    p.add_argument(
        '--training-backend',
        default='',
        help="where the test loops run: pytorchjob, trainjob or local (default: the training's)",
    )
    p.add_argument(
        '--image', default='', help="the evaluation pods' image (default: the training's)"
    )
    p.add_argument('--num-workers', type=int, default=0, help="nodes (0: the training's)")
    p.add_argument(
        '--gpus-per-worker', type=int, default=-1, help="GPUs per node (-1: the training's)"
    )
    p.add_argument(
        '--nproc-per-node',
        type=int,
        default=-1,
        help="processes per node (-1: the training's; 0: one per GPU)",
    )
    p.add_argument(
        '--model-name',
        default=None,
        help="also score this model's current student (the promotion gate's comparison); "
        "'' derives the name from the KD config",
    )
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import evaluate
    from video_kd.steps.common import run_data_meta, run_step_output

    data = run_data_meta(args.run_root)
    student = run_step_output(args.run_root, 'student')
    teacher = None if args.no_teacher else run_step_output(args.run_root, 'teacher')
    result = evaluate.run(
        data,
        student,
        args.kd_config,
        teacher=teacher,
        student_config=args.student_config,
        baseline_url=args.baseline_url,
        baseline_sha256=args.baseline_sha256,
        training_backend=args.training_backend,
        num_workers=args.num_workers,
        gpus_per_worker=args.gpus_per_worker,
        nproc_per_node=args.nproc_per_node,
        image=args.image,
        model_name=args.model_name,
    )
    result.pop('report')
    return _cli.finish(result)


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
