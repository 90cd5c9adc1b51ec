"""Step 4, student conversion: the last KD checkpoint -> a student-only checkpoint in ``student/``."""

from __future__ import annotations

from pathlib import Path

from video_kd.core.artifacts import KDModel, Student
from video_kd.distill.convert import convert_kd_ckpt_to_student
from video_kd.runs import RunLayout, publish, run_info
from video_kd.steps.common import scratch_dir
from video_kd.storage.download import fetch_verified


def run(kd_model: KDModel, workdir: str | Path | None = None) -> Student:
    """Keep the student's weights under plain MMAction2 names; publish ``<name>_student.pth``."""
    layout = RunLayout.from_root(kd_model['run_root'])
    with scratch_dir(workdir, 'convert') as work:
        name = kd_model['s3_uri'].rsplit('/', 1)[-1]
        kd_path = fetch_verified(kd_model['s3_uri'], work / name, kd_model.get('sha256'))
        student = convert_kd_ckpt_to_student(kd_path, overwrite=True)
        entry = publish(layout, 'student', student, student.name)
        return {
            **run_info(layout),
            **entry.meta(),
            'converted_from': kd_model['s3_uri'],
            'kd_config': kd_model.get('kd_config', ''),
        }
