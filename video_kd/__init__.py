"""Knowledge distillation of MMAction2 video recognizers with MMRazor.

Importing this package first installs :mod:`video_kd.compat`, which must run
before any OpenMMLab import.
"""
from video_kd import compat  # noqa: F401  (must stay the first import)

__version__ = '0.1.0'
