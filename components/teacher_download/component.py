"""KFP component: fetch the teacher checkpoint (verified, cached in S3); outputs a Model."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def teacher_download(
    dataset: Input[Dataset],
    teacher_url: str,
    teacher_sha256: str,
    kd_config: str,
    teacher: Output[Model],
):
    """Stream ``teacher_url`` (https:// or s3://) with retries, check its sha256, keep a
    copy in the S3 cache keyed by checksum, check it against the KD config's teacher
    (converting the seed's timm Swin teacher), publish it to <run>/teacher/.

    Args:
        dataset: The data prep step's output: the run (run_root) and num_classes, which
            the teacher's head must have.
        teacher_url: The teacher checkpoint, https:// or s3:// (the pipeline's teacher_url).
        teacher_sha256: Its SHA-256 (64 hex digits): checked, and the key of the S3 cache.
            Empty: not checked, not cached.
        kd_config: The shipped KD config whose teacher the checkpoint must fit.

    Returns:
        teacher: The published teacher: its metadata holds the checkpoint's S3 URI
            (<run>/teacher/<file>), sha256, source_url and whether the cache served it; the
            file holds the same metadata as JSON (the checkpoint stays in S3).
    """
    import json

    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import teacher as teacher_step

    with exit_on_user_error():
        meta = teacher_step.run(
            dataset.metadata['run_root'],
            teacher_url,
            teacher_sha256,
            kd_config=kd_config,
            num_classes=int(dataset.metadata['num_classes']),  # KFP stores numbers as floats
        )
    teacher.metadata.update(meta)
    with open(teacher.path, 'w') as out:  # the checkpoint itself stays in S3
        json.dump(meta, out, indent=2)
