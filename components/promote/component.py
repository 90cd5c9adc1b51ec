"""KFP component: the promotion gate (the run's student becomes the model's current one
only if it beats it)."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def promote(
    student: Input[Model],
    kd_config: str,
    model_name: str,
    promote: bool,
    promote_min_gain: float,
    force_promote: bool,
    metrics: Output[Metrics],
    decision: Output[Markdown],
):
    """Compare the run's student with the model's current student
    (s3://<bucket>/<prefix>/models/<model_name>/current.json), both scored by the evaluate
    step on this run's val set, and make it current only if its top-1 is higher by at least
    promote_min_gain points and every export check passed (a compare-and-swap on
    current.json: of two runs finishing together at most one wins). Every decision goes to
    models/<model_name>/history/ and <run>/promote/ (decision, model card with it).

    Args:
        student: The convert step's output (the run, the student .pth).
        kd_config: The shipped KD config; names the model when model_name is empty.
        model_name: The model the student may become current of; empty: derived from
            kd_config's student.
        promote: false: decide and report only, promote nothing.
        promote_min_gain: The top-1 gain over the current student required, in percentage
            points (may be negative: tolerate a small loss).
        force_promote: Promote even when the current student cannot be compared (corrupt,
            another class list) or the gain is too small; never over a failed export check.

    Returns:
        metrics: promoted, eligible (0/1), new and current top-1, gain in points.
        decision: The decision and its reasons (Markdown).
    """
    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import promote as promote_step

    with exit_on_user_error():
        result = promote_step.run(
            dict(student.metadata),
            kd_config,
            model_name=model_name,
            promote=promote,
            min_gain_points=promote_min_gain,
            force=force_promote,
        )
    for key, value in result['kfp_metrics'].items():
        metrics.log_metric(key, float(value))
    metrics.metadata.update({key: result[key] for key in ('run_id', 'run_root')})
    with open(decision.path, 'w') as out:
        out.write(result['markdown'])
