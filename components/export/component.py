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
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    model_card: Output[Markdown],
):
    """Export the student to ONNX (dynamic batch, preprocess.json beside it), check it against
    PyTorch on the val clips (fails above export_tolerance), time teacher vs student, draw the
    training curves, confusion matrix and accuracy vs latency, write the model card; all in
    <run>/export/."""
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
