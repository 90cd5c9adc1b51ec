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
        model_name=args.model_name,
    )
    result.pop('report')
    return _cli.finish(result)


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
