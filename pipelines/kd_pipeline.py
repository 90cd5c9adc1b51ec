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
from components.promote.component import promote as promote_component
from components.teacher_download.component import teacher_download
from components.train.component import train

PIPELINE_NAME = 'video-kd-distillation'
PIPELINE_FILE = Path(__file__).with_name('kd_pipeline.yaml')
TASK_ORDER = ('check-inputs', 'data-prep', 'teacher-download', 'train', 'convert', 'evaluate',
              'export', 'promote')  # fmt: skip
# What the train step reads from the chart's training ConfigMap (video_kd.backends.spec_from_env).
TRAINING_CONFIG_KEYS = (
    'VIDEO_KD_TRAINING_BACKEND', 'VIDEO_KD_SERVICE_ACCOUNT', 'VIDEO_KD_WORKER_POD_OVERRIDES',
    'VIDEO_KD_GPU_RESOURCE', 'VIDEO_KD_BACKOFF_LIMIT_PER_NODE', 'VIDEO_KD_KUEUE_QUEUE',
    'VIDEO_KD_PRIORITY_CLASS', 'VIDEO_KD_ISTIO_SIDECAR', 'VIDEO_KD_TRAINJOB_RUNTIME',
    'VIDEO_KD_TRAINJOB_RUNTIME_KIND', 'VIDEO_KD_TRAINJOB_MAX_RESTARTS', 'VIDEO_KD_PVC',
    'VIDEO_KD_PVC_MOUNT', 'VIDEO_KD_NAMESPACE', 'VIDEO_KD_ALLOWED_IMAGE_PREFIXES',
    'VIDEO_KD_RELEASE',
)  # fmt: skip


# KFP retries the train step (a new pod of the same Argo Workflow) when Argo marks it Failed:
# the step pod OOM-killed, evicted, or exiting non-zero.  The retried step adopts the run's
# training job while it runs (it has the same name, spec and owner: video_kd/backends/kube.py
# ClusterJob.submit), or resumes from the last checkpoint in a new one.  Argo counts the
# window from the first attempt's start (retryStrategy.backoff.maxDuration), so it spans the
# longest training (video_kd.steps.train.MAX_TRAINING_HOURS) and its wait.
TRAIN_RETRIES = 2
TRAIN_RETRY_BACKOFF = {'backoff_duration': '60s', 'backoff_factor': 2.0,
                       'backoff_max_duration': f'{32 * 24 * 3600}s'}  # fmt: skip


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
             training_config_map=None, requests=None) -> dsl.PipelineTask:  # fmt: skip
        task.set_display_name(name)
        task.set_caching_options(False)  # every run writes its own run directory
        task.set_container_image(image)
        if requests is not None:  # (cpu, memory): not BestEffort, the first pod evicted
            task.set_cpu_request(requests[0]).set_memory_request(requests[1])
        if s3_config_map is not None:  # check-inputs reads no S3: no credentials in its pod
            _use_cluster_env(task, names, s3_config_map, s3_credentials, training_config_map)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description='Distill a large MMAction2 video recognizer (teacher) into a small one '
        '(student) with MMRazor: a check of every parameter, data prep, teacher download, '
        "KD training as a Kubeflow PyTorchJob or TrainJob (or torchrun in the step's pod), "
        'student conversion, evaluation, export of the deployable student (ONNX, speed, '
        'model card). Each parameter is described where it is set. Artifacts in '
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
        keep_checkpoints: int = 3,
        training_backend: str = '',
        backoff_limit_per_node: int = 0,
        max_training_hours: float = 168.0,
        eval_num_workers: int = 0,
        eval_gpus_per_worker: int = -1,
        eval_nproc_per_node: int = -1,
        s3_bucket: str = 'video-kd',
        s3_prefix: str = 'video-kd',
        s3_config_map: str = names.s3_config_map,
        s3_credentials: str = names.s3_credentials,
        training_config_map: str = names.training_config_map,
        step_cpu_request: str = '1',
        step_memory_request: str = '4Gi',
        export_tolerance: float = 1e-3,
        speed_repeats: int = 3,
        speed_batch_size: int = 8,
        parity_clips: int = 32,
        image: str = DEFAULT_IMAGE,
        run_id: str = '',
        model_name: str = '',
        promote: bool = True,
        promote_min_gain: float = 0.0,
        force_promote: bool = False,
    ):
        """One KD run: teacher_url is the one parameter without a usable default.

        Args:
            dataset_uri: Where the dataset is, read in place: an s3:// prefix or a path on
                the mounted PVC (the chart's persistence.mountPath, e.g.
                /cache/kinetics400), holding our layout (videos/, train_list.txt,
                val_list.txt, classes.txt) or MMAction2's Kinetics tree as its tools
                prepare it (videos_train/, videos_val/,
                kinetics400_{train,val}_list_videos.txt, label_map_k400.txt or
                annotations/*.csv; other names as a query: ?train_list=...&val_videos=...);
                or generate:// for the synthetic demo data (the default; options as a
                query, e.g. generate://?num_classes=3&train_per_class=4).
            reencode: true: train and evaluate on a derived copy of the dataset (short side
                256, a keyframe every frame: cheap seeks), written once at
                <dataset_uri>/derived/<hash>/ and reused by later runs. Default false: the
                videos as they are.
            teacher_url: The teacher checkpoint, https:// or s3://, streamed with retries and
                checked against kd_config's teacher (the seed's timm Swin teacher is
                converted). Required: empty is refused by the check-inputs step.
            teacher_sha256: The teacher checkpoint's SHA-256 (64 hex digits): checked after
                the download, and the key of its copy in the run bucket's S3 cache (a
                re-run copies it from there). Required: empty is refused by the
                check-inputs step.
            kd_config: The shipped KD config (``video-kd configs`` lists them) naming the
                teacher, the student and the distillation losses. Default: TSM ResNet-50
                teacher, TSM MobileNetV2 student, logit KD on Kinetics-400.
            student_config: The shipped config of the student trained alone (no KD): the
                evaluation scores baseline_url with it and the model card names it. Default:
                the TSM MobileNetV2 Kinetics-400 config.
            baseline_url: Optional checkpoint of the student trained without KD (https:// or
                s3://, needs student_config): the evaluation then reports the KD gain (and the
                export draws its training curves when its mmengine logs sit beside it in S3).
                Empty (default): no baseline.
            baseline_sha256: The baseline checkpoint's SHA-256 (64 hex digits), checked after
                the download. Required with baseline_url.
            num_workers: Training nodes: PyTorchJob replicas (the Master included) or
                TrainJob numNodes; 1 or more, local: 1. Default 2.
            gpus_per_worker: GPUs per training node (0 or more). Default 0: CPU training.
            nproc_per_node: Training processes per node. Default 0: one per GPU (one on a
                node without GPUs).
            max_epochs: The training's epoch budget (0 or more); the config's schedule is
                stretched to it. Default 0: the config's own.
            cfg_options: mmengine config overrides, a list of KEY=VALUE strings, e.g.
                ["optim_wrapper.optimizer.lr=0.01", "train_dataloader.batch_size=8"]; a
                value is a Python literal or plain text, spaces kept. Every key is checked
                against the resolved KD config. Default []: none.
            teacher_logit_cache: true (KD configs only): cache the teacher's logits per
                augmented view next to the dataset (<dataset>/teacher_logits/), so
                retraining with the same teacher skips its forward pass. Default false.
            teacher_precision: Run the frozen teacher as an inference model in this
                precision: fp32, bf16 or fp16 (the student stays fp32). Empty (default):
                as MMRazor runs it.
            student_pretrained_url: ImageNet weights for the student's backbone (https:// or
                s3://, cached in S3 by checksum; the seed's are listed in docs/training.md),
                checked tensor by tensor. Empty (default): random init.
            student_pretrained_sha256: Those weights' SHA-256 (64 hex digits): checked, and
                the key of their S3 cache. Empty: not checked.
            keep_checkpoints: Checkpoint retention: the newest epoch checkpoints kept in the
                run's S3 directory (1 or more; a re-run resumes from the newest good one),
                with the best by the val metric (best_*.pth); older ones are deleted. KD
                checkpoints hold no frozen teacher weights either. Default 3.
            training_backend: Where KD training runs: pytorchjob (Training Operator v1),
                trainjob (Kubeflow Trainer v2) or local (torchrun inside the train step's
                pod). Empty (default): the chart's training.backend.
            backoff_limit_per_node: Restarts allowed per training node of a PyTorchJob (0 or
                more). Default 0: the chart's, else 3. No effect on a TrainJob, which cannot
                set its own: its runtime's failurePolicy decides (the chart's:
                training.backoffLimitPerNode incidents).
            max_training_hours: The longest the training job may be active, in hours (above
                0, at most 720): its activeDeadlineSeconds on both backends, counted from its
                start; past it the operator fails the job. Default 168 (a week).
            eval_num_workers: Evaluation nodes: the test loops run on the training backend
                (its job, or local torchrun) as one more job. Default 0: num_workers, as the
                training.
            eval_gpus_per_worker: GPUs per evaluation node (0 or more). Default -1:
                gpus_per_worker, as the training.
            eval_nproc_per_node: Evaluation processes per node (at most the number of val
                videos in all). Default -1: nproc_per_node, as the training; 0: one per GPU.
            s3_bucket: The S3 bucket runs go to: s3://<s3_bucket>/<s3_prefix>/<run id>/
                (3-63 lowercase letters, digits, dots and hyphens). Default video-kd.
            s3_prefix: The key prefix of the runs in s3_bucket (its cache is
                <s3_prefix>/cache/). Default video-kd.
            s3_config_map: The Kubernetes ConfigMap the step pods read S3_ENDPOINT_URL (and
                optionally AWS_DEFAULT_REGION) from; the default is the Helm release's.
            s3_credentials: The Kubernetes Secret the step pods read the S3 credentials from
                (credentials are never parameters); the default is the Helm release's.
            training_config_map: The Kubernetes ConfigMap the train step reads its training
                settings from (backend, service account, GPU resource, queue, ...); the
                default is the Helm release's.
            step_cpu_request: The CPU request of every step's pod (a Kubernetes quantity,
                e.g. 500m or 2): requests keep the pods from being evicted first. Default 1
                (the chart's pipeline.params.step_cpu_request).
            step_memory_request: The memory request of every step's pod (e.g. 4Gi). Default
                4Gi (the chart's pipeline.params.step_memory_request).
            export_tolerance: The largest absolute difference of ONNX vs PyTorch logits on
                the val clips that the export accepts; above it the export fails. Default
                0.001.
            speed_repeats: Timing rounds of teacher vs student (ONNX Runtime, PyTorch) in the
                export. 0 skips the speed check. Default 3.
            speed_batch_size: Clips per call of the export's throughput timing, at the seed's
                8x224x224 input and the run's own (latency is timed at batch 1; 1 times batch
                1 alone, what a laptop's demo does). Default 8.
            parity_clips: Val clips the export's ONNX vs PyTorch parity check reads (1 or
                more): a random sample with a fixed seed (0) when the val list holds more,
                so a re-run checks the same clips. Default 32.
            image: The container image of every step and of the training job's pods.
                Default: this release's image.
            run_id: The run's id and directory name, s3://<s3_bucket>/<s3_prefix>/<run_id>/
                (1-63 lowercase letters, digits and hyphens; not "cache" or "models"); an id in use is
                refused. Empty (default): <UTC time>-<KFP run id>.
            model_name: The model the run's student may become the current student of:
                s3://<s3_bucket>/<s3_prefix>/models/<model_name>/current.json (1-63 lowercase
                letters, digits, ".", "_", "-"). Empty (default): derived from kd_config's
                student, e.g. tsm-mobilenetv2_8xb16_k400.
            promote: true (default): the promotion gate may make the student current (only
                if it beats the current student, scored on the same val set, by
                promote_min_gain and every export check passed). false: decide and report
                only.
            promote_min_gain: The top-1 gain over the current student required to promote,
                in percentage points (-100 to 100). Default 0: at least as good.
            force_promote: true: promote even when the current student cannot be compared
                (corrupt current.json, another class list) or the gain is too small; never
                over a failed export check. Default false.
        """
        arguments = dict(locals())  # the parameters by name (the first statement)
        requests = (step_cpu_request, step_memory_request)
        checked = step(
            check_inputs(**{name: arguments[name] for name in check_inputs.component_spec.inputs}),
            'check inputs', image, requests=requests,
        )  # fmt: skip
        kubernetes.use_config_map_as_env(  # the chart's image allow-list, nothing else
            checked, training_config_map,
            {'VIDEO_KD_ALLOWED_IMAGE_PREFIXES': 'VIDEO_KD_ALLOWED_IMAGE_PREFIXES'}, optional=True,
        )  # fmt: skip
        env = {'s3_config_map': s3_config_map, 's3_credentials': s3_credentials,
               'requests': requests}  # fmt: skip
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
                  keep_checkpoints=keep_checkpoints, training_backend=training_backend, image=image, num_workers=num_workers,
                  gpus_per_worker=gpus_per_worker, nproc_per_node=nproc_per_node,
                  backoff_limit_per_node=backoff_limit_per_node,
                  max_training_hours=max_training_hours),
            'KD training', image, **env, training_config_map=training_config_map,
        ).set_retry(TRAIN_RETRIES, **TRAIN_RETRY_BACKOFF)  # fmt: skip
        student = step(convert(kd_model=kd.outputs['kd_model']), 'student conversion', image, **env)
        evaluation = step(
            evaluate(dataset=prep.outputs['dataset'], teacher=teacher.outputs['teacher'],
                     student=student.outputs['student'], kd_config=kd_config,
                     student_config=student_config, baseline_url=baseline_url,
                     baseline_sha256=baseline_sha256, training_backend=training_backend,
                     image=image, eval_num_workers=eval_num_workers,
                     eval_gpus_per_worker=eval_gpus_per_worker,
                     eval_nproc_per_node=eval_nproc_per_node, model_name=model_name),
            'evaluation', image, **env, training_config_map=training_config_map,
        )  # fmt: skip
        exported = step(
            export(dataset=prep.outputs['dataset'], teacher=teacher.outputs['teacher'],
                   student=student.outputs['student'], kd_config=kd_config,
                   student_config=student_config, image=image,
                   export_tolerance=export_tolerance, speed_repeats=speed_repeats,
                   speed_batch_size=speed_batch_size, parity_clips=parity_clips,
                   baseline_url=baseline_url),
            'export (ONNX, speed, model card)', image, **env,
        ).after(evaluation)  # the card and the top-1 cross-check read the evaluation  # fmt: skip
        step(
            promote_component(student=student.outputs['student'], kd_config=kd_config,
                              model_name=model_name, promote=promote,
                              promote_min_gain=promote_min_gain, force_promote=force_promote),
            'promotion gate', image, **env,
        ).after(exported)  # reads the evaluation's comparison and the export's checks  # fmt: skip

    return kd_pipeline


kd_pipeline = build_pipeline()


def compile_pipeline(path: str | Path = PIPELINE_FILE, names: ClusterNames | None = None) -> Path:
    """Write the pipeline's IR YAML (what the KFP UI / ``kfp pipeline upload`` take)."""
    from kfp import compiler

    pipeline = kd_pipeline if names is None else build_pipeline(names)
    compiler.Compiler().compile(pipeline, str(path))
    return Path(path)
