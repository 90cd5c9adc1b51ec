"""KFP component: evaluate student, teacher and baseline; Metrics, confusion matrix, report."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    kd_config: str,
    student_config: str,
    baseline_url: str,
    baseline_sha256: str,
    training_backend: str,
    image: str,
    eval_num_workers: int,
    eval_gpus_per_worker: int,
    eval_nproc_per_node: int,
    model_name: str,
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[Markdown],
):
    """Top-1/top-5/mean-class accuracy of the student (and of the teacher, and of the
    student trained alone when baseline_url is given: the KD gain) on the validation set;
    writes <run>/eval/metrics.json and report.md.

    Args:
        dataset: The data prep step's output (the validation list and videos).
        teacher: The teacher download step's output, evaluated with its own config.
        student: The convert step's output, the student evaluated.
        kd_config: The shipped KD config the student was trained with.
        student_config: The shipped config of the student trained alone: the baseline is
            evaluated with it.
        baseline_url: Optional checkpoint of the student trained without KD (https:// or
            s3://); empty: no baseline, no KD gain.
        baseline_sha256: The baseline's SHA-256; empty: not checked.
        training_backend: Where the test loops run: pytorchjob, trainjob or local (torchrun
            in this pod); empty: where the run's training ran.
        image: The evaluation pods' image (a cluster backend); empty: the training's.
        eval_num_workers: Evaluation nodes; 0: the training's.
        eval_gpus_per_worker: GPUs per evaluation node; -1: the training's.
        eval_nproc_per_node: Evaluation processes per node; -1: the training's, 0: one per
            GPU (one without GPUs).
        model_name: The model whose current student (models/<model_name>/current.json)
            is scored too, on the same val set, for the promotion gate; empty: the name
            derived from kd_config.

    Returns:
        metrics: Accuracies as KFP metrics, <model>_<metric> for student, teacher,
            baseline and kd_gain (top1, top5, mean-class accuracy, fractions in [0, 1]);
            its metadata holds run_id, run_root and metrics_uri, and teacher_scored /
            baseline_scored: cached (from the score cache) or computed.
        confusion_matrix: The student's confusion matrix on the validation set.
        report: The evaluation report (Markdown), as <run>/eval/report.md.
    """
    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import evaluate as evaluate_step

    with exit_on_user_error():
        result = evaluate_step.run(
            dict(dataset.metadata),
            dict(student.metadata),
            kd_config,
            teacher=dict(teacher.metadata),
            student_config=student_config,
            baseline_url=baseline_url,
            baseline_sha256=baseline_sha256,
            training_backend=training_backend,
            image=image,
            num_workers=eval_num_workers,
            gpus_per_worker=eval_gpus_per_worker,
            nproc_per_node=eval_nproc_per_node,
            model_name=model_name,  # empty: the name derived from kd_config
        )
    summary = result['metrics']
    for model in ('student', 'teacher', 'baseline', 'kd_gain', 'current'):
        for key, value in summary.get(model, {}).items():
            metrics.log_metric(f'{model}_{key}', round(float(value), 6))
    metrics.metadata.update({key: result[key] for key in ('run_id', 'run_root', 'metrics_uri')})
    for key in ('teacher_scored', 'baseline_scored'):  # cached or computed
        if key in summary:
            metrics.metadata[key] = summary[key]
    confusion_matrix.log_confusion_matrix(summary['classes'], summary['confusion_matrix'])
    with open(report.path, 'w') as out:
        out.write(result['report'])
