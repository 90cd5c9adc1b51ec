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
    training_backend: str,
    image: str,
    num_workers: int,
    gpus_per_worker: int,
    nproc_per_node: int,
    backoff_limit_per_node: int,
    kd_model: Output[Model],
):
    """Resolve the training config once (<run>/train/config.py), create the training job
    (a PyTorchJob or a Trainer v2 TrainJob whose pods run ``torchrun -m video_kd.distill.train_pod``),
    follow it, fail with its reason if it fails and delete it; training_backend=local runs the
    same command under torchrun here. Checkpoints go to <run>/train/checkpoints/ as they are
    written; a re-run resumes from the last one."""
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
        )
    kd_model.metadata.update(meta)
    with open(kd_model.path, 'w') as out:
        json.dump(meta, out, indent=2)
