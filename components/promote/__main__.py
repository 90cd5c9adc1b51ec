"""python -m components.promote: the promotion gate on its own."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'promote',
        "Make the run's student the model's current one (models/<model>/current.json) only "
        "if its top-1 beats the current student's, scored on the same val set by the "
        'evaluate step, by --min-gain points and every export check passed; every decision '
        'is kept in models/<model>/history/. Needs the evaluate and export steps first.',
    )
    _cli.add_run_root(p)
    p.add_argument('--kd-config', required=True)
    p.add_argument('--model-name', default='', help='default: derived from the KD config')
    p.add_argument('--min-gain', type=float, default=0.0, help='top-1 points required')
    p.add_argument('--report-only', action='store_true', help='decide, promote nothing')
    p.add_argument('--force', action='store_true', help='promote over an unusable current')
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import promote
    from video_kd.steps.common import run_step_output

    promote.promotion.check_min_gain(args.min_gain)
    result = promote.run(
        run_step_output(args.run_root, 'student'),  # type: ignore[arg-type]
        args.kd_config,
        model_name=args.model_name,
        promote=not args.report_only,
        min_gain_points=args.min_gain,
        force=args.force,
    )
    for text in ('markdown', 'model_card'):
        result.pop(text)  # type: ignore[misc]
    return _cli.finish(dict(result))


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
