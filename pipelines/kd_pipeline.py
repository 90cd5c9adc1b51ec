"""The video KD pipeline: data prep -> teacher download -> KD training -> convert -> evaluate.

Compile with ``video-kd compile`` (writes ``pipelines/kd_pipeline.yaml``,
which is committed; a test fails when it is stale).  Every step is a
lightweight component running in ``image``; data flows one way through typed
artifacts whose metadata carries the S3 URIs, and S3 holds the artifacts
themselves under ``s3://<s3_bucket>/<s3_prefix>/<run id>/``.

On a cluster each step's pod gets the S3 settings from the ConfigMap
``video-kd-s3`` and the credentials from the Secret
``video-kd-s3-credentials`` (what the Helm chart installs with its default
names), and the training step reads the worker settings of the ConfigMap
``video-kd-training``.  Credentials are never pipeline parameters.
"""

from pathlib import Path

from kfp import dsl

from components import DEFAULT_IMAGE
from components.convert.component import convert
from components.data_prep.component import data_prep
from components.evaluate.component import evaluate
from components.teacher_download.component import teacher_download
from components.train.component import train

PIPELINE_NAME = 'video-kd-distillation'
PIPELINE_FILE = Path(__file__).with_name('kd_pipeline.yaml')
S3_CONFIG_MAP = 'video-kd-s3'
S3_SECRET = 'video-kd-s3-credentials'
TRAINING_CONFIG_MAP = 'video-kd-training'
TASK_ORDER = ('data-prep', 'teacher-download', 'train', 'convert', 'evaluate')


def _use_cluster_env(task: dsl.PipelineTask, training: bool = False) -> dsl.PipelineTask:
    """S3 endpoint and credentials from the chart's ConfigMap and Secret (kfp-kubernetes'
    ``configMapAsEnv`` / ``secretAsEnv``); ignored by the local runner, which passes its
    own environment through."""
    config_maps = [
        {
            'configMapName': S3_CONFIG_MAP,
            'keyToEnv': [
                {'configMapKey': key, 'envVar': key}
                for key in ('S3_ENDPOINT_URL', 'S3_BUCKET', 'S3_PREFIX', 'S3_CREDENTIALS_SECRET')
            ],
        }
    ]
    if training:
        config_maps.append(
            {
                'configMapName': TRAINING_CONFIG_MAP,
                'keyToEnv': [
                    {
                        'configMapKey': 'VIDEO_KD_SERVICE_ACCOUNT',
                        'envVar': 'VIDEO_KD_SERVICE_ACCOUNT',
                    },
                    {
                        'configMapKey': 'worker-pod-overrides.json',
                        'envVar': 'VIDEO_KD_WORKER_POD_OVERRIDES',
                    },
                ],
            }
        )
    task.platform_config['kubernetes'] = {
        'configMapAsEnv': config_maps,
        'secretAsEnv': [
            {
                'secretName': S3_SECRET,
                'keyToEnv': [
                    {'secretKey': key, 'envVar': key}
                    for key in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')
                ],
            }
        ],
    }
    return task


def _step(task: dsl.PipelineTask, name: str, image, training: bool = False) -> dsl.PipelineTask:
    task.set_display_name(name)
    task.set_caching_options(False)  # every run writes its own run directory
    task.set_container_image(image)
    return _use_cluster_env(task, training)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description='Distill a large MMAction2 video recognizer (teacher) into a small one '
    '(student) with MMRazor: data prep, teacher download, KD training as a '
    'Kubeflow PyTorchJob, student conversion, evaluation. Artifacts in '
    's3://<s3_bucket>/<s3_prefix>/<run id>/.',
)
def kd_pipeline(
    dataset_uri: str = 'generate://',
    teacher_url: str = '',
    teacher_sha256: str = '',
    kd_config: str = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
    student_config: str = 'tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb',
    baseline_url: str = '',
    baseline_sha256: str = '',
    num_workers: int = 2,
    gpus_per_worker: int = 0,
    nproc_per_node: int = 1,
    max_epochs: int = 0,
    cfg_options: str = '',
    teacher_logit_cache: bool = False,
    teacher_precision: str = '',
    train_mode: str = 'pytorchjob',
    s3_bucket: str = 'video-kd',
    s3_prefix: str = 'video-kd',
    image: str = DEFAULT_IMAGE,
    run_id: str = '',
):
    """Parameters:

    dataset_uri: s3:// prefix of a Kinetics-style dataset (videos/, train_list.txt,
        val_list.txt, classes.txt), or generate:// for the synthetic demo data.
    teacher_url, teacher_sha256: the teacher checkpoint (https:// or s3://) and its SHA-256.
    kd_config, student_config: shipped config names (``video-kd configs``); student_config
        is the student trained alone, used to evaluate baseline_url.
    baseline_url, baseline_sha256: optional student checkpoint trained without KD: the
        evaluation then reports the KD gain.
    num_workers: PyTorchJob replicas, Master included; gpus_per_worker: GPUs per replica;
        nproc_per_node: processes per replica (torchrun).
    max_epochs: 0 keeps the config's; cfg_options: mmengine overrides, space separated.
    teacher_logit_cache: cache the teacher's logits per augmented view next to the dataset
        in S3 (benchmarks/README.md), so scheduled retraining skips the teacher's forward.
    teacher_precision: empty runs the teacher as MMRazor does; fp32, bf16 or fp16 run it as
        an inference model (eval mode, inference_mode; bf16/fp16 autocast), a cheaper KD step.
    train_mode: pytorchjob (cluster) or local (torchrun inside the train step's pod).
    s3_bucket, s3_prefix: where runs go: s3://<bucket>/<prefix>/<run id>/.
    image: the image of every step and of the PyTorchJob pods.
    run_id: empty picks <UTC time>-<KFP run id>; a run id in use is refused.
    """
    prep = _step(
        data_prep(
            dataset_uri=dataset_uri,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            run_id=run_id,
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ),
        'data prep',
        image,
    )
    teacher = _step(
        teacher_download(
            dataset=prep.outputs['dataset'], teacher_url=teacher_url, teacher_sha256=teacher_sha256
        ),
        'teacher download',
        image,
    )
    kd = _step(
        train(
            dataset=prep.outputs['dataset'],
            teacher=teacher.outputs['teacher'],
            kd_config=kd_config,
            mode=train_mode,
            image=image,
            num_workers=num_workers,
            gpus_per_worker=gpus_per_worker,
            nproc_per_node=nproc_per_node,
            max_epochs=max_epochs,
            cfg_options=cfg_options,
            teacher_logit_cache=teacher_logit_cache,
            teacher_precision=teacher_precision,
        ),
        'KD training (PyTorchJob)',
        image,
        training=True,
    )
    student = _step(convert(kd_model=kd.outputs['kd_model']), 'student conversion', image)
    _step(
        evaluate(
            dataset=prep.outputs['dataset'],
            teacher=teacher.outputs['teacher'],
            student=student.outputs['student'],
            kd_config=kd_config,
            student_config=student_config,
            baseline_url=baseline_url,
            baseline_sha256=baseline_sha256,
        ),
        'evaluation',
        image,
    )


def compile_pipeline(path=PIPELINE_FILE) -> Path:
    """Write the pipeline's IR YAML (what the KFP UI / ``kfp pipeline upload`` take)."""
    from kfp import compiler

    compiler.Compiler().compile(kd_pipeline, str(path))
    return Path(path)
