"""Registers every module our configs may name; what ``custom_imports`` of a resolved config imports.

A training config written by the train step (``<run>/train/config.py``) names
MMAction2, MMRazor and MMPretrain modules and ours: ``InferenceTeacherDistill``
(video_kd.distill.fast_teacher), ``CachedLogitsSingleTeacherDistill``, ``SeededViews``
and ``TeacherLogitCacheHook`` (video_kd.distill.logit_cache), ``S3CheckpointHook``
(video_kd.distill.s3_hook), ``FrozenTeacherCheckpointHook`` (video_kd.distill.frozen_teacher), ``EpochProgressHook``
(video_kd.distill.progress_hook), ``FrozenTeacherDistillValLoop`` (video_kd.distill.teacher_val).  Ours register when their module is imported.  mmengine
imports this module when it loads such a config, so every process that loads it can
build everything in it.
"""

from video_kd.distill import (  # noqa: F401  (they register on import)
    fast_teacher,
    frozen_teacher,
    logit_cache,
    progress_hook,
    s3_hook,
    teacher_val,
)
from video_kd.openmmlab.runtime import register_all_modules

register_all_modules()
