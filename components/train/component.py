"""KFP component: KD training as a PyTorchJob, a TrainJob or local torchrun; outputs a Model."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    teacher: Input[Model],
    kd_config: str,
    max_epochs: int,
    cfg_options: list,
    teacher_precision: str,
    teacher_logit_cache: bool,
    student_pretrained_url: str,
    student_pretrained_sha256: str,
    keep_checkpoints: int,
    training_backend: str,
    image: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int,
    backoff_limit_per_node: int,
    max_training_hours: float,
    kd_model: Output[Model],
):
    """Resolve the training config once (<run>/train/config.py), create the training job
    (a PyTorchJob or a Trainer v2 TrainJob whose pods run
    ``torchrun -m video_kd.distill.train_pod``), follow it, fail with its reason if it fails
    and delete it; training_backend=local runs the same command under torchrun here.
    Checkpoints go to <run>/train/checkpoints/ as they are written; a re-run resumes from
    the last one.

    Args:
        dataset: The data prep step's output (the run, the cleaned lists, the videos).
        teacher: The teacher download step's output (the teacher checkpoint in S3).
        kd_config: The shipped KD config to train (``video-kd configs``).
        max_epochs: The epoch budget (0 or more); 0: the config's own.
        cfg_options: mmengine config overrides, a list of KEY=VALUE strings.
        teacher_precision: The frozen teacher's inference precision: fp32, bf16 or fp16;
            empty: as MMRazor runs it.
        teacher_logit_cache: true: cache the teacher's logits next to the dataset so
            retraining with the same teacher skips its forward pass.
        student_pretrained_url: ImageNet weights for the student's backbone (https:// or
            s3://); empty: random init.
        student_pretrained_sha256: Those weights' SHA-256; empty: not checked.
        keep_checkpoints: The newest epoch checkpoints kept in S3 (1 or more), with the best
            by the val metric.
        training_backend: pytorchjob, trainjob or local (torchrun in this pod); empty: the
            chart's training.backend.
        image: The container image of the training job's pods.
        num_workers: Training nodes (PyTorchJob replicas, TrainJob numNodes), 1 or more.
        gpus_per_worker: GPUs per training node, 0 or more.
        nproc_per_node: Training processes per node; 0: one per GPU (one without GPUs).
        backoff_limit_per_node: PyTorchJob restarts per node; 0: the chart's, else 3.
        max_training_hours: The training job's deadline in hours (> 0): its
            activeDeadlineSeconds, counted from its start.

    Returns:
        kd_model: The last KD checkpoint: its metadata holds its S3 URI and sha256, every
            checkpoint, the KD config, the resolved config's URI, the backend, the job's
            name, the epochs trained and the launch parameters; the file holds the same.
    """
    import json

    from video_kd.core.errors import exit_on_user_error
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import train as train_step

    with exit_on_user_error():
        options = TrainOptions(
            max_epochs=max_epochs,
            cfg_options=cfg_options,
            teacher_precision=teacher_precision,
            teacher_logit_cache=teacher_logit_cache,
            student_pretrained_url=student_pretrained_url,
            student_pretrained_sha256=student_pretrained_sha256,
            keep_checkpoints=keep_checkpoints,
        )
        meta = train_step.run(
            dict(dataset.metadata),
            dict(teacher.metadata),
            kd_config,
            options,
            training_backend=training_backend,
            image=image,
            num_workers=num_workers,
            gpus_per_worker=gpus_per_worker,
            nproc_per_node=nproc_per_node,
            backoff_limit_per_node=backoff_limit_per_node,
            max_training_hours=max_training_hours,
        )
    kd_model.metadata.update(meta)
    with open(kd_model.path, 'w') as out:
        json.dump(meta, out, indent=2)
