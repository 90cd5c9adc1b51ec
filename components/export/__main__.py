"""python -m components.export: the export step on its own."""

from __future__ import annotations

from components import DEFAULT_IMAGE, _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'export',
        "Package the run's student for deployment: ONNX (dynamic batch) with preprocess.json, "
        'checked against PyTorch on the val clips, teacher vs student speed, plots, an HTML '
        'report and a model card, published to <run>/export/. Needs the evaluate step first.',
    )
    _cli.add_run_root(p)
    p.add_argument('--kd-config', required=True)
    p.add_argument(
        '--student-config', default='', help='the student-alone config, named in the model card'
    )
    p.add_argument('--image', default=DEFAULT_IMAGE, help='named in the model card')
    p.add_argument(
        '--tolerance', type=float, default=1e-3, help='max abs logit difference ONNX vs PyTorch'
    )
    p.add_argument(
        '--speed-repeats', type=int, default=3, help='timing rounds; 0 skips the speed check'
    )
    p.add_argument(
        '--speed-batch-size', type=int, default=8,
        help='clips per call of the throughput timing (latency is timed at batch 1)',
    )  # fmt: skip
    p.add_argument(
        '--parity-clips', type=int, default=32,
        help='val clips of the ONNX parity check (a seeded random sample of the val list)',
    )  # fmt: skip
    p.add_argument(
        '--baseline-url', default='',
        help='the student-alone checkpoint; its curves are drawn when its logs sit beside it',
    )  # fmt: skip
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import export
    from video_kd.steps.common import run_data_meta, run_step_output

    export.export_settings(  # bad settings: one line before the run's objects are looked up
        args.kd_config,
        args.student_config,
        args.image,
        args.tolerance,
        True,
        args.speed_repeats,
        args.parity_clips,
        args.speed_batch_size,
    )
    result = export.run(
        run_data_meta(args.run_root),
        run_step_output(args.run_root, 'teacher'),
        run_step_output(args.run_root, 'student'),
        args.kd_config,
        student_config=args.student_config,
        image=args.image,
        tolerance=args.tolerance,
        speed_repeats=args.speed_repeats,
        speed_batch_size=args.speed_batch_size,
        parity_clips=args.parity_clips,
        baseline_url=args.baseline_url,
    )
    for text in ('html', 'model_card'):
        result.pop(text)
    return _cli.finish(result)


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
