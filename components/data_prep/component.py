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
    """Validate every video (decodable, frame count, known label) of ``dataset_uri``, write
    the cleaned train/val lists, classes and the report of rejected videos to
    s3://<bucket>/<prefix>/<run-id>/data/. Starts the run: claims its directory (a KFP
    retry of the same run continues in it).

    Args:
        dataset_uri: Where the dataset is, read in place: an s3:// prefix or a path on the
            mounted PVC (e.g. /cache/kinetics400), in our layout or MMAction2's Kinetics
            tree (the pipeline's dataset_uri); or generate:// for the synthetic demo data.
        s3_bucket: The bucket of the runs (the pipeline's s3_bucket).
        s3_prefix: The key prefix of the runs in s3_bucket (the pipeline's s3_prefix).
        run_id: The run's id; empty: <UTC time>-<job_id>. An id another run holds is
            refused.
        job_id: The KFP run's id (the pipeline passes its PIPELINE_JOB_ID placeholder):
            names the run when run_id is empty and lets a retry of this KFP run reclaim the
            run directory.
        reencode: true: train and evaluate on a derived copy (short side 256, a keyframe
            every frame) written once at <dataset_uri>/derived/<hash>/ and reused. Default
            false.

    Returns:
        dataset: The run's data: its metadata holds run_id, run_root, the classes and
            num_classes, per split the list's and the videos' URIs and counts, the published
            files' S3 URIs and checksums and dataset_meta_uri (what the later steps read);
            its directory holds the cleaned lists and the report.
    """
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
