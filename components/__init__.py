"""The pipeline's five steps as KFP components, one folder each.

Every folder holds ``component.py`` (a lightweight KFP component whose body
imports the step logic from the installed ``video_kd`` package, so it runs in
our image) and ``__main__.py`` (the same step as a plain command,
``python -m components.<step> --help``).  The logic itself lives in
``video_kd.steps``.
"""

DEFAULT_IMAGE = 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'
STEPS = ('data_prep', 'teacher_download', 'train', 'convert', 'evaluate')
