"""KFP component: validate the dataset, publish the cleaned lists; outputs a Dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def data_prep(
    dataset_uri: str,
    s3_bucket: str,
    s3_prefix: str,
    run_id: str,
    job_id: str,
    dataset: Output[Dataset],
    reencode: bool = False,
):
    """Validate every video (decodable, frame count, known label) of ``dataset_uri``
    (an s3:// prefix or a path on the mounted PVC, e.g. /cache/kinetics400, in our layout or
    MMAction2's Kinetics tree; or generate://), write the cleaned train/val lists, classes and
    the report of rejected videos to s3://<bucket>/<prefix>/<run-id>/data/. ``reencode``:
    train and evaluate on a derived copy (short side 256, a keyframe every frame) written
    once at <dataset_uri>/derived/<hash>/."""
    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import data_prep

    with exit_on_user_error():
        meta = data_prep.run(
            dataset_uri,
            s3_bucket,
            s3_prefix,
            run_id=run_id,
            job_id=job_id,
            out_dir=dataset.path,
            reencode=reencode,
        )
    dataset.metadata.update(meta)
