"""The video KD pipeline: check inputs -> data prep -> teacher -> KD training -> convert ->
evaluate -> export.

Compile with ``video-kd compile`` (writes ``pipelines/kd_pipeline.yaml``,
which is committed; a test fails when it is stale).  Every step is a
lightweight component running in ``image``; data flows one way through typed
artifacts whose metadata carries the S3 URIs, and S3 holds the artifacts
themselves under ``s3://<s3_bucket>/<s3_prefix>/<run id>/``.  The first step,
``check-inputs``, runs every step's checks on the run's parameters
(``video_kd.steps.check_inputs.check_pipeline_params``) and reads and writes nothing: a
bad one fails there in one line, before data prep claims the run.

On a cluster each step's pod gets the S3 endpoint from a ConfigMap and the
credentials from a Secret (kfp-kubernetes ``use_config_map_as_env`` /
``use_secret_as_env``); their names are pipeline parameters whose defaults
are those of the Helm chart (``ClusterNames``; ``video-kd upload`` compiles
with a release's own names and keys).  Credentials are never parameters.
The IR needs a KFP backend >= 2.15.0: Secret/ConfigMap names from parameters
(kfp-kubernetes secretNameParameter / configMapNameParameter: the driver resolves
them since 2.5.0) and optional ConfigMap keys as env (``optional``: honoured since
2.15.0, kubeflow/pipelines #12216; before, a key the ConfigMap lacks, such as
AWS_DEFAULT_REGION without a region, stops the pod).
"""

from dataclasses import dataclass
from pathlib import Path

from kfp import dsl, kubernetes

from components import DEFAULT_IMAGE
from components.check_inputs.component import check_inputs
from components.convert.component import convert
from components.data_prep.component import data_prep
from components.evaluate.component import evaluate
from components.export.component import export
from components.teacher_download.component import teacher_download
from components.train.component import train

PIPELINE_NAME = 'video-kd-distillation'
PIPELINE_FILE = Path(__file__).with_name('kd_pipeline.yaml')
TASK_ORDER = ('check-inputs', 'data-prep', 'teacher-download', 'train', 'convert', 'evaluate',
              'export')  # fmt: skip
# What the train step reads from the chart's training ConfigMap (video_kd.backends.spec_from_env).
TRAINING_CONFIG_KEYS = (
    'VIDEO_KD_TRAINING_BACKEND', 'VIDEO_KD_SERVICE_ACCOUNT', 'VIDEO_KD_WORKER_POD_OVERRIDES',
    'VIDEO_KD_GPU_RESOURCE', 'VIDEO_KD_BACKOFF_LIMIT_PER_NODE', 'VIDEO_KD_KUEUE_QUEUE',
    'VIDEO_KD_PRIORITY_CLASS', 'VIDEO_KD_ISTIO_SIDECAR', 'VIDEO_KD_TRAINJOB_RUNTIME',
    'VIDEO_KD_TRAINJOB_RUNTIME_KIND', 'VIDEO_KD_TRAINJOB_MAX_RESTARTS', 'VIDEO_KD_PVC',
    'VIDEO_KD_PVC_MOUNT', 'VIDEO_KD_NAMESPACE',
)  # fmt: skip


@dataclass(frozen=True)
class ClusterNames:
    """The Kubernetes objects the step pods read, as the Helm chart names them by default."""

    s3_config_map: str = 'video-kd-s3'
    s3_credentials: str = 'video-kd-s3-credentials'
    access_key_id_key: str = 'AWS_ACCESS_KEY_ID'
    secret_access_key_key: str = 'AWS_SECRET_ACCESS_KEY'
    training_config_map: str = 'video-kd-training'
    pvc: str = ''  # a PersistentVolumeClaim mounted in every step pod (a dataset on a volume)
    pvc_mount: str = '/cache'  # the chart's persistence.mountPath


def _use_cluster_env(task: dsl.PipelineTask, names: ClusterNames, s3_config_map, s3_credentials,
                     training_config_map=None) -> None:  # fmt: skip
    """The S3 endpoint from the ConfigMap, the credentials from the Secret (ignored by the
    local runner, which passes its own environment through)."""
    kubernetes.use_config_map_as_env(
        task, s3_config_map, {'S3_ENDPOINT_URL': 'S3_ENDPOINT_URL'}, optional=False
    )
    kubernetes.use_config_map_as_env(
        task, s3_config_map, {'AWS_DEFAULT_REGION': 'AWS_DEFAULT_REGION'}, optional=True
    )
    kubernetes.use_secret_as_env(
        task,
        s3_credentials,
        {names.access_key_id_key: 'AWS_ACCESS_KEY_ID',
         names.secret_access_key_key: 'AWS_SECRET_ACCESS_KEY'},
    )  # fmt: skip
    if training_config_map is not None:  # what the training pods need to know
        kubernetes.use_config_map_as_env(
            task,
            s3_config_map,
            {key: key for key in ('S3_CREDENTIALS_SECRET', 'S3_ACCESS_KEY_ID_KEY',
                                  'S3_SECRET_ACCESS_KEY_KEY')},
            optional=True,
        )  # fmt: skip
        kubernetes.use_config_map_as_env(
            task,
            training_config_map,
            {key: key for key in TRAINING_CONFIG_KEYS},
            optional=True,
        )
    if names.pvc:
        kubernetes.mount_pvc(task, names.pvc, names.pvc_mount)


def build_pipeline(names: ClusterNames = ClusterNames()):
    """The pipeline, with the cluster's object names as its defaults."""

    def step(task: dsl.PipelineTask, name: str, image, s3_config_map=None, s3_credentials=None,
             training_config_map=None) -> dsl.PipelineTask:  # fmt: skip
        task.set_display_name(name)
        task.set_caching_options(False)  # every run writes its own run directory
        task.set_container_image(image)
        if s3_config_map is not None:  # check-inputs reads no S3: no credentials in its pod
            _use_cluster_env(task, names, s3_config_map, s3_credentials, training_config_map)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description='Distill a large MMAction2 video recognizer (teacher) into a small one '
        '(student) with MMRazor: data prep, teacher download, KD training as a '
        'Kubeflow PyTorchJob or TrainJob, student conversion, evaluation, export of the '
        'deployable student (ONNX, speed, model card). Artifacts in '
        's3://<s3_bucket>/<s3_prefix>/<run id>/.',
    )
    def kd_pipeline(
        dataset_uri: str = 'generate://',
        reencode: bool = False,
        teacher_url: str = '',
        teacher_sha256: str = '',
        kd_config: str = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
        student_config: str = 'tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb',
        baseline_url: str = '',
        baseline_sha256: str = '',
        num_workers: int = 2,
        gpus_per_worker: int = 0,
        nproc_per_node: int = 0,
        max_epochs: int = 0,
        cfg_options: list = [],  # noqa: B006  (a KFP default, never mutated)
        teacher_logit_cache: bool = False,
        teacher_precision: str = '',
        student_pretrained_url: str = '',
        student_pretrained_sha256: str = '',
        training_backend: str = '',
        backoff_limit_per_node: int = 0,
        s3_bucket: str = 'video-kd',
        s3_prefix: str = 'video-kd',
        s3_config_map: str = names.s3_config_map,
        s3_credentials: str = names.s3_credentials,
        training_config_map: str = names.training_config_map,
        export_tolerance: float = 1e-3,
        speed_repeats: int = 3,
        image: str = DEFAULT_IMAGE,
        run_id: str = '',
    ):
        """Parameters:

        dataset_uri: where the dataset is, read in place: an s3:// prefix or a path on the
            mounted PVC (the chart's persistence.mountPath, e.g. /cache/kinetics400), holding
            our layout (videos/, train_list.txt, val_list.txt, classes.txt) or MMAction2's
            Kinetics tree as its tools prepare it (videos_train/, videos_val/,
            kinetics400_{train,val}_list_videos.txt, label_map_k400.txt or annotations/*.csv;
            other names as a query: ?train_list=...&val_videos=...); or generate:// for the
            synthetic demo data.
        reencode: train and evaluate on a derived copy of the dataset (short side 256, a
            keyframe every frame), written once at <dataset_uri>/derived/<hash>/ and reused.
        teacher_url, teacher_sha256: the teacher checkpoint (https:// or s3://) and its SHA-256.
        kd_config, student_config: shipped config names (``video-kd configs``); student_config
            is the student trained alone, used to evaluate baseline_url.
        baseline_url, baseline_sha256: optional student checkpoint trained without KD: the
            evaluation then reports the KD gain.
        num_workers: training nodes (PyTorchJob replicas, Master included; TrainJob numNodes);
            gpus_per_worker: GPUs per node; nproc_per_node: processes per node (0: one per GPU).
        max_epochs, cfg_options, teacher_precision, teacher_logit_cache: training options
            (``video_kd.distill.train_config.TrainOptions``): the epoch budget (0 keeps the config's),
            mmengine overrides (a list of KEY=VALUE), the teacher as an inference model (fp32,
            bf16, fp16; empty: as MMRazor runs it), and the teacher's logits cached next to
            the dataset in S3 so scheduled retraining skips its forward pass.
        student_pretrained_url, student_pretrained_sha256: ImageNet weights for the student's
            backbone (https:// or s3://, cached in S3 by checksum); the seed's are in README.md;
            empty: random init.
        training_backend: pytorchjob (Training Operator v1), trainjob (Kubeflow Trainer v2) or
            local (torchrun inside the train step's pod); empty: the chart's training.backend.
        backoff_limit_per_node: restarts allowed per training node of a PyTorchJob (0: the
            chart's, else 3). No effect on a TrainJob, which cannot set its own: its runtime's
            failurePolicy decides (the chart's: training.backoffLimitPerNode x workers).
        s3_bucket, s3_prefix: where runs go: s3://<bucket>/<prefix>/<run id>/.
        s3_config_map, s3_credentials, training_config_map: the Kubernetes objects the step pods
            read (the Helm release's).
        export_tolerance: the largest ONNX vs PyTorch logit difference the export accepts.
        speed_repeats: timing rounds of teacher vs student (ONNX Runtime, PyTorch); 0 skips it.
        image: the image of every step and of the PyTorchJob pods.
        run_id: empty picks <UTC time>-<KFP run id>; a run id in use is refused.
        """
        arguments = dict(locals())  # the parameters by name (the first statement)
        checked = step(
            check_inputs(**{name: arguments[name] for name in check_inputs.component_spec.inputs}),
            'check inputs', image,
        )  # fmt: skip
        env = {'s3_config_map': s3_config_map, 's3_credentials': s3_credentials}
        prep = step(
            data_prep(dataset_uri=dataset_uri, s3_bucket=s3_bucket, s3_prefix=s3_prefix,
                      run_id=run_id, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, reencode=reencode),
            'data prep', image, **env,
        ).after(checked)  # nothing claimed or written for a bad parameter  # fmt: skip
        teacher = step(
            teacher_download(dataset=prep.outputs['dataset'], teacher_url=teacher_url,
                             teacher_sha256=teacher_sha256, kd_config=kd_config),
            'teacher download', image, **env,
        )  # fmt: skip
        kd = step(
            train(dataset=prep.outputs['dataset'], teacher=teacher.outputs['teacher'],
                  kd_config=kd_config, max_epochs=max_epochs, cfg_options=cfg_options,
                  teacher_precision=teacher_precision, teacher_logit_cache=teacher_logit_cache,
                  student_pretrained_url=student_pretrained_url,
                  student_pretrained_sha256=student_pretrained_sha256,
                  training_backend=training_backend, image=image, num_workers=num_workers,
                  gpus_per_worker=gpus_per_worker, nproc_per_node=nproc_per_node,
                  backoff_limit_per_node=backoff_limit_per_node),
            'KD training', image, **env, training_config_map=training_config_map,
        )  # fmt: skip
        student = step(convert(kd_model=kd.outputs['kd_model']), 'student conversion', image, **env)
        evaluation = step(
            evaluate(dataset=prep.outputs['dataset'], teacher=teacher.outputs['teacher'],
                     student=student.outputs['student'], kd_config=kd_config,
                     student_config=student_config, baseline_url=baseline_url,
                     baseline_sha256=baseline_sha256),
            'evaluation', image, **env,
        )  # fmt: skip
        step(
            export(dataset=prep.outputs['dataset'], teacher=teacher.outputs['teacher'],
                   student=student.outputs['student'], kd_config=kd_config,
                   student_config=student_config, image=image,
                   export_tolerance=export_tolerance, speed_repeats=speed_repeats),
            'export (ONNX, speed, model card)', image, **env,
        ).after(evaluation)  # the card and the top-1 cross-check read the evaluation  # fmt: skip

    return kd_pipeline


kd_pipeline = build_pipeline()


def compile_pipeline(path: str | Path = PIPELINE_FILE, names: ClusterNames | None = None) -> Path:
    """Write the pipeline's IR YAML (what the KFP UI / ``kfp pipeline upload`` take)."""
    from kfp import compiler

    pipeline = kd_pipeline if names is None else build_pipeline(names)
    compiler.Compiler().compile(pipeline, str(path))
    return Path(path)
