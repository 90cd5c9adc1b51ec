"""python -m components.teacher_download: the teacher download step on its own."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'teacher_download',
        'Download a teacher checkpoint (https://, http://, '
        's3://, file:// or a path) with retries, verify its SHA-256, cache it in S3 by checksum (a '
        're-run copies it from the cache) and publish it to <run>/teacher/.',
    )
    _cli.add_run_root(p)
    p.add_argument('--url', required=True, help='teacher checkpoint URL')
    p.add_argument('--sha256', default='', help='expected SHA-256 (hex); enables the cache')
    p.add_argument(
        '--kd-config',
        default='',
        help="check the checkpoint against this KD config's teacher (and convert the seed's "
        'timm Swin teacher); default: publish it unchecked',
    )
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import teacher
    from video_kd.steps.common import run_data_meta

    num_classes = run_data_meta(args.run_root)['num_classes'] if args.kd_config else 0
    return _cli.finish(
        teacher.run(args.run_root, args.url, args.sha256, args.kd_config, num_classes)
    )


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
