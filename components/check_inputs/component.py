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
    keep_checkpoints: int,
    training_backend: str,
    backoff_limit_per_node: int,
    max_training_hours: float,
    step_cpu_request: str,
    step_memory_request: str,
    eval_num_workers: int,
    eval_gpus_per_worker: int,
    eval_nproc_per_node: int,
    s3_bucket: str,
    s3_prefix: str,
    export_tolerance: float,
    speed_repeats: int,
    speed_batch_size: int,
    parity_clips: int,
    run_id: str,
    image: str,
    model_name: str,
    promote_min_gain: float,
):
    """Check the run's parameters as the steps that read them will (cfg_options against the
    resolved KD config, the resolved config's values, numeric ranges, checksums, URLs,
    bucket and prefix, backend name, export settings), so
    that a bad one is one line here, before data prep claims the run and writes anything,
    not after an hour of data prep or a whole training. Reads and writes nothing.

    Each input is the pipeline parameter of the same name (its description there says what
    it means); here, what is checked of it.

    Args:
        dataset_uri: Not empty; for generate://, the generator's query options.
        teacher_url: Not empty; a URL the download step fetches (https://, http://, s3://,
            file:// or a path in the pod) naming a file.
        teacher_sha256: Empty or 64 hex digits.
        kd_config: A shipped KD config; the training config is resolved from it with the
            training options, as the train step will.
        student_config: Empty or a shipped config (evaluation and export load it).
        baseline_url: Empty, or a fetchable URL (as teacher_url) with a student_config.
        baseline_sha256: Empty or 64 hex digits.
        num_workers: A whole number, 1 or more.
        gpus_per_worker: A whole number, 0 or more.
        nproc_per_node: A whole number, 0 (one per GPU) or more.
        max_epochs: A whole number, 0 (the config's) or more.
        cfg_options: A list of KEY=VALUE strings whose every key exists in the resolved KD
            config.
        teacher_logit_cache: A bool; true only with a KD config.
        teacher_precision: Empty, or fp32, bf16 or fp16 with a KD config.
        student_pretrained_url: Empty or a fetchable URL (as teacher_url).
        student_pretrained_sha256: Empty or 64 hex digits.
        keep_checkpoints: A whole number, 1 or more.
        training_backend: Empty (the chart's, unknown here) or pytorchjob, trainjob, local.
        backoff_limit_per_node: A whole number, 0 (the chart's) or more.
        max_training_hours: A finite number above 0.
        step_cpu_request: A Kubernetes CPU quantity above 0, e.g. 500m or 2.
        step_memory_request: A Kubernetes memory quantity above 0, e.g. 4Gi.
        eval_num_workers: A whole number, 0 (the training's) or more.
        eval_gpus_per_worker: A whole number, -1 (the training's) or more.
        eval_nproc_per_node: A whole number, -1 (the training's), 0 (one per GPU) or more.
        s3_bucket: A valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens).
        s3_prefix: Empty (the bucket's root) or "/"-separated segments of letters, digits,
            ".", "_", "-", none empty, ".", ".." or "cache".
        export_tolerance: A finite number, 0 or more.
        speed_repeats: A whole number from 0 (no speed check) to 1000.
        speed_batch_size: A whole number from 1 to 256.
        parity_clips: A whole number, 1 or more.
        run_id: Empty (a new id) or a DNS label (1-63 lowercase letters, digits, hyphens),
            not "cache" or "models".
        image: Starts with one of the chart's allowed prefixes (pipeline.allowedImagePrefixes,
            from the training ConfigMap); no list, no check.
        model_name: Empty (derived from kd_config) or 1-63 lowercase letters, digits, ".",
            "_", "-", starting and ending with a letter or digit.
        promote_min_gain: A finite number from -100 to 100 (top-1 percentage points).
    """
    params = dict(locals())  # the parameters by name: nothing else is defined yet
    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps.check_inputs import check_pipeline_params

    with exit_on_user_error():
        check_pipeline_params(params)
