"""python -m components.data_prep: the data prep step on its own."""

from __future__ import annotations

from components import _cli
from video_kd.core.errors import run_cli, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = _cli.parser(
        'data_prep',
        'Validate every video of a dataset (decodable, enough frames, '
        'known label) and publish the cleaned train/val lists, classes.txt and a '
        'report of rejected videos under s3://<bucket>/<prefix>/<run-id>/data/. '
        'Starts a run: picks a new run id unless --run-id is given.',
    )
    p.add_argument(
        '--dataset-uri',
        required=True,
        help='where the dataset is: s3://bucket/path or a directory (e.g. on the mounted '
        'PVC: /cache/kinetics400), in our layout (videos/, train_list.txt, val_list.txt, '
        "classes.txt) or MMAction2's Kinetics tree (videos_train/, videos_val/, "
        'kinetics400_{train,val}_list_videos.txt, label_map_k400.txt or annotations/*.csv; '
        'other names as a query: ?train_list=...&val_videos=...); or generate:// (the '
        'built-in synthetic dataset, options as a query: '
        'generate://?num_classes=3&train_per_class=4)',
    )
    p.add_argument('--s3-bucket', required=True)
    p.add_argument('--s3-prefix', default='video-kd')
    p.add_argument(
        '--run-id',
        default='',
        help='default: <UTC time>-<random>; an id already used by another run is refused',
    )
    p.add_argument('--out-dir', help='also keep the cleaned lists and report here')
    p.add_argument(
        '--min-frames',
        type=int,
        default=8,
        help='a video with fewer decodable frames is rejected (default: %(default)s)',
    )
    p.add_argument(
        '--processes',
        type=int,
        help='video checking (and re-encoding) processes, one decode each; default: the CPUs '
        "this process may use (affinity and the cgroup's CPU limit, not the node's cores)",
    )
    p.add_argument(
        '--max-unusable',
        type=float,
        default=0.5,
        help='stop when a larger share of a split is unusable (read failures always stop: '
        're-run; default: %(default)s)',
    )
    p.add_argument(
        '--reencode',
        action='store_true',
        help='train and evaluate on a derived copy of the usable videos (short side 256, a '
        'keyframe every frame: cheap seeks), written once at <dataset>/derived/<hash>/',
    )
    args = p.parse_args(argv)
    setup_logging()
    from video_kd.steps import data_prep

    return _cli.finish(
        data_prep.run(
            args.dataset_uri,
            args.s3_bucket,
            args.s3_prefix,
            run_id=args.run_id,
            min_frames=args.min_frames,
            out_dir=args.out_dir,
            reencode=args.reencode,
            processes=args.processes,
            max_unusable=args.max_unusable,
        )
    )


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
