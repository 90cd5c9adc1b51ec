"""python -m components.convert: the student conversion step on its own."""

from __future__ import annotations

from components import _cli


def main(argv=None) -> int:
    p = _cli.parser(
        'convert',
        "Convert the run's last KD checkpoint (<run>/train/checkpoints/) "
        'to a student-only checkpoint that plain MMAction2 loads, published to '
        '<run>/student/.',
    )
    _cli.add_run_root(p)
    args = p.parse_args(argv)
    _cli.setup()
    from video_kd import steps

    kd_model = steps.run_step(steps.run_step_output, args.run_root, 'train')
    return _cli.finish(steps.run_step(steps.convert, kd_model))


if __name__ == '__main__':
    raise SystemExit(main())
