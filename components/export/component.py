"""KFP component: the deployable student (ONNX verified, speed, model card, report)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def export(
    dataset: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    kd_config: str,
    student_config: str,
    image: str,
    export_tolerance: float,
    speed_repeats: int,
    speed_batch_size: int,
    parity_clips: int,
    baseline_url: str,
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    model_card: Output[Markdown],
):
    """Export the student to ONNX (dynamic batch, preprocess.json beside it), check it against
    PyTorch on the val clips (fails above export_tolerance), time teacher vs student, draw the
    training curves, confusion matrix and accuracy vs latency, write the model card; all in
    <run>/export/.

    Args:
        dataset: The data prep step's output (the val clips of the parity check).
        teacher: The teacher download step's output (timed against the student).
        student: The convert step's output, the student exported.
        kd_config: The shipped KD config the student was trained with.
        student_config: The shipped config of the student trained alone, named in the
            model card.
        image: The container image, named in the model card.
        export_tolerance: The largest absolute ONNX vs PyTorch logit difference accepted;
            above it the step fails.
        speed_repeats: Timing rounds of teacher vs student; 0 skips the speed check.
        speed_batch_size: Clips per call of the throughput timing (latency is batch 1).
        parity_clips: Val clips of the ONNX parity check: a seeded random sample when the
            val list holds more (1 or more).
        baseline_url: The student-alone checkpoint (may be empty); when it sits in its
            mmengine work dir in S3, that training's curves are drawn beside the KD run's.

    Returns:
        onnx_model: The ONNX student: its metadata holds its S3 URI, sha256 and the parity
            check's result; the file holds the same (the model stays in S3).
        metrics: Export metrics (ONNX vs PyTorch difference on how many val clips, latencies,
            speed-up).
        report: The HTML report: the headline (KD gain, speedup, verdict), the run's
            parameters, per-class accuracy, the most-confused classes, plots of the training
            curves, the confusion matrix and accuracy vs latency.
        model_card: The model card (Markdown), as in <run>/export/.
    """
    import json

    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import export as export_step

    with exit_on_user_error():
        result = export_step.run(
            dict(dataset.metadata),
            dict(teacher.metadata),
            dict(student.metadata),
            kd_config,
            student_config=student_config,
            image=image,
            tolerance=export_tolerance,
            speed_repeats=speed_repeats,
            speed_batch_size=speed_batch_size,
            parity_clips=parity_clips,
            baseline_url=baseline_url,
        )
    onnx_model.metadata.update({**result['onnx'], 'parity': result['parity']})
    with open(onnx_model.path, 'w') as out:  # the model itself stays in S3
        json.dump(result['onnx'], out, indent=2)
    for key, value in result['kfp_metrics'].items():
        metrics.log_metric(key, float(value))
    with open(report.path, 'w') as out:
        out.write(result['html'])
    with open(model_card.path, 'w') as out:
        out.write(result['model_card'])
