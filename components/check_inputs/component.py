"""KFP component: every step's checks on the run's parameters, before data prep claims the run."""

from kfp import dsl

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def check_inputs(
    dataset_uri: str,
    teacher_url: str,
    teacher_sha256: str,
    kd_config: str,
    student_config: str,
    baseline_url: str,
    baseline_sha256: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int,
    max_epochs: int,
    cfg_options: list,
    teacher_logit_cache: bool,
    teacher_precision: str,
    student_pretrained_url: str,
    student_pretrained_sha256: str,
    training_backend: str,
    backoff_limit_per_node: int,
    s3_bucket: str,
    export_tolerance: float,
    speed_repeats: int,
    run_id: str,
):
    """Check the run's parameters as the steps that read them will (cfg_options against the
    resolved KD config, numeric ranges, checksums, URLs, backend name, export settings), so
    that a bad one is one line here, before data prep claims the run and writes anything,
    not after an hour of data prep or a whole training. Reads and writes nothing."""
    params = dict(locals())  # the parameters by name: nothing else is defined yet
    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps.check_inputs import check_pipeline_params

    with exit_on_user_error():
        check_pipeline_params(params)
