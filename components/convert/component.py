"""KFP component: KD checkpoint -> student-only checkpoint; outputs a Model."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def convert(kd_model: Input[Model], student: Output[Model]):
    """Keep the student's weights of the last KD checkpoint under plain MMAction2 names
    and publish them to <run>/student/.

    Args:
        kd_model: The train step's output: the last KD checkpoint (teacher + student) in S3.

    Returns:
        student: The student-only checkpoint that plain MMAction2 loads: its metadata holds
            its S3 URI (<run>/student/<file>), sha256, the KD checkpoint it came from and
            the KD config; the file holds the same as JSON.
    """
    import json

    from video_kd.core.errors import exit_on_user_error
    from video_kd.steps import convert as convert_step

    with exit_on_user_error():
        meta = convert_step.run(dict(kd_model.metadata))
    student.metadata.update(meta)
    with open(student.path, 'w') as out:
        json.dump(meta, out, indent=2)
