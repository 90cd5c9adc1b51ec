"""python -m components.check_inputs: check a run's pipeline parameters, as the pipeline's
first step does (``video-kd submit`` and ``schedule`` run the same check)."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'check_inputs',
        "Check a run's pipeline parameters as the steps that read them will (cfg_options "
        'against the resolved KD config, numeric ranges, checksums, URLs, the backend name, '
        'the export settings); the compiled defaults fill in the rest. The pipeline runs '
        'this check first, before data prep claims the run.',
        epilog="Reads only the compiled pipeline (the parameters' types and defaults): no S3, "
        'no credentials; writes nothing. Prints the names of the checked parameters as JSON '
        f'({{"checked": [...]}}) on stdout; {_cli.ERRORS}.',
    )
    p.add_argument(
        '--param',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='pipeline parameter (repeatable), as `video-kd submit` takes them',
    )
    p.add_argument(
        '--package',
        help='the compiled pipeline whose parameters and defaults to use; '
        'default pipelines/kd_pipeline.yaml',
    )
    args = p.parse_args(argv)
    setup_logging()
    from video_kd import cli

    params = cli.parse_params(args.param, args.package)
    cli.check_params(params, args.package)
    return _cli.finish({'checked': sorted(cli.pipeline_arguments(params, args.package))})


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
