"""python -m components.convert: the student conversion step on its own."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'convert',
        "Convert the run's last KD checkpoint (<run>/train/checkpoints/) "
        'to a student-only checkpoint that plain MMAction2 loads, published to '
        '<run>/student/.',
    )
    _cli.add_run_root(p)
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import convert
    from video_kd.steps.common import run_step_output

    return _cli.finish(convert.run(run_step_output(args.run_root, 'train')))


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
